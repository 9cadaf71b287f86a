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
    /// The state type of the `Saga<S>` argument, for a `saga(...)` handler.
    pub saga_state: Option<&'a Type>,
}

impl<'a> HandlerModel<'a> {
    /// Checks the function's signature, reporting every mistake into `cx`.
    pub(crate) fn from_ast(
        cx: &Ctxt,
        args: &'a SubscribeArgs,
        func: &'a ItemFn,
    ) -> Result<Self, Reported> {
        check_signature(cx, func, args.place());
        let saga_state = saga_state(cx, args, func);
        Ok(HandlerModel {
            func,
            args,
            saga_state,
        })
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

/// The `S` of an argument written `Saga<S>` (any path ending in `Saga`), which a `saga(...)`
/// handler must take and only it may.
fn saga_state<'a>(cx: &Ctxt, args: &SubscribeArgs, f: &'a ItemFn) -> Option<&'a Type> {
    let mut sagas = f.sig.inputs.iter().filter_map(|a| match a {
        FnArg::Typed(t) => saga_argument(&t.ty).map(|s| (s, t.ty.span())),
        FnArg::Receiver(_) => None,
    });
    let found = sagas.next();
    if let Some((_, span)) = sagas.next() {
        cx.error_at(
            span,
            "a handler takes one `Saga` argument: a step moves one saga on",
        );
        return None;
    }
    match (&args.saga, found) {
        (Some(_), Some((state, _))) => Some(state),
        (Some(saga), None) => {
            cx.error_at(
                saga.span,
                "`saga(...)` needs an argument of type `Saga<State>`: the saga state this handler moves on",
            );
            None
        }
        // A `saga(...)` written wrong was reported, and left out.
        (None, Some(_)) if cx.has_errors() => None,
        (None, Some((_, span))) => {
            cx.error_at(
                span,
                "a `Saga` argument needs `saga(key = \"...\")` in `#[tchu::subscribe]`: the field that names the saga",
            );
            None
        }
        (None, None) => None,
    }
}

fn saga_argument(ty: &Type) -> Option<&Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Saga" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(a) = &last.arguments else {
        return None;
    };
    match a.args.first()? {
        syn::GenericArgument::Type(t) if a.args.len() == 1 => Some(t),
        _ => None,
    }
}

/// Reports whatever keeps the function from being a handler of `place` (the attribute).
fn check_signature(cx: &Ctxt, f: &ItemFn, place: &str) {
    let sig = &f.sig;
    if sig.asyncness.is_none() {
        cx.error_at(
            sig.fn_token.span(),
            format!("{place} handlers must be `async fn`"),
        );
    }
    if let Some(c) = &sig.constness {
        cx.error_at(c.span(), format!("{place} handlers cannot be `const`"));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        cx.error_at(
            sig.generics.span(),
            format!(
                "{place} handlers cannot be generic: each argument type decides how the message is decoded"
            ),
        );
    }
    if let Some(v) = &sig.variadic {
        cx.error_at(v.span(), format!("{place} handlers cannot be variadic"));
    }
    for arg in &sig.inputs {
        if let FnArg::Receiver(r) = arg {
            cx.error_at(
                r.span(),
                format!("{place} handlers are free functions, not methods"),
            );
        }
    }
}
