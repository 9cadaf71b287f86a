//! What `#[tchu::event]` and `#[tchu::payload]` emit next to their errors, after thiserror's
//! `fallback.rs`: the item stays usable, so handlers, publishes and fields that use the type
//! add no errors of their own to the real one.

use super::args::EventArgs;
use super::derives;
use super::expand;
use super::model::Rpc;
use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{Generics, Item, LitStr};

/// Any valid topic; it is never published to, the build fails on the errors beside it.
const STUB_TOPIC: &str = "tchu.invalid";

/// The errors, the item with its derives and, when it is not generic, the trait impls with the
/// topic as written (a subscription pattern then matches it as it will once it is fixed) or
/// [`STUB_TOPIC`]. No registration: nothing broken is exported.
pub(crate) fn event(
    args: &EventArgs,
    item: Option<&Item>,
    input: TokenStream,
    errors: &syn::Error,
) -> TokenStream {
    let errors = errors.to_compile_error();
    let Some((derived, ident, generics)) = item.and_then(derived) else {
        return quote! { #errors #input };
    };
    let impls = generics.params.is_empty().then(|| {
        let topic = match &args.written_topic {
            Some(lit) => LitStr::new(&lit.value(), lit.span()),
            None => LitStr::new(STUB_TOPIC, Span::call_site()),
        };
        expand::impls(ident, &topic, Rpc::from_args(args).as_ref())
    });
    quote! {
        #errors
        #derived
        #impls
    }
}

/// The errors and the item with its derives, when it is a struct or an enum.
pub(crate) fn payload(item: Option<&Item>, input: TokenStream, errors: &syn::Error) -> TokenStream {
    let errors = errors.to_compile_error();
    match item.and_then(derived) {
        Some((derived, ..)) => quote! { #errors #derived },
        None => quote! { #errors #input },
    }
}

/// A struct or an enum with the derives the user does not write: adding one they do write
/// would be a second error, a conflicting impl.
fn derived(item: &Item) -> Option<(TokenStream, &syn::Ident, &Generics)> {
    let (attrs, ident, generics) = match item {
        Item::Struct(s) => (&s.attrs, &s.ident, &s.generics),
        Item::Enum(e) => (&e.attrs, &e.ident, &e.generics),
        _ => return None,
    };
    let skip: Vec<&str> = derives::user_derived(attrs)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let derives = derives::attrs(&skip);
    Some((quote! { #derives #item }, ident, generics))
}
