//! The checked models of `#[tchu::event]` and `#[tchu::payload]`: what expansion needs, and
//! only when it is all valid.

use super::args::EventArgs;
use super::derives;
use crate::ctxt::{Ctxt, Reported};
use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Fields, Item, ItemStruct, LitStr, Type};

/// A valid `#[tchu::event]`.
pub(crate) struct EventModel<'a> {
    /// A non-generic struct with named fields and no derive of its own that the macro adds.
    pub item: &'a ItemStruct,
    /// The topic, valid, spanned on the user's literal.
    pub topic: LitStr,
    /// What a request answers; `None` for a plain event.
    pub rpc: Option<Rpc<'a>>,
}

/// The answer of a request event: `response = R` and perhaps `error = E`.
pub(crate) struct Rpc<'a> {
    /// The success type.
    pub response: &'a Type,
    /// The business error type; `tchu::RpcError` when `None`.
    pub error: Option<&'a Type>,
}

impl<'a> Rpc<'a> {
    /// The answer as the arguments declare it, whether or not the rest is valid; `None` without
    /// a usable `response` (an `error` alone is reported by the model).
    pub(crate) fn from_args(args: &'a EventArgs) -> Option<Self> {
        let response = args.response.as_ref()?.as_ref().ok()?;
        let error = args.error.as_ref().map(|(_, ty)| ty);
        Some(Rpc { response, error })
    }
}

impl<'a> EventModel<'a> {
    /// Checks the arguments and the item together, reporting every mistake into `cx`.
    pub(crate) fn from_ast(
        cx: &Ctxt,
        args: &'a EventArgs,
        item: &'a Item,
    ) -> Result<Self, Reported> {
        let item = event_struct(cx, item);
        // Only when `response` is absent: a rejected one has its own error.
        if let (None, Some((key, _))) = (&args.response, &args.error) {
            cx.error_at(
                *key,
                concat!(
                    "`error` needs `response`: a request declares what it answers, ",
                    "like `response = Receipt, error = PaymentError`"
                ),
            );
        }
        let topic = topic(cx, args);
        Ok(EventModel {
            item: item?,
            topic: topic?,
            rpc: Rpc::from_args(args),
        })
    }
}

/// The item, if it is a struct an event can be; every other mistake of it reported too.
fn event_struct<'a>(cx: &Ctxt, item: &'a Item) -> Result<&'a ItemStruct, Reported> {
    let Item::Struct(st) = item else {
        let span = match item {
            Item::Enum(e) => e.enum_token.span(),
            Item::Fn(f) => f.sig.fn_token.span(),
            Item::Union(u) => u.union_token.span(),
            other => other.span(),
        };
        return Err(cx.error_at(span, "`#[tchu::event]` applies to structs only"));
    };
    if !matches!(st.fields, Fields::Named(_)) {
        // tchu-tchu carries dicts: a tuple or unit struct would serialise to an array or null.
        cx.error_at(
            st.ident.span(),
            "`#[tchu::event]` structs need named fields: an event travels as a JSON object",
        );
    }
    if !st.generics.params.is_empty() {
        cx.error_at(
            st.generics.span(),
            concat!(
                "`#[tchu::event]` structs cannot be generic: ",
                "an event has one topic and one schema"
            ),
        );
    }
    derives::check(cx, &st.attrs, "event");
    Ok(st)
}

/// The topic, or why there is none.
fn topic(cx: &Ctxt, args: &EventArgs) -> Result<LitStr, Reported> {
    match &args.topic {
        None => Err(cx.error_at(
            Span::call_site(),
            "missing topic: write `#[tchu::event(topic = \"user.created\")]`",
        )),
        Some(topic) => topic.clone(),
    }
}

/// A valid `#[tchu::payload]`.
pub(crate) struct PayloadModel<'a> {
    /// A struct or an enum, with no derive of its own that the macro adds.
    pub item: &'a Item,
}

impl<'a> PayloadModel<'a> {
    /// Checks the item, reporting every mistake into `cx`.
    pub(crate) fn from_ast(cx: &Ctxt, item: &'a Item) -> Result<Self, Reported> {
        let attrs = match item {
            Item::Struct(s) => &s.attrs,
            Item::Enum(e) => &e.attrs,
            other => {
                return Err(cx.error_at(
                    other.span(),
                    "`#[tchu::payload]` applies to structs and enums",
                ));
            }
        };
        derives::check(cx, attrs, "payload");
        Ok(PayloadModel { item })
    }
}
