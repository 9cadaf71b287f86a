//! The checked model of `#[tchu::subscribe]`.

use super::args::SubscribeArgs;
use crate::ctxt::{Ctxt, Reported};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, Type};

/// A valid handler: its function and its accepted arguments.
pub(crate) struct HandlerModel<'a> {
    /// A free, non-generic, non-`const` `async fn`.
    pub func: &'a ItemFn,
    /// The attribute's arguments.
    pub args: &'a SubscribeArgs,
}

impl<'a> HandlerModel<'a> {
    /// Checks the function's signature, reporting every mistake into `cx`.
    pub(crate) fn from_ast(
        cx: &Ctxt,
        args: &'a SubscribeArgs,
        func: &'a ItemFn,
    ) -> Result<Self, Reported> {
        check_signature(cx, func);
        Ok(HandlerModel { func, args })
    }

    /// The types of the function's arguments, each an extractor.
    pub(crate) fn arg_types(&self) -> Vec<&'a Type> {
        self.func
            .sig
            .inputs
            .iter()
            .filter_map(|a| match a {
                FnArg::Typed(t) => Some(&*t.ty),
                FnArg::Receiver(_) => None,
            })
            .collect()
    }
}

/// Reports whatever keeps the function from being a handler.
fn check_signature(cx: &Ctxt, f: &ItemFn) {
    let sig = &f.sig;
    if sig.asyncness.is_none() {
        cx.error_at(
            sig.fn_token.span(),
            "`#[tchu::subscribe]` handlers must be `async fn`",
        );
    }
    if let Some(c) = &sig.constness {
        cx.error_at(c.span(), "`#[tchu::subscribe]` handlers cannot be `const`");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        cx.error_at(
            sig.generics.span(),
            concat!(
                "`#[tchu::subscribe]` handlers cannot be generic: ",
                "each argument type decides how the message is decoded"
            ),
        );
    }
    if let Some(v) = &sig.variadic {
        cx.error_at(v.span(), "`#[tchu::subscribe]` handlers cannot be variadic");
    }
    for arg in &sig.inputs {
        if let FnArg::Receiver(r) = arg {
            cx.error_at(
                r.span(),
                "`#[tchu::subscribe]` handlers are free functions, not methods",
            );
        }
    }
}
