//! Procedural macros of [tchu](https://docs.rs/tchu). Use them through the facade:
//! `#[tchu::event]`, `#[tchu::subscribe]` and `tchu::run!()`; their documentation lives there.
//!
//! Each entry point parses, validates and expands; expansion cannot fail. On any error the
//! user's item is still emitted next to the `compile_error!`s, so one mistake does not cascade
//! into "cannot find" errors elsewhere.

use proc_macro::TokenStream;

mod event;
mod retry;
mod run;
mod subscribe;
mod topic;

/// See `tchu::event`.
#[proc_macro_attribute]
pub fn event(args: TokenStream, item: TokenStream) -> TokenStream {
    event::expand(args.into(), item.into()).into()
}

/// See `tchu::payload`.
#[proc_macro_attribute]
pub fn payload(args: TokenStream, item: TokenStream) -> TokenStream {
    event::expand_payload(args.into(), item.into()).into()
}

/// See `tchu::subscribe`.
#[proc_macro_attribute]
pub fn subscribe(args: TokenStream, item: TokenStream) -> TokenStream {
    subscribe::expand(args.into(), item.into()).into()
}

/// See `tchu::run`.
#[proc_macro]
pub fn run(input: TokenStream) -> TokenStream {
    run::expand(input.into()).into()
}

/// Emits the user's item unchanged plus the errors.
fn fallback(item: proc_macro2::TokenStream, err: syn::Error) -> proc_macro2::TokenStream {
    let errors = err.to_compile_error();
    quote::quote! { #item #errors }
}

/// Adds an error to an accumulator (all mistakes are reported in one build, as serde does).
fn push_err(acc: &mut Option<syn::Error>, e: syn::Error) {
    match acc {
        Some(a) => a.combine(e),
        None => *acc = Some(e),
    }
}
