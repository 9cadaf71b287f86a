//! `tchu::run!(...)`: builds the service from every linked handler and runs it.
//!
//! Every argument is optional, so the [`RunModel`] is always whole: a rejected argument is
//! left out, its error reported. On errors the expansion is still emitted after them, so the
//! expression keeps its type and the code around it adds no errors of its own.

use crate::args::{self, Key, Spec};
use crate::ctxt::{Ctxt, Reported};
use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::parse::ParseStream;
use syn::spanned::Spanned;
use syn::{Expr, LitInt, LitStr};
use tchu_core::retry::RetryPolicy;

/// The accepted arguments of `tchu::run!`.
#[derive(Default)]
pub(crate) struct RunModel {
    /// `queue = "..."`: a valid queue name; the crate name otherwise.
    queue: Option<LitStr>,
    /// `prefetch = N`, 1 to 65535.
    prefetch: Option<LitInt>,
    /// Every `state = <expr>`, in order.
    state: Vec<Expr>,
    /// `retry(...)` without `on(...)`: the default policy of handlers without their own.
    retry: Option<RetryPolicy>,
    /// `inbox = <expr>`: the `tchu::Inbox` of `dedup` handlers.
    inbox: Option<Expr>,
    /// `outbox = <expr>`: a `tchu::Outbox` whose relay runs beside the service.
    outbox: Option<Expr>,
    /// Every `handler = <expr>` (a `tchu::Handler` built at run time), in order.
    handler: Vec<Expr>,
    /// `replay_from = "..."`: a replay point of the event log.
    replay_from: Option<LitStr>,
}

/// The arguments `tchu::run!` accepts.
const SPEC: Spec<RunModel> = Spec {
    place: "`tchu::run!`",
    noun: "argument",
    keys: &[
        Key::value("queue", "`queue = \"...\"`", queue),
        Key::value("prefetch", "`prefetch = N`", prefetch),
        Key::value("state", "`state = <expr>`", state).repeatable(),
        Key::list("retry", "`retry(...)`", retry),
        Key::value("inbox", "`inbox = <expr>`", inbox),
        Key::value("outbox", "`outbox = <expr>`", outbox),
        Key::value("handler", "`handler = <expr>`", handler).repeatable(),
        Key::value("replay_from", "`replay_from = \"1h\"`", replay_from),
    ],
    rejected: None,
};

/// `tchu::run!(...)` with `input`.
pub(crate) fn run(input: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let mut model = RunModel::default();
    args::parse(&cx, &SPEC, &mut model, input);
    let expanded = expand(&model);
    match cx.check() {
        Ok(()) => expanded,
        // A block: the errors are statements, the expansion its value.
        Err(errors) => {
            let errors = errors.to_compile_error();
            quote! {{ #errors; #expanded }}
        }
    }
}

/// `queue = "..."`.
fn queue(m: &mut RunModel, cx: &Ctxt, _: Span, input: ParseStream<'_>) -> Result<(), Reported> {
    let lit: LitStr = input
        .parse()
        .map_err(|e| cx.error_at(e.span(), "`queue` must be a string literal"))?;
    let v = lit.value();
    if v.is_empty() || v.len() > 250 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(cx.error_at(
            lit.span(),
            "queue name must be 1 to 250 bytes with no whitespace",
        ));
    }
    if v.starts_with("amq.") {
        return Err(cx.error_at(
            lit.span(),
            "queue names starting with `amq.` are reserved by RabbitMQ",
        ));
    }
    m.queue = Some(lit);
    Ok(())
}

/// `prefetch = N`.
fn prefetch(m: &mut RunModel, cx: &Ctxt, _: Span, input: ParseStream<'_>) -> Result<(), Reported> {
    let lit: LitInt = input
        .parse()
        .map_err(|e| cx.error_at(e.span(), "`prefetch` must be an integer literal"))?;
    match lit.base10_parse::<u16>() {
        Ok(n) if n >= 1 => {
            m.prefetch = Some(lit);
            Ok(())
        }
        _ => Err(cx.error_at(lit.span(), "`prefetch` must be between 1 and 65535")),
    }
}

/// `state = <expr>`.
fn state(m: &mut RunModel, cx: &Ctxt, _: Span, input: ParseStream<'_>) -> Result<(), Reported> {
    m.state.push(input.parse().map_err(|e| cx.syn_error(e))?);
    Ok(())
}

/// `inbox = <expr>`.
fn inbox(m: &mut RunModel, cx: &Ctxt, _: Span, input: ParseStream<'_>) -> Result<(), Reported> {
    m.inbox = Some(input.parse().map_err(|e| cx.syn_error(e))?);
    Ok(())
}

/// `outbox = <expr>`.
fn outbox(m: &mut RunModel, cx: &Ctxt, _: Span, input: ParseStream<'_>) -> Result<(), Reported> {
    m.outbox = Some(input.parse().map_err(|e| cx.syn_error(e))?);
    Ok(())
}

/// `handler = <expr>`.
fn handler(m: &mut RunModel, cx: &Ctxt, _: Span, input: ParseStream<'_>) -> Result<(), Reported> {
    m.handler.push(input.parse().map_err(|e| cx.syn_error(e))?);
    Ok(())
}

/// `replay_from = "..."`: `1h`, `2d`, an RFC 3339 time, `first` or `offset:N`.
fn replay_from(
    m: &mut RunModel,
    cx: &Ctxt,
    _: Span,
    input: ParseStream<'_>,
) -> Result<(), Reported> {
    let lit: LitStr = input
        .parse()
        .map_err(|e| cx.error_at(e.span(), "`replay_from` must be a string literal"))?;
    let problem = match tchu_core::since::parse(&lit.value()) {
        Ok(tchu_core::since::Since::At(at)) => chrono::DateTime::parse_from_rfc3339(&at)
            .err()
            .map(|_| format!("`{at}`: {}", tchu_core::since::EXPECTED)),
        Ok(_) => None,
        Err(why) => Some(why),
    };
    if let Some(why) = problem {
        return Err(cx.error_at(lit.span(), format!("`replay_from` {why}")));
    }
    m.replay_from = Some(lit);
    Ok(())
}

/// `retry(...)`.
fn retry(m: &mut RunModel, cx: &Ctxt, _: Span, input: ParseStream<'_>) -> Result<(), Reported> {
    let retry = crate::retry::parse(cx, input);
    if let Some(t) = retry.on.first() {
        // The app-wide default applies to handlers of every error type.
        return Err(cx.error_at(
            t.span(),
            "`on(...)` belongs on a handler's own `retry(...)`, not on the app-wide default",
        ));
    }
    m.retry = Some(retry.policy);
    Ok(())
}

/// The service, built and run. Cannot fail: the model holds only accepted arguments.
fn expand(m: &RunModel) -> TokenStream {
    let queue = match &m.queue {
        Some(q) => quote! { ::std::option::Option::Some(#q) },
        None => quote! { ::std::option::Option::None },
    };
    let prefetch = match &m.prefetch {
        Some(p) => quote! { ::std::option::Option::Some(#p) },
        None => quote! { ::std::option::Option::None },
    };
    let state = &m.state;
    let retry = m.retry.as_ref().map(|p| {
        let p = crate::retry::policy_tokens(p);
        quote! { .default_retry(#p) }
    });
    let inbox = m.inbox.as_ref().map(|e| quote! { .inbox(#e) });
    let outbox = m.outbox.as_ref().map(|e| quote! { .relay_outbox(#e) });
    let handler = &m.handler;
    let replay_from = m.replay_from.as_ref().map(|s| quote! { .replay_from(#s) });
    // The library decides how the binary ends; the exit itself happens here, in the user's
    // `main`, never inside the library.
    quote! {
        match ::tchu::__private::run_app(
            ::tchu::Service::new(::tchu::__private::queue_name(
                #queue,
                ::std::env!("CARGO_CRATE_NAME"),
            ))
            .prefetch(::tchu::__private::prefetch_from_env(#prefetch))
            .version(::std::env!("CARGO_PKG_VERSION"))
            #(.state(#state))*
            #retry
            #inbox
            #outbox
            #(.handler(#handler))*
            #replay_from
        )
        .await
        {
            ::tchu::__private::AppExit::Ran(result) => result,
            ::tchu::__private::AppExit::Code(code) => ::std::process::exit(code),
        }
    }
}
