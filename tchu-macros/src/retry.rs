//! `retry(...)` options, shared by `#[tchu::subscribe]` and `tchu::run!`.
//!
//! `retry(max_attempts = 5, backoff = "100ms..10s", jitter, on(std::io::Error))`:
//! - `max_attempts` (alias `max`): total runs, the first included; at least 1;
//! - `backoff`: `"2s"` (fixed) or `"100ms..10s"` (exponential from base, doubling, capped);
//! - `jitter` or `jitter = bool`: full jitter;
//! - `on(Type, ...)`: only errors of these types (anywhere in the `source()` chain) retry;
//!   other errors go to the dead-letter queue at once. Without `on`, every error retries.

use crate::push_err;
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::parse::ParseStream;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Ident, LitBool, LitInt, LitStr, Token, Type};
use tchu_core::retry::{Backoff, RetryPolicy, parse_duration};

const EXPECTED: &str = "expected `max_attempts = N`, `backoff = \"1s\"` or `backoff = \"100ms..10s\"`, `jitter` or `on(ErrorType, ...)`";

pub(crate) struct Retry {
    pub policy: RetryPolicy,
    pub on: Vec<Type>,
}

/// Parses the inside of `retry(...)`.
pub(crate) fn parse(input: ParseStream<'_>, span: Span) -> syn::Result<Retry> {
    let mut policy = RetryPolicy {
        max_attempts: 3,
        backoff: Backoff::Exponential {
            base: std::time::Duration::from_secs(1),
            cap: std::time::Duration::from_secs(600),
        },
        jitter: false,
    };
    let (mut seen_max, mut seen_backoff, mut seen_jitter, mut on) =
        (false, false, false, None::<Vec<Type>>);
    let mut err = None;
    while !input.is_empty() {
        let key: Ident = input
            .parse()
            .map_err(|e| syn::Error::new(e.span(), EXPECTED))?;
        let dup = |seen: &mut bool, err: &mut Option<syn::Error>| {
            if *seen {
                push_err(
                    err,
                    syn::Error::new(key.span(), format!("duplicate `{key}` in `retry(...)`")),
                );
            }
            *seen = true;
        };
        match key.to_string().as_str() {
            "max_attempts" | "max" => {
                input.parse::<Token![=]>()?;
                let lit: LitInt = input
                    .parse()
                    .map_err(|e| syn::Error::new(e.span(), "`max_attempts` must be an integer"))?;
                dup(&mut seen_max, &mut err);
                match lit.base10_parse::<u32>() {
                    Ok(0) => push_err(
                        &mut err,
                        syn::Error::new(
                            lit.span(),
                            "`max_attempts` counts the first run too, so it must be at least 1 (1 means no retry)",
                        ),
                    ),
                    Ok(n) => policy.max_attempts = n,
                    Err(_) => push_err(
                        &mut err,
                        syn::Error::new(lit.span(), "`max_attempts` must fit in a u32"),
                    ),
                }
            }
            "backoff" => {
                input.parse::<Token![=]>()?;
                let lit: LitStr = input.parse().map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        "`backoff` must be a string like \"2s\" or \"100ms..10s\"",
                    )
                })?;
                dup(&mut seen_backoff, &mut err);
                match backoff(&lit) {
                    Ok(b) => policy.backoff = b,
                    Err(e) => push_err(&mut err, e),
                }
            }
            "jitter" => {
                dup(&mut seen_jitter, &mut err);
                policy.jitter = if input.peek(Token![=]) {
                    input.parse::<Token![=]>()?;
                    input.parse::<LitBool>()?.value
                } else {
                    true
                };
            }
            "on" => {
                let content;
                syn::parenthesized!(content in input);
                let types: Punctuated<Type, Token![,]> =
                    content.parse_terminated(Type::parse, Token![,])?;
                if on.is_some() {
                    push_err(
                        &mut err,
                        syn::Error::new(key.span(), "duplicate `on` in `retry(...)`"),
                    );
                } else if types.is_empty() {
                    push_err(
                        &mut err,
                        syn::Error::new(key.span(), "`on(...)` needs at least one error type"),
                    );
                } else {
                    on = Some(types.into_iter().collect());
                }
            }
            other => {
                return Err(syn::Error::new(
                    key.span(),
                    format!("unknown `retry` option `{other}`; {EXPECTED}"),
                ));
            }
        }
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    let _ = span;
    match err {
        Some(e) => Err(e),
        None => Ok(Retry {
            policy,
            on: on.unwrap_or_default(),
        }),
    }
}

use syn::parse::Parse;

fn backoff(lit: &LitStr) -> syn::Result<Backoff> {
    let v = lit.value();
    let d = |s: &str| {
        parse_duration(s)
            .map_err(|e| syn::Error::new(lit.span(), format!("invalid backoff {v:?}: {e}")))
    };
    match v.split_once("..") {
        None => Ok(Backoff::Fixed(d(&v)?)),
        Some((base, cap)) => {
            let (base, cap) = (d(base)?, d(cap)?);
            if base.is_zero() {
                return Err(syn::Error::new(
                    lit.span(),
                    format!(
                        "invalid backoff {v:?}: the base of an exponential backoff must be above zero"
                    ),
                ));
            }
            if cap < base {
                return Err(syn::Error::new(
                    lit.span(),
                    format!("invalid backoff {v:?}: the cap is below the base"),
                ));
            }
            Ok(Backoff::Exponential { base, cap })
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
