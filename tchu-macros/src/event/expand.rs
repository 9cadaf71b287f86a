//! Expansion of valid models. Cannot fail: everything it needs was checked into the model.

use super::derives;
use super::model::{EventModel, PayloadModel, Rpc};
use proc_macro2::TokenStream;
use quote::quote;
use syn::{Ident, LitStr};

/// The struct with its derives, its trait impls and its registration.
pub(crate) fn event(m: &EventModel<'_>) -> TokenStream {
    let derives = derives::attrs(&[]);
    let item = m.item;
    let impls = impls(&item.ident, &m.topic, m.rpc.as_ref());
    let descriptor = descriptor(m);
    quote! {
        #derives
        #item
        #impls
        #descriptor
    }
}

/// `Event`, `FromMessage` and, for a request, `Request`.
///
/// Shared with the fallback, which implements them with a stub topic so that code using the
/// type compiles while the attribute is wrong.
pub(crate) fn impls(name: &Ident, topic: &LitStr, rpc: Option<&Rpc<'_>>) -> TokenStream {
    let name_str = name.to_string();
    let (request, marker) = match rpc {
        Some(Rpc { response, error }) => {
            let (error, marker) = match error {
                Some(e) => (quote! { #e }, quote! { #e }),
                None => (
                    quote! { ::tchu::RpcError },
                    quote! { ::tchu::__private::DefaultError },
                ),
            };
            let request = quote! {
                #[automatically_derived]
                impl ::tchu::Request for #name {
                    type Response = #response;
                    type Error = #error;
                }
            };
            (
                request,
                quote! { ::tchu::__private::Reply<#response, #marker> },
            )
        }
        None => (quote! {}, quote! { ::tchu::__private::NoReply }),
    };
    quote! {
        #[automatically_derived]
        impl ::tchu::Event for #name {
            const TOPIC: &'static str = #topic;
        }

        #[automatically_derived]
        impl ::tchu::__private::FromMessage for #name {
            const TOPIC: ::std::option::Option<&'static str> =
                ::std::option::Option::Some(#topic);
            const EVENT: ::std::option::Option<&'static str> =
                ::std::option::Option::Some(#name_str);
            type Rpc = #marker;
            fn from_message(
                incoming: &::tchu::__private::Incoming,
            ) -> ::std::result::Result<Self, ::tchu::__private::HandlerError> {
                ::tchu::__private::decode_event::<Self>(incoming)
            }
        }

        #request
    }
}

/// The event's entry in the link-time registry.
fn descriptor(m: &EventModel<'_>) -> TokenStream {
    let name = &m.item.ident;
    let name_str = name.to_string();
    let topic = &m.topic;
    let schema = |t: Option<TokenStream>| match t {
        Some(t) => {
            quote! { ::std::option::Option::Some(::tchu::__private::SchemaFns::of::<#t>()) }
        }
        None => quote! { ::std::option::Option::None },
    };
    let response = schema(m.rpc.as_ref().map(|r| {
        let t = r.response;
        quote! { #t }
    }));
    let error = schema(m.rpc.as_ref().map(|r| match r.error {
        Some(e) => quote! { #e },
        None => quote! { ::tchu::RpcError },
    }));
    quote! {
        // Registered at link time, so the service can export every schema and its AsyncAPI
        // document without a list kept by hand.
        #[doc(hidden)]
        const _: () = {
            ::tchu::__private::inventory::submit! {
                ::tchu::__private::EventDescriptor {
                    name: #name_str,
                    module: ::std::module_path!(),
                    topic: #topic,
                    payload: ::tchu::__private::SchemaFns::of::<#name>(),
                    response: #response,
                    error: #error,
                }
            }
        };
    }
}

/// The item with its derives.
pub(crate) fn payload(m: &PayloadModel<'_>) -> TokenStream {
    let derives = derives::attrs(&[]);
    let item = m.item;
    quote! {
        #derives
        #item
    }
}
