//! `#[tchu::event(topic = "...")]`: derives serde and schemars on the struct and implements
//! `Event` and `FromMessage` for it (and `Request` with `response = ...`).
//! `#[tchu::payload]`: the derives alone, for response and error types.
//!
//! Arguments ([`args`]) and item go into a model ([`model`]), checked in one [`Ctxt`]; a valid
//! model is expanded ([`expand`]), anything else gives the errors plus the [`fallback`].

mod args;
mod derives;
mod expand;
mod fallback;
mod model;

use crate::ctxt::Ctxt;
use proc_macro2::TokenStream;
use syn::Item;

/// `#[tchu::event(...)]` on `input`.
pub(crate) fn event(args: TokenStream, input: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let args = args::EventArgs::parse(&cx, args);
    let item = syn::parse2::<Item>(input.clone()).map_err(|e| cx.syn_error(e));
    let model = item
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|item| model::EventModel::from_ast(&cx, &args, item));
    match cx.finish(model) {
        Ok(model) => expand::event(&model),
        Err(errors) => fallback::event(&args, item.ok().as_ref(), input, &errors),
    }
}

/// `#[tchu::payload]` on `input`.
pub(crate) fn payload(args: TokenStream, input: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    if !args.is_empty() {
        cx.error_spanned_by(&args, "`#[tchu::payload]` takes no arguments");
    }
    let item = syn::parse2::<Item>(input.clone()).map_err(|e| cx.syn_error(e));
    let model = item
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|item| model::PayloadModel::from_ast(&cx, item));
    match cx.finish(model) {
        Ok(model) => expand::payload(&model),
        Err(errors) => fallback::payload(item.ok().as_ref(), input, &errors),
    }
}
