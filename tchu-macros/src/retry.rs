//! `retry(...)` options, shared by `#[tchu::subscribe]` and `tchu::run!`.
//!
//! `retry(max_attempts = 5, backoff = "100ms..10s", jitter, on(std::io::Error))`:
//! - `max_attempts` (alias `max`): total runs, the first included; at least 1;
//! - `backoff`: `"2s"` (fixed) or `"100ms..10s"` (exponential from base, doubling, capped);
//! - `jitter` or `jitter = bool`: full jitter;
//! - `on(Type, ...)`: only errors of these types (anywhere in the `source()` chain) retry;
//!   other errors go to the dead-letter queue at once. Without `on`, every error retries.

use crate::args::{self, Key, Spec};
use crate::ctxt::{Ctxt, Reported};
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::parse::ParseStream;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{LitBool, LitInt, LitStr, Token, Type};
use tchu_core::retry::{Backoff, RetryPolicy, parse_duration};

/// The options of one `retry(...)`: only accepted values, defaults for the rest.
pub(crate) struct Retry {
    /// Attempts, backoff and jitter.
    pub policy: RetryPolicy,
    /// The error types that retry; empty means every error does.
    pub on: Vec<Type>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            policy: RetryPolicy {
                max_attempts: 3,
                backoff: Backoff::Exponential {
                    base: std::time::Duration::from_secs(1),
                    cap: std::time::Duration::from_secs(600),
                },
                jitter: false,
            },
            on: Vec::new(),
        }
    }
}

/// The options `retry(...)` accepts.
const SPEC: Spec<Retry> = Spec {
    place: "`retry(...)`",
    noun: "option",
    keys: &[
        Key::value("max_attempts", "`max_attempts = N`", max_attempts).alias("max"),
        Key::value(
            "backoff",
            "`backoff = \"1s\"` or `backoff = \"100ms..10s\"`",
            backoff,
        ),
        Key::flag("jitter", "`jitter`", jitter),
        Key::list("on", "`on(ErrorType, ...)`", on),
    ],
    rejected: None,
};

/// Parses the inside of `retry(...)`, reporting every mistake; what is rejected keeps its
/// default.
pub(crate) fn parse(cx: &Ctxt, input: ParseStream<'_>) -> Retry {
    let mut retry = Retry::default();
    args::walk(cx, &SPEC, &mut retry, input);
    retry
}

/// `max_attempts = N`.
fn max_attempts(r: &mut Retry, cx: &Ctxt, _: Span, input: ParseStream<'_>) -> Result<(), Reported> {
    let lit: LitInt = input
        .parse()
        .map_err(|e| cx.error_at(e.span(), "`max_attempts` must be an integer"))?;
    match lit.base10_parse::<u32>() {
        Ok(0) => Err(cx.error_at(
            lit.span(),
            concat!(
                "`max_attempts` counts the first run too, so it must be at least 1 ",
                "(1 means no retry)"
            ),
        )),
        Ok(n) => {
            r.policy.max_attempts = n;
            Ok(())
        }
        Err(_) => Err(cx.error_at(lit.span(), "`max_attempts` must fit in a u32")),
    }
}

/// `backoff = "2s"` or `backoff = "100ms..10s"`.
fn backoff(r: &mut Retry, cx: &Ctxt, _: Span, input: ParseStream<'_>) -> Result<(), Reported> {
    let lit: LitStr = input.parse().map_err(|e| {
        cx.error_at(
            e.span(),
            "`backoff` must be a string like \"2s\" or \"100ms..10s\"",
        )
    })?;
    r.policy.backoff = parse_backoff(&lit).map_err(|e| cx.syn_error(e))?;
    Ok(())
}

/// `jitter` or `jitter = bool`.
fn jitter(r: &mut Retry, cx: &Ctxt, _: Span, input: ParseStream<'_>) -> Result<(), Reported> {
    r.policy.jitter = if input.is_empty() {
        true
    } else {
        let lit: LitBool = input
            .parse()
            .map_err(|e| cx.error_at(e.span(), "`jitter` must be `true` or `false`"))?;
        lit.value
    };
    Ok(())
}

/// `on(Type, ...)`.
fn on(r: &mut Retry, cx: &Ctxt, key: Span, input: ParseStream<'_>) -> Result<(), Reported> {
    let types =
        Punctuated::<Type, Token![,]>::parse_terminated(input).map_err(|e| cx.syn_error(e))?;
    if types.is_empty() {
        return Err(cx.error_at(key, "`on(...)` needs at least one error type"));
    }
    r.on = types.into_iter().collect();
    Ok(())
}

/// A backoff literal: one duration, or `base..cap`.
fn parse_backoff(lit: &LitStr) -> syn::Result<Backoff> {
    let v = lit.value();
    let invalid = |why: &dyn std::fmt::Display| {
        syn::Error::new(lit.span(), format!("invalid backoff {v:?}: {why}"))
    };
    let duration = |s: &str| parse_duration(s).map_err(|e| invalid(&e));
    match v.split_once("..") {
        None => Ok(Backoff::Fixed(duration(&v)?)),
        Some((base, cap)) => {
            let (base, cap) = (duration(base)?, duration(cap)?);
            if base.is_zero() {
                Err(invalid(
                    &"the base of an exponential backoff must be above zero",
                ))
            } else if cap < base {
                Err(invalid(&"the cap is below the base"))
            } else {
                Ok(Backoff::Exponential { base, cap })
            }
        }
    }
}

/// `RetryPolicy { .. }` as a constant expression.
pub(crate) fn policy_tokens(p: &RetryPolicy) -> TokenStream {
    let max = p.max_attempts;
    let jitter = p.jitter;
    let ms = |d: std::time::Duration| {
        let n = d.as_millis() as u64;
        quote! { ::std::time::Duration::from_millis(#n) }
    };
    let backoff = match p.backoff {
        Backoff::Fixed(d) => {
            let d = ms(d);
            quote! { ::tchu::__private::Backoff::Fixed(#d) }
        }
        Backoff::Exponential { base, cap } => {
            let (b, c) = (ms(base), ms(cap));
            quote! { ::tchu::__private::Backoff::Exponential { base: #b, cap: #c } }
        }
    };
    quote! {
        ::tchu::__private::RetryPolicy { max_attempts: #max, backoff: #backoff, jitter: #jitter }
    }
}

/// A function telling whether one error is one of `types`; the runtime asks it of every error
/// in the chain (`HandlerError::causes`, which also sees inside `tchu::Error::Handler`).
/// `is::<T>` needs `T: Error + 'static`: a type that is not an error fails right there, spanned
/// on the user's type.
pub(crate) fn classifier(types: &[Type]) -> TokenStream {
    if types.is_empty() {
        return quote! { ::std::option::Option::None };
    }
    let checks = types
        .iter()
        .map(|t| quote_spanned! {t.span()=> __tchu_e.is::<#t>() });
    quote! {
        ::std::option::Option::Some({
            fn __tchu_retry_on(__tchu_e: &(dyn ::std::error::Error + 'static)) -> bool {
                #(#checks)||*
            }
            __tchu_retry_on as fn(&(dyn ::std::error::Error + 'static)) -> bool
        })
    }
}
