//! Procedural macros of [tchu](https://docs.rs/tchu). Use them through the facade:
//! `#[tchu::event]`, `#[tchu::subscribe]` and `tchu::run!()`; their documentation lives there.
//!
//! Each macro works as serde_derive does: its arguments are walked by one parser (`args`)
//! into a model of the macro, every mistake reported into one error context (`ctxt`) without
//! stopping at the first; a model without errors is expanded, and expansion cannot fail. On
//! errors the macro emits them next to a fallback that keeps the item usable (after
//! thiserror's), so one mistake gives one error and not a cascade of "cannot find" and "trait
//! not implemented" errors wherever the item is used.

use proc_macro::TokenStream;

mod args;
mod ctxt;
mod event;
mod retry;
mod run;
mod subscribe;
mod topic;

/// See `tchu::event`.
#[proc_macro_attribute]
pub fn event(args: TokenStream, item: TokenStream) -> TokenStream {
    event::event(args.into(), item.into()).into()
}

/// See `tchu::payload`.
#[proc_macro_attribute]
pub fn payload(args: TokenStream, item: TokenStream) -> TokenStream {
    event::payload(args.into(), item.into()).into()
}

/// See `tchu::subscribe`.
#[proc_macro_attribute]
pub fn subscribe(args: TokenStream, item: TokenStream) -> TokenStream {
    subscribe::subscribe(args.into(), item.into()).into()
}

/// See `tchu::schedule`.
#[proc_macro_attribute]
pub fn schedule(args: TokenStream, item: TokenStream) -> TokenStream {
    subscribe::schedule(args.into(), item.into()).into()
}

/// See `tchu::run`.
#[proc_macro]
pub fn run(input: TokenStream) -> TokenStream {
    run::run(input.into()).into()
}
