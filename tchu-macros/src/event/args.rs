//! The arguments of `#[tchu::event(...)]`.

use crate::args::{self, Key, Spec};
use crate::ctxt::{Ctxt, Reported};
use proc_macro2::{Span, TokenStream};
use syn::parse::ParseStream;
use syn::{LitStr, Type};

/// The arguments, each checked alone; what needs the item or several arguments is the model's
/// to check.
#[derive(Default)]
pub(crate) struct EventArgs {
    /// `topic = "..."`: the valid topic, spanned on the literal, or why it was rejected (a
    /// topic that is there but wrong is not also "missing").
    pub topic: Option<Result<LitStr, Reported>>,
    /// The topic literal as written, valid or not: the fallback's stub topic, so that a
    /// handler's pattern matches it as it will once the topic is fixed.
    pub written_topic: Option<LitStr>,
    /// `response = Type`, or why it was rejected (then `error` does not also lack it).
    pub response: Option<Result<Type, Reported>>,
    /// `error = Type`, with the span of `error` for "`error` needs `response`".
    pub error: Option<(Span, Type)>,
}

/// The arguments `#[tchu::event]` accepts.
const SPEC: Spec<EventArgs> = Spec {
    place: "`#[tchu::event]`",
    noun: "argument",
    keys: &[
        Key::value("topic", "`topic = \"...\"`", topic),
        Key::value("response", "`response = Type`", response),
        Key::value("error", "`error = Type`", error),
    ],
    rejected: Some(rejected),
};

impl EventArgs {
    /// Parses the attribute's arguments, reporting every mistake.
    pub(crate) fn parse(cx: &Ctxt, tokens: TokenStream) -> Self {
        let mut out = EventArgs::default();
        args::parse(cx, &SPEC, &mut out, tokens);
        out
    }
}

/// Records a rejected `topic` or `response`: present, though not usable.
fn rejected(a: &mut EventArgs, key: &'static str, why: Reported) {
    match key {
        "topic" => a.topic = Some(Err(why)),
        "response" => a.response = Some(Err(why)),
        _ => {}
    }
}

/// `topic = "..."`.
fn topic(a: &mut EventArgs, cx: &Ctxt, _: Span, input: ParseStream<'_>) -> Result<(), Reported> {
    let lit = input.parse::<LitStr>().map_err(|e| {
        cx.error_at(
            e.span(),
            "`topic` must be a string literal, like `topic = \"user.created\"`",
        )
    })?;
    a.written_topic = Some(lit.clone());
    let topic = crate::topic::topic(&lit).map_err(|e| cx.syn_error(e))?;
    a.topic = Some(Ok(LitStr::new(&topic, lit.span())));
    Ok(())
}

/// `response = Type`.
fn response(a: &mut EventArgs, cx: &Ctxt, _: Span, input: ParseStream<'_>) -> Result<(), Reported> {
    let ty = type_value(
        cx,
        input,
        "`response` must be a type, like `response = Receipt`",
    )?;
    a.response = Some(Ok(ty));
    Ok(())
}

/// `error = Type`.
fn error(a: &mut EventArgs, cx: &Ctxt, key: Span, input: ParseStream<'_>) -> Result<(), Reported> {
    let ty = type_value(
        cx,
        input,
        "`error` must be a type, like `error = PaymentError`",
    )?;
    a.error = Some((key, ty));
    Ok(())
}

/// A type, or `msg` where syn stopped reading it.
fn type_value(cx: &Ctxt, input: ParseStream<'_>, msg: &str) -> Result<Type, Reported> {
    input.parse().map_err(|e| cx.error_at(e.span(), msg))
}
