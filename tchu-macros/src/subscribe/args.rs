//! The arguments of `#[tchu::subscribe(...)]`.

use crate::args::{self, Key, Spec};
use crate::ctxt::{Ctxt, Reported};
use crate::retry::{self, Retry};
use proc_macro2::{Span, TokenStream};
use syn::LitStr;
use syn::parse::ParseStream;

/// The accepted arguments; a rejected one is left out, its error reported.
#[derive(Default)]
pub(crate) struct SubscribeArgs {
    /// The explicit topic pattern, valid, spanned on the user's literal.
    pub pattern: Option<LitStr>,
    /// The handler's unique name, not empty.
    pub name: Option<LitStr>,
    /// The handler's own retry policy.
    pub retry: Option<Retry>,
    /// `ack = "early"`: acknowledged on receipt rather than after the handler.
    pub ack_early: bool,
    /// `dedup` (on the message id) or `dedup(key = "field.path")`, with the key's span.
    pub dedup: Option<Dedup>,
    /// `ordered(key = "field.path")`: the key's path, checked, spanned on the literal; the
    /// span of the `ordered` word beside it.
    pub ordered: Option<(LitStr, Span)>,
    /// `saga(key = "field.path", start, unknown = "park" | "ignore")`.
    pub saga: Option<SagaArgs>,
    /// `metadata(name = "value", ...)`: names unique and not empty.
    pub metadata: Vec<(String, LitStr)>,
    /// `#[tchu::schedule(...)]`: the handler runs a schedule's occurrences.
    pub schedule: Option<ScheduleArgs>,
}

/// What `saga(...)` says.
pub(crate) struct SagaArgs {
    /// The correlation key's path, checked.
    pub key: LitStr,
    /// The event begins the saga.
    pub start: bool,
    /// `unknown = "ignore"`: an event for a saga that is not running is acknowledged; else it
    /// is parked.
    pub ignore_unknown: bool,
    /// Where `saga` was written.
    pub span: Span,
}

/// What `#[tchu::schedule(...)]` says of the schedule itself.
#[derive(Default)]
pub(crate) struct ScheduleArgs {
    /// The schedule's name: `name = "..."`, else the function's.
    pub name: String,
    /// The cron expression, checked.
    pub cron: Option<LitStr>,
    /// The IANA time zone, checked; UTC when not given.
    pub tz: Option<LitStr>,
    /// `missed = "skip"`: missed occurrences are not run; else the latest runs once.
    pub skip_missed: bool,
}

/// What `dedup` de-duplicates on.
pub(crate) enum Dedup {
    /// The message id.
    MessageId(Span),
    /// A payload field, by a dotted path, checked.
    Field(LitStr),
}

impl Dedup {
    /// Where the argument was written.
    pub(crate) fn span(&self) -> Span {
        match self {
            Dedup::MessageId(span) => *span,
            Dedup::Field(lit) => lit.span(),
        }
    }
}

/// The arguments `#[tchu::subscribe]` accepts.
const SPEC: Spec<SubscribeArgs> = Spec {
    place: "`#[tchu::subscribe]`",
    noun: "argument",
    keys: &[
        Key::value(
            "pattern",
            "a pattern string like `\"user.*\"`, `pattern = \"...\"`",
            pattern,
        )
        .positional(),
        Key::value("name", "`name = \"...\"`", name),
        Key::list("retry", "`retry(...)`", retry),
        Key::value("ack", "`ack = \"early\"`", ack),
        Key::flag_or_list("dedup", "`dedup[(key = \"...\")]`", dedup),
        Key::list("ordered", "`ordered(key = \"...\")`", ordered),
        Key::list(
            "saga",
            "`saga(key = \"...\"[, start][, unknown = \"...\"])`",
            saga,
        ),
        Key::list("metadata", "`metadata(name = \"value\", ...)`", metadata),
    ],
    rejected: None,
};

/// The options inside `dedup(...)`.
const DEDUP_SPEC: Spec<DedupOptions> = Spec {
    place: "`dedup(...)`",
    noun: "option",
    keys: &[Key::value("key", "`key = \"payload.field\"`", dedup_key)],
    rejected: Some(|o, _, _| o.rejected = true),
};

/// The options inside `ordered(...)`.
const ORDERED_SPEC: Spec<DedupOptions> = Spec {
    place: "`ordered(...)`",
    noun: "option",
    keys: &[Key::value("key", "`key = \"payload.field\"`", dedup_key)],
    rejected: Some(|o, _, _| o.rejected = true),
};

/// The options inside `saga(...)`.
const SAGA_SPEC: Spec<SagaOptions> = Spec {
    place: "`saga(...)`",
    noun: "option",
    keys: &[
        Key::value("key", "`key = \"payload.field\"`", saga_key),
        Key::flag("start", "`start`", saga_start),
        Key::value("unknown", "`unknown = \"park\" | \"ignore\"`", saga_unknown),
    ],
    rejected: Some(|o, _, _| o.rejected = true),
};

/// What `saga(...)` holds while it is walked.
#[derive(Default)]
struct SagaOptions {
    key: DedupOptions,
    start: bool,
    ignore_unknown: bool,
    rejected: bool,
}

/// What `dedup(...)` or `ordered(...)` holds while it is walked.
#[derive(Default)]
struct DedupOptions {
    key: Option<LitStr>,
    /// A `key` was written but refused (its error reported): not also "missing".
    rejected: bool,
}

impl SubscribeArgs {
    /// The attribute, as errors name it.
    pub(crate) fn place(&self) -> &'static str {
        if self.schedule.is_some() {
            "`#[tchu::schedule]`"
        } else {
            "`#[tchu::subscribe]`"
        }
    }

    /// Parses the attribute's arguments, reporting every mistake.
    pub(crate) fn parse(cx: &Ctxt, tokens: TokenStream) -> Self {
        let mut out = SubscribeArgs::default();
        args::parse(cx, &SPEC, &mut out, tokens);
        if let (Some(dedup), true) = (&out.dedup, out.ack_early) {
            // Acknowledged before the handler, a message lost in a crash never reaches the
            // inbox: "once" would silently become "at most once".
            cx.error_at(
                dedup.span(),
                "`dedup` cannot be combined with `ack = \"early\"`: an inbox handler is acknowledged after its effect is recorded",
            );
            out.dedup = None;
        }
        if let (Some(saga), true) = (&out.saga, out.ack_early) {
            cx.error_at(
                saga.span,
                "`saga` cannot be combined with `ack = \"early\"`: a saga step is acknowledged after it committed",
            );
            out.saga = None;
        }
        if let (Some((_, span)), true) = (&out.ordered, out.ack_early) {
            // Acknowledged before it runs, a message would not come back to the next replica
            // after a crash: the later ones of its key would run without it.
            cx.error_at(
                *span,
                "`ordered` cannot be combined with `ack = \"early\"`: an ordered message is acknowledged after it ran, so a crash hands it on in order",
            );
            out.ordered = None;
        }
        out
    }
}

/// A string literal, or the error that it is none.
pub(super) fn lit_str(cx: &Ctxt, input: ParseStream<'_>, msg: &str) -> Result<LitStr, Reported> {
    input.parse().map_err(|e| cx.error_at(e.span(), msg))
}

/// `"user.*"` or `pattern = "user.*"`.
fn pattern(
    a: &mut SubscribeArgs,
    cx: &Ctxt,
    _: Span,
    input: ParseStream<'_>,
) -> Result<(), Reported> {
    let lit = lit_str(cx, input, "`pattern` must be a string literal")?;
    let pattern = crate::topic::pattern(&lit).map_err(|e| cx.syn_error(e))?;
    a.pattern = Some(LitStr::new(&pattern, lit.span()));
    Ok(())
}

/// `name = "..."`.
fn name(a: &mut SubscribeArgs, cx: &Ctxt, _: Span, input: ParseStream<'_>) -> Result<(), Reported> {
    let lit = lit_str(cx, input, "`name` must be a string literal")?;
    if lit.value().is_empty() {
        return Err(cx.error_at(lit.span(), "handler `name` must not be empty"));
    }
    a.name = Some(lit);
    Ok(())
}

/// `retry(...)`.
pub(super) fn retry(
    a: &mut SubscribeArgs,
    cx: &Ctxt,
    _: Span,
    input: ParseStream<'_>,
) -> Result<(), Reported> {
    a.retry = Some(retry::parse(cx, input));
    Ok(())
}

/// `ack = "late"` or `ack = "early"`.
fn ack(a: &mut SubscribeArgs, cx: &Ctxt, _: Span, input: ParseStream<'_>) -> Result<(), Reported> {
    let lit = lit_str(cx, input, "`ack` must be \"late\" or \"early\"")?;
    a.ack_early = match lit.value().as_str() {
        "late" => false,
        "early" => true,
        _ => {
            return Err(cx.error_at(
                lit.span(),
                concat!(
                    "`ack` must be \"late\" (after the handler, the default) ",
                    "or \"early\" (on receipt)"
                ),
            ));
        }
    };
    Ok(())
}

/// `dedup`, or `dedup(key = "...")`.
fn dedup(
    a: &mut SubscribeArgs,
    cx: &Ctxt,
    span: Span,
    input: ParseStream<'_>,
) -> Result<(), Reported> {
    if input.is_empty() {
        a.dedup = Some(Dedup::MessageId(span));
        return Ok(());
    }
    let mut options = DedupOptions::default();
    args::walk(cx, &DEDUP_SPEC, &mut options, input);
    match options.key {
        Some(lit) => a.dedup = Some(Dedup::Field(lit)),
        None if options.rejected => {}
        None => {
            return Err(cx.error_at(
                span,
                "`dedup(...)` needs `key = \"payload.field\"`; write `dedup` alone for the message id",
            ));
        }
    }
    Ok(())
}

/// `ordered(key = "...")`.
fn ordered(
    a: &mut SubscribeArgs,
    cx: &Ctxt,
    span: Span,
    input: ParseStream<'_>,
) -> Result<(), Reported> {
    let mut options = DedupOptions::default();
    args::walk(cx, &ORDERED_SPEC, &mut options, input);
    match options.key {
        Some(lit) => a.ordered = Some((lit, span)),
        None if options.rejected => {}
        None => {
            return Err(cx.error_at(
                span,
                "`ordered(...)` needs `key = \"payload.field\"`: the field whose value orders the messages",
            ));
        }
    }
    Ok(())
}

/// `saga(key = "...", start, unknown = "...")`.
fn saga(
    a: &mut SubscribeArgs,
    cx: &Ctxt,
    span: Span,
    input: ParseStream<'_>,
) -> Result<(), Reported> {
    let mut options = SagaOptions::default();
    args::walk(cx, &SAGA_SPEC, &mut options, input);
    match options.key.key {
        Some(key) => {
            a.saga = Some(SagaArgs {
                key,
                start: options.start,
                ignore_unknown: options.ignore_unknown,
                span,
            });
        }
        None if options.rejected || options.key.rejected => {}
        None => {
            return Err(cx.error_at(
                span,
                "`saga(...)` needs `key = \"payload.field\"`: the field that names the saga an event belongs to",
            ));
        }
    }
    Ok(())
}

fn saga_key(
    o: &mut SagaOptions,
    cx: &Ctxt,
    span: Span,
    input: ParseStream<'_>,
) -> Result<(), Reported> {
    let r = dedup_key(&mut o.key, cx, span, input);
    if r.is_err() {
        o.key.rejected = true;
    }
    r
}

fn saga_start(o: &mut SagaOptions, _: &Ctxt, _: Span, _: ParseStream<'_>) -> Result<(), Reported> {
    o.start = true;
    Ok(())
}

fn saga_unknown(
    o: &mut SagaOptions,
    cx: &Ctxt,
    _: Span,
    input: ParseStream<'_>,
) -> Result<(), Reported> {
    let lit = lit_str(cx, input, "`unknown` must be \"park\" or \"ignore\"")?;
    match lit.value().as_str() {
        "park" => o.ignore_unknown = false,
        "ignore" => o.ignore_unknown = true,
        _ => {
            return Err(cx.error_at(
                lit.span(),
                "`unknown` must be \"park\" (dead-letter it as `no_saga`) or \"ignore\" (acknowledge it)",
            ));
        }
    }
    Ok(())
}

/// `key = "order_id"` or `key = "order.id"`: a dotted path of non-empty field names.
fn dedup_key(
    options: &mut DedupOptions,
    cx: &Ctxt,
    _: Span,
    input: ParseStream<'_>,
) -> Result<(), Reported> {
    let lit = lit_str(cx, input, "`key` must be a string literal")?;
    let path = lit.value();
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(cx.error_at(
            lit.span(),
            "`key` must name a payload field: `\"order_id\"`, or a dotted path like `\"order.id\"`",
        ));
    }
    options.key = Some(lit);
    Ok(())
}

/// `metadata(owner = "billing", runbook = "https://...")`: name/value pairs for `topology` and
/// the AsyncAPI export. A name is an identifier or a string; every value a string literal.
pub(super) fn metadata(
    a: &mut SubscribeArgs,
    cx: &Ctxt,
    _: Span,
    input: ParseStream<'_>,
) -> Result<(), Reported> {
    while !input.is_empty() {
        let (name, span) = metadata_name(cx, input)?;
        input
            .parse::<syn::Token![=]>()
            .map_err(|e| cx.error_at(e.span(), "expected `name = \"value\"` in `metadata(...)`"))?;
        let value = lit_str(cx, input, "a `metadata` value must be a string literal")?;
        if a.metadata.iter().any(|(n, _)| *n == name) {
            return Err(cx.error_at(span, format!("`metadata` names `{name}` twice")));
        }
        a.metadata.push((name, value));
        if !input.is_empty() {
            input
                .parse::<syn::Token![,]>()
                .map_err(|e| cx.error_at(e.span(), "expected `,` between `metadata` entries"))?;
        }
    }
    Ok(())
}

/// A metadata name: `owner` or `"owner.team"`, not empty.
fn metadata_name(cx: &Ctxt, input: ParseStream<'_>) -> Result<(String, Span), Reported> {
    if input.peek(LitStr) {
        let lit: LitStr = input.parse().map_err(|e| cx.syn_error(e))?;
        if lit.value().is_empty() {
            return Err(cx.error_at(lit.span(), "a `metadata` name must not be empty"));
        }
        return Ok((lit.value(), lit.span()));
    }
    let ident: syn::Ident = input
        .call(syn::ext::IdentExt::parse_any)
        .map_err(|e| cx.error_at(e.span(), "expected a `metadata` name: `owner = \"...\"`"))?;
    Ok((syn::ext::IdentExt::unraw(&ident).to_string(), ident.span()))
}
