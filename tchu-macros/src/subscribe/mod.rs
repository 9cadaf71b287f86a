//! `#[tchu::subscribe]`: registers an async fn as a handler through `inventory`.
//!
//! Forms: `#[tchu::subscribe]` (topic from the event argument), `#[tchu::subscribe("user.*")]`
//! (explicit pattern; with a typed event it must be able to match the event's topic), and
//! `name = "..."` to set the handler's unique name. Argument types are extractors checked by
//! rustc through `FromMessage`; the return type through `IntoHandlerResult`; the pattern rules
//! that need the event's topic are `const` assertions, so they are compile errors too.
//!
//! Arguments ([`args`]) and function go into a [`model::HandlerModel`], checked in one
//! [`Ctxt`]; a valid model is expanded ([`expand`]). On any error the function is emitted as
//! written next to the errors, so calls to it still resolve, and no handler is registered.

mod args;
mod expand;
mod model;
mod schedule;

use crate::ctxt::Ctxt;
use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::ItemFn;

/// `#[tchu::subscribe(...)]` on `input`.
pub(crate) fn subscribe(args: TokenStream, input: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let args = args::SubscribeArgs::parse(&cx, args);
    let func = syn::parse2::<ItemFn>(input.clone());
    handler(cx, args, func, input)
}

/// `#[tchu::schedule(...)]` on `input`: a handler of the schedule's occurrences.
pub(crate) fn schedule(args: TokenStream, input: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let func = syn::parse2::<ItemFn>(input.clone());
    let func_name = func
        .as_ref()
        .ok()
        .map(|f| syn::ext::IdentExt::unraw(&f.sig.ident).to_string());
    let args = schedule::parse(&cx, args, func_name);
    handler(cx, args, func, input)
}

/// The handler of either attribute, or its errors beside the function as written.
fn handler(
    cx: Ctxt,
    args: args::SubscribeArgs,
    func: syn::Result<ItemFn>,
    input: TokenStream,
) -> TokenStream {
    let func = func.map_err(|_| {
        cx.error_at(
            Span::call_site(),
            format!("{} applies to `async fn` items", args.place()),
        )
    });
    let model = func
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|func| model::HandlerModel::from_ast(&cx, &args, func));
    match cx.finish(model) {
        Ok(model) => expand::handler(&model),
        Err(errors) => {
            let errors = errors.to_compile_error();
            quote! { #errors #input }
        }
    }
}
