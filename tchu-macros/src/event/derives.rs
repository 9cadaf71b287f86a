//! The serde and schemars derives both macros add, and the user's own derives that clash.

use crate::ctxt::Ctxt;
use proc_macro2::TokenStream;
use quote::quote;
use syn::Attribute;
use syn::spanned::Spanned;

/// What the macros derive, by the last segment of the path.
const DERIVED: [&str; 3] = ["Serialize", "Deserialize", "JsonSchema"];

/// Which of [`DERIVED`] the user's own `#[derive(...)]`s name.
pub(crate) fn user_derived(attrs: &[Attribute]) -> Vec<(&'static str, proc_macro2::Span)> {
    let mut found = Vec::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("derive")) {
        // A malformed `derive` is rustc's to report; this only looks for clashes.
        let _ = attr.parse_nested_meta(|m| {
            let last = m.path.segments.last().map(|s| s.ident.to_string());
            if let Some(name) = DERIVED.iter().find(|d| last.as_deref() == Some(**d)) {
                found.push((*name, m.path.span()));
            }
            Ok(())
        });
    }
    found
}

/// Reports each of the user's derives that the macro adds itself.
pub(crate) fn check(cx: &Ctxt, attrs: &[Attribute], macro_name: &str) {
    for (name, span) in user_derived(attrs) {
        let msg = format!(
            concat!(
                "`#[tchu::{}]` already derives `{}`; ",
                "remove it from this `derive`"
            ),
            macro_name, name
        );
        cx.error_at(span, msg);
    }
}

/// The derive attributes, leaving out those in `skip` (the user's own, in the fallback).
///
/// Through `::tchu::__private`, so the user's crate needs no serde or schemars dependency.
pub(crate) fn attrs(skip: &[&str]) -> TokenStream {
    let keep = |name: &str| !skip.contains(&name);
    let mut paths = Vec::new();
    if keep("Serialize") {
        paths.push(quote! { ::tchu::__private::serde::Serialize });
    }
    if keep("Deserialize") {
        paths.push(quote! { ::tchu::__private::serde::Deserialize });
    }
    if keep("JsonSchema") {
        paths.push(quote! { ::tchu::__private::schemars::JsonSchema });
    }
    // A helper attribute without any derive of its crate would be an unknown attribute.
    let serde = (keep("Serialize") || keep("Deserialize"))
        .then(|| quote! { #[serde(crate = "::tchu::__private::serde")] });
    let schemars =
        keep("JsonSchema").then(|| quote! { #[schemars(crate = "::tchu::__private::schemars")] });
    let derive = (!paths.is_empty()).then(|| quote! { #[derive(#(#paths),*)] });
    quote! {
        #derive
        #serde
        #schemars
    }
}
