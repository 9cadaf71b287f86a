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
    ],
    rejected: None,
};

impl SubscribeArgs {
    /// Parses the attribute's arguments, reporting every mistake.
    pub(crate) fn parse(cx: &Ctxt, tokens: TokenStream) -> Self {
        let mut out = SubscribeArgs::default();
        args::parse(cx, &SPEC, &mut out, tokens);
        out
    }
}

/// A string literal, or the error that it is none.
fn lit_str(cx: &Ctxt, input: ParseStream<'_>, msg: &str) -> Result<LitStr, Reported> {
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
fn retry(
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
