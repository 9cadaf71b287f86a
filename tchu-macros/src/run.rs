//! `tchu::run!(...)`: builds the service from every linked handler and runs it.

use crate::{fallback, push_err};
use proc_macro2::TokenStream;
use quote::quote;
use syn::parse::{ParseStream, Parser};
use syn::{Expr, Ident, LitInt, LitStr, Token};

const EXPECTED: &str =
    "expected `queue = \"...\"`, `prefetch = N`, `state = <expr>` or `retry(...)`";

#[derive(Default)]
struct Args {
    queue: Option<LitStr>,
    prefetch: Option<LitInt>,
    state: Vec<Expr>,
    retry: Option<tchu_core::retry::RetryPolicy>,
}

fn parse(input: ParseStream<'_>) -> syn::Result<Args> {
    let mut a = Args::default();
    let mut err = None;
    while !input.is_empty() {
        let key: Ident = input
            .parse()
            .map_err(|e| syn::Error::new(e.span(), EXPECTED))?;
        if key == "retry" {
            let content;
            syn::parenthesized!(content in input);
            let r = crate::retry::parse(&content, key.span())?;
            if let Some(t) = r.on.first() {
                // The app-wide default applies to handlers of every error type.
                push_err(
                    &mut err,
                    syn::Error::new(
                        syn::spanned::Spanned::span(t),
                        "`on(...)` belongs on a handler's own `retry(...)`, not on the app-wide default",
                    ),
                );
            } else if a.retry.is_some() {
                push_err(
                    &mut err,
                    syn::Error::new(key.span(), "duplicate `retry(...)` in `tchu::run!`"),
                );
            }
            a.retry = Some(r.policy);
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
            continue;
        }
        input.parse::<Token![=]>()?;
        match key.to_string().as_str() {
            "queue" => {
                let lit: LitStr = input
                    .parse()
                    .map_err(|e| syn::Error::new(e.span(), "`queue` must be a string literal"))?;
                let v = lit.value();
                if a.queue.is_some() {
                    push_err(
                        &mut err,
                        syn::Error::new(key.span(), "duplicate `queue` argument in `tchu::run!`"),
                    );
                } else if v.is_empty()
                    || v.len() > 250
                    || v.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    push_err(
                        &mut err,
                        syn::Error::new(
                            lit.span(),
                            "queue name must be 1 to 250 bytes with no whitespace",
                        ),
                    );
                } else if v.starts_with("amq.") {
                    push_err(
                        &mut err,
                        syn::Error::new(
                            lit.span(),
                            "queue names starting with `amq.` are reserved by RabbitMQ",
                        ),
                    );
                } else {
                    a.queue = Some(lit);
                }
            }
            "prefetch" => {
                let lit: LitInt = input.parse().map_err(|e| {
                    syn::Error::new(e.span(), "`prefetch` must be an integer literal")
                })?;
                if a.prefetch.is_some() {
                    push_err(
                        &mut err,
                        syn::Error::new(
                            key.span(),
                            "duplicate `prefetch` argument in `tchu::run!`",
                        ),
                    );
                } else {
                    match lit.base10_parse::<u16>() {
                        Ok(n) if n >= 1 => a.prefetch = Some(lit),
                        _ => push_err(
                            &mut err,
                            syn::Error::new(lit.span(), "`prefetch` must be between 1 and 65535"),
                        ),
                    }
                }
            }
            "state" => a.state.push(input.parse()?),
            other => {
                return Err(syn::Error::new(
                    key.span(),
                    format!("unknown `tchu::run!` argument `{other}`; {EXPECTED}"),
                ));
            }
        }
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    match err {
        Some(e) => Err(e),
        None => Ok(a),
    }
}

pub(crate) fn expand(input: TokenStream) -> TokenStream {
    let a = match parse.parse2(input) {
        Ok(a) => a,
        Err(e) => return fallback(TokenStream::new(), e),
    };
    let queue = match &a.queue {
        Some(q) => quote! { ::std::option::Option::Some(#q) },
        None => quote! { ::std::option::Option::None },
    };
    let prefetch = match &a.prefetch {
        Some(p) => quote! { ::std::option::Option::Some(#p) },
        None => quote! { ::std::option::Option::None },
    };
    let state = &a.state;
    let retry = a.retry.as_ref().map(|p| {
        let p = crate::retry::policy_tokens(p);
        quote! { .default_retry(#p) }
    });
    // The library decides how the binary ends; the exit itself happens here, in the user's
    // `main`, never inside the library.
    quote! {
        match ::tchu::__private::run_app(
            ::tchu::Service::new(::tchu::__private::queue_name(#queue, ::std::env!("CARGO_CRATE_NAME")))
                .prefetch(::tchu::__private::prefetch_from_env(#prefetch))
                .version(::std::env!("CARGO_PKG_VERSION"))
                #(.with_state(#state))*
                #retry
        )
        .await
        {
            ::tchu::__private::AppExit::Ran(result) => result,
            ::tchu::__private::AppExit::Code(code) => ::std::process::exit(code),
        }
    }
}
