//! `#[tchu::event(topic = "...")]`: derives serde and schemars on the struct and implements
//! `Event` and `FromMessage` for it.

use crate::{fallback, push_err};
use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{Ident, Item, ItemStruct, LitStr, Type};

const ARGS: &str = "expected `topic = \"...\"`, `response = Type` or `error = Type`";

struct Args {
    topic: Option<(LitStr, String)>,
    response: Option<Type>,
    error: Option<(Ident, Type)>,
}

fn parse_args(args: TokenStream) -> syn::Result<Args> {
    let mut out = Args {
        topic: None,
        response: None,
        error: None,
    };
    let mut err = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("topic") {
            let lit: LitStr = meta.value()?.parse().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    "`topic` must be a string literal, like `topic = \"user.created\"`",
                )
            })?;
            if out.topic.is_some() {
                push_err(
                    &mut err,
                    syn::Error::new(
                        meta.path.span(),
                        "duplicate `topic` argument in `#[tchu::event]`",
                    ),
                );
                return Ok(());
            }
            match crate::topic::topic(&lit) {
                Ok(t) => out.topic = Some((lit, t)),
                Err(e) => push_err(&mut err, e),
            }
            Ok(())
        } else if meta.path.is_ident("response") || meta.path.is_ident("error") {
            let key = meta
                .path
                .get_ident()
                .cloned()
                .unwrap_or_else(|| Ident::new("response", Span::call_site()));
            let ty: Type = meta.value()?.parse()?;
            let dup = if key == "response" {
                out.response.is_some()
            } else {
                out.error.is_some()
            };
            if dup {
                push_err(
                    &mut err,
                    syn::Error::new(
                        key.span(),
                        format!("duplicate `{key}` argument in `#[tchu::event]`"),
                    ),
                );
            } else if key == "response" {
                out.response = Some(ty);
            } else {
                out.error = Some((key, ty));
            }
            Ok(())
        } else {
            let name = meta.path.to_token_stream().to_string().replace(' ', "");
            Err(meta.error(format!(
                "unknown `#[tchu::event]` argument `{name}`; {ARGS}"
            )))
        }
    });
    parser.parse2(args)?;
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

const DERIVED: [&str; 3] = ["Serialize", "Deserialize", "JsonSchema"];

fn check_derives(attrs: &[syn::Attribute], macro_name: &str, err: &mut Option<syn::Error>) {
    for attr in attrs {
        if attr.path().is_ident("derive") {
            let _ = attr.parse_nested_meta(|m| {
                if let Some(last) = m.path.segments.last() {
                    let n = last.ident.to_string();
                    if DERIVED.contains(&n.as_str()) {
                        push_err(
                            err,
                            syn::Error::new(m.path.span(), format!("`#[tchu::{macro_name}]` already derives `{n}`; remove it from this `derive`")),
                        );
                    }
                }
                Ok(())
            });
        }
    }
}

fn check_item(item: &ItemStruct) -> syn::Result<()> {
    let mut err = None;
    if !matches!(item.fields, syn::Fields::Named(_)) {
        // tchu-tchu carries dicts: a tuple or unit struct would serialise to an array or null.
        push_err(
            &mut err,
            syn::Error::new(
                item.ident.span(),
                "`#[tchu::event]` structs need named fields: an event travels as a JSON object",
            ),
        );
    }
    if !item.generics.params.is_empty() {
        push_err(
            &mut err,
            syn::Error::new(
                item.generics.span(),
                "`#[tchu::event]` structs cannot be generic: an event has one topic and one schema",
            ),
        );
    }
    check_derives(&item.attrs, "event", &mut err);
    match err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let item: Item = match syn::parse2(input.clone()) {
        Ok(i) => i,
        Err(e) => return fallback(input, e),
    };
    let st = match item {
        Item::Struct(s) => s,
        other => {
            let span = match &other {
                Item::Enum(e) => e.enum_token.span(),
                Item::Fn(f) => f.sig.fn_token.span(),
                Item::Union(u) => u.union_token.span(),
                _ => other.span(),
            };
            return fallback(
                input,
                syn::Error::new(span, "`#[tchu::event]` applies to structs only"),
            );
        }
    };
    let mut err = None;
    let args = match parse_args(args) {
        Ok(a) => Some(a),
        Err(e) => {
            push_err(&mut err, e);
            None
        }
    };
    if let Err(e) = check_item(&st) {
        push_err(&mut err, e);
    }
    if let Some(Args {
        response: None,
        error: Some((key, _)),
        ..
    }) = &args
    {
        push_err(
            &mut err,
            syn::Error::new(
                key.span(),
                "`error` needs `response`: a request declares what it answers, like `response = Receipt, error = PaymentError`",
            ),
        );
    }
    if let Some(Args { topic: None, .. }) = args {
        push_err(
            &mut err,
            syn::Error::new(
                Span::call_site(),
                "missing topic: write `#[tchu::event(topic = \"user.created\")]`",
            ),
        );
    }
    if let Some(e) = err {
        return fallback(input, e);
    }
    let Some(Args {
        topic: Some((lit, topic)),
        response,
        error,
    }) = args
    else {
        unreachable!("errors returned above")
    };
    let name = &st.ident;
    let name_str = name.to_string();
    let topic_lit = LitStr::new(&topic, lit.span());
    let (request_impl, rpc) = match &response {
        Some(r) => {
            let (e, marker) = match &error {
                Some((_, e)) => (quote! { #e }, quote! { #e }),
                None => (
                    quote! { ::tchu::RpcError },
                    quote! { ::tchu::__private::DefaultError },
                ),
            };
            (
                quote! {
                    #[automatically_derived]
                    impl ::tchu::Request for #name {
                        type Response = #r;
                        type Error = #e;
                    }
                },
                quote! { ::tchu::__private::Reply<#r, #marker> },
            )
        }
        None => (quote! {}, quote! { ::tchu::__private::NoReply }),
    };
    let schemas = |t: Option<TokenStream>| match t {
        Some(t) => quote! { ::std::option::Option::Some(::tchu::__private::SchemaFns::of::<#t>()) },
        None => quote! { ::std::option::Option::None },
    };
    let response_schema = schemas(response.as_ref().map(|r| quote! { #r }));
    let error_schema = schemas(response.as_ref().map(|_| match &error {
        Some((_, e)) => quote! { #e },
        None => quote! { ::tchu::RpcError },
    }));
    quote! {
        #[derive(::tchu::__private::serde::Serialize, ::tchu::__private::serde::Deserialize, ::tchu::__private::schemars::JsonSchema)]
        #[serde(crate = "::tchu::__private::serde")]
        #[schemars(crate = "::tchu::__private::schemars")]
        #st

        #[automatically_derived]
        impl ::tchu::Event for #name {
            const TOPIC: &'static str = #topic_lit;
        }

        #[automatically_derived]
        impl ::tchu::__private::FromMessage for #name {
            const TOPIC: ::std::option::Option<&'static str> = ::std::option::Option::Some(#topic_lit);
            const EVENT: ::std::option::Option<&'static str> = ::std::option::Option::Some(#name_str);
            type Rpc = #rpc;
            fn from_message(
                incoming: &::tchu::__private::Incoming,
            ) -> ::std::result::Result<Self, ::tchu::__private::HandlerError> {
                ::tchu::__private::decode_event::<Self>(incoming)
            }
        }

        #request_impl

        // Registered at link time, so the service can export every schema and its AsyncAPI
        // document without a list kept by hand.
        #[doc(hidden)]
        const _: () = {
            ::tchu::__private::inventory::submit! {
                ::tchu::__private::EventDescriptor {
                    name: #name_str,
                    module: ::std::module_path!(),
                    topic: #topic_lit,
                    payload: ::tchu::__private::SchemaFns::of::<#name>(),
                    response: #response_schema,
                    error: #error_schema,
                }
            }
        };
    }
}

/// `#[tchu::payload]`: the derives of an event, without a topic, for response and error types.
pub(crate) fn expand_payload(args: TokenStream, input: TokenStream) -> TokenStream {
    let item: Item = match syn::parse2(input.clone()) {
        Ok(i) => i,
        Err(e) => return fallback(input, e),
    };
    if !args.is_empty() {
        return fallback(
            input,
            syn::Error::new(args.span(), "`#[tchu::payload]` takes no arguments"),
        );
    }
    let attrs = match &item {
        Item::Struct(s) => &s.attrs,
        Item::Enum(e) => &e.attrs,
        other => {
            return fallback(
                input,
                syn::Error::new(
                    other.span(),
                    "`#[tchu::payload]` applies to structs and enums",
                ),
            );
        }
    };
    let mut err = None;
    check_derives(attrs, "payload", &mut err);
    if let Some(e) = err {
        return fallback(input, e);
    }
    quote! {
        #[derive(::tchu::__private::serde::Serialize, ::tchu::__private::serde::Deserialize, ::tchu::__private::schemars::JsonSchema)]
        #[serde(crate = "::tchu::__private::serde")]
        #[schemars(crate = "::tchu::__private::schemars")]
        #item
    }
}
