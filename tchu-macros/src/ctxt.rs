//! The error context every macro reports into, modelled on serde_derive's `internals::Ctxt`.
//!
//! Parsing and validation never stop at the first mistake: each error goes into the context
//! and the work goes on, so one build shows every mistake of an attribute. The context must be
//! consumed by [`Ctxt::check`] or [`Ctxt::finish`]; dropping it unchecked is a bug in the macro
//! and panics, as serde's does, so an error cannot be lost on some forgotten path.

use proc_macro2::Span;
use quote::ToTokens;
use std::cell::RefCell;
use std::fmt::Display;
use std::thread;

/// Collects the errors of one macro invocation.
///
/// Shared by reference: the errors sit in a `RefCell`, so the argument handlers and model
/// builders that report into it need no `&mut`.
pub(crate) struct Ctxt {
    /// Every error reported so far, in order.
    errors: RefCell<Vec<syn::Error>>,
    /// Set by `check`: the drop check tells a consumed context from a forgotten one.
    checked: bool,
}

/// Proof that an error was reported, holding a copy of it.
///
/// A model builder that cannot build its model returns this instead of the model, so
/// [`Ctxt::finish`] always has an error to give back when there is no model: no "cannot
/// happen" branch between validation and expansion.
#[derive(Clone)]
pub(crate) struct Reported(syn::Error);

impl Ctxt {
    /// A context with no errors yet; it still panics if dropped unchecked.
    pub(crate) fn new() -> Self {
        Ctxt {
            errors: RefCell::new(Vec::new()),
            checked: false,
        }
    }

    /// Reports an error spanned on the tokens of `obj` (from its first to its last token).
    pub(crate) fn error_spanned_by<A: ToTokens, T: Display>(&self, obj: A, msg: T) -> Reported {
        self.syn_error(syn::Error::new_spanned(obj.into_token_stream(), msg))
    }

    /// Reports an error at one span: a literal, a keyword, or the macro call for "missing" errors.
    pub(crate) fn error_at<T: Display>(&self, span: Span, msg: T) -> Reported {
        self.syn_error(syn::Error::new(span, msg))
    }

    /// Reports one of syn's parse errors, or an error built elsewhere.
    pub(crate) fn syn_error(&self, err: syn::Error) -> Reported {
        let copy = Reported(err.clone());
        self.errors.borrow_mut().push(err);
        copy
    }

    /// Whether an error was reported already: a later check that would only repeat it in other
    /// words stays silent.
    pub(crate) fn has_errors(&self) -> bool {
        !self.errors.borrow().is_empty()
    }

    /// Consumes the context: `Ok` when nothing was reported, otherwise every error combined.
    pub(crate) fn check(mut self) -> syn::Result<()> {
        self.checked = true;
        let mut errors = self.errors.take().into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for rest in errors {
            combined.combine(rest);
        }
        Err(combined)
    }

    /// Consumes the context and a model built in it: the model only when nothing at all was
    /// reported, so expansion never sees a model that was built around a mistake.
    pub(crate) fn finish<M>(self, model: Result<M, Reported>) -> syn::Result<M> {
        match (model, self.check()) {
            (Ok(model), Ok(())) => Ok(model),
            (_, Err(all)) => Err(all),
            // Only with a `Reported` from another context (each one is pushed where it is
            // made); its own error is then still the right answer, and no panic is needed.
            (Err(Reported(err)), Ok(())) => Err(err),
        }
    }
}

impl Drop for Ctxt {
    fn drop(&mut self) {
        if !thread::panicking() && !self.checked {
            panic!("tchu-macros: error context dropped without being checked");
        }
    }
}
