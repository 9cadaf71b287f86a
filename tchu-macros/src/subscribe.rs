//! `#[tchu::subscribe]`: registers an async fn as a handler through `inventory`.
//!
//! Forms: `#[tchu::subscribe]` (topic from the event argument), `#[tchu::subscribe("user.*")]`
//! (explicit pattern; with a typed event it must be able to match the event's topic), and
//! `name = "..."` to set the handler's unique name. Argument types are extractors checked by
//! rustc through `FromMessage`; the return type through `IntoHandlerResult`; the pattern rules
//! that need the event's topic are `const` assertions, so they are compile errors too.

use crate::{fallback, push_err};
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::parse::{ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, LitStr, ReturnType, Token};

const EXPECTED: &str = "expected a pattern string like `\"user.*\"`, `pattern = \"...\"`, `name = \"...\"`, `retry(...)` or `ack = \"early\"`";

#[derive(Default)]
struct Args {
    pattern: Option<(LitStr, String)>,
    name: Option<LitStr>,
    retry: Option<crate::retry::Retry>,
    ack_early: Option<bool>,
}

fn parse_args(input: ParseStream<'_>) -> syn::Result<Args> {
    let mut args = Args::default();
    let mut err = None;
    while !input.is_empty() {
        if input.peek(LitStr) {
            let lit: LitStr = input.parse()?;
            set_pattern(&mut args, &mut err, lit, None);
        } else {
            let key: Ident = input
                .parse()
                .map_err(|e| syn::Error::new(e.span(), EXPECTED))?;
            match key.to_string().as_str() {
                "pattern" | "name" => {
                    input.parse::<Token![=]>()?;
                    let lit: LitStr = input.parse().map_err(|e| {
                        syn::Error::new(e.span(), format!("`{key}` must be a string literal"))
                    })?;
                    if key == "pattern" {
                        set_pattern(&mut args, &mut err, lit, Some(&key));
                    } else if args.name.is_some() {
                        push_err(
                            &mut err,
                            syn::Error::new(
                                key.span(),
                                "duplicate `name` argument in `#[tchu::subscribe]`",
                            ),
                        );
                    } else if lit.value().is_empty() {
                        push_err(
                            &mut err,
                            syn::Error::new(lit.span(), "handler `name` must not be empty"),
                        );
                    } else {
                        args.name = Some(lit);
                    }
                }
                "retry" => {
                    let content;
                    syn::parenthesized!(content in input);
                    match crate::retry::parse(&content, key.span()) {
                        Ok(_) if args.retry.is_some() => push_err(
                            &mut err,
                            syn::Error::new(
                                key.span(),
                                "duplicate `retry(...)` in `#[tchu::subscribe]`",
                            ),
                        ),
                        Ok(r) => args.retry = Some(r),
                        Err(e) => push_err(&mut err, e),
                    }
                }
                "ack" => {
                    input.parse::<Token![=]>()?;
                    let lit: LitStr = input.parse().map_err(|e| {
                        syn::Error::new(e.span(), "`ack` must be \"late\" or \"early\"")
                    })?;
                    let early = match lit.value().as_str() {
                        "late" => false,
                        "early" => true,
                        _ => {
                            push_err(
                                &mut err,
                                syn::Error::new(
                                    lit.span(),
                                    "`ack` must be \"late\" (after the handler, the default) or \"early\" (on receipt)",
                                ),
                            );
                            false
                        }
                    };
                    if args.ack_early.is_some() {
                        push_err(
                            &mut err,
                            syn::Error::new(key.span(), "duplicate `ack` in `#[tchu::subscribe]`"),
                        );
                    }
                    args.ack_early = Some(early);
                }
                other => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("unknown `#[tchu::subscribe]` argument `{other}`; {EXPECTED}"),
                    ));
                }
            }
        }
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    match err {
        Some(e) => Err(e),
        None => Ok(args),
    }
}

fn set_pattern(args: &mut Args, err: &mut Option<syn::Error>, lit: LitStr, key: Option<&Ident>) {
    if args.pattern.is_some() {
        let span = key.map_or(lit.span(), Ident::span);
        push_err(
            err,
            syn::Error::new(span, "duplicate topic pattern in `#[tchu::subscribe]`"),
        );
        return;
    }
    match crate::topic::pattern(&lit) {
        Ok(p) => args.pattern = Some((lit, p)),
        Err(e) => push_err(err, e),
    }
}

fn check_signature(f: &ItemFn) -> syn::Result<()> {
    let sig = &f.sig;
    let mut err = None;
    if sig.asyncness.is_none() {
        push_err(
            &mut err,
            syn::Error::new(
                sig.fn_token.span(),
                "`#[tchu::subscribe]` handlers must be `async fn`",
            ),
        );
    }
    if let Some(c) = &sig.constness {
        push_err(
            &mut err,
            syn::Error::new(c.span(), "`#[tchu::subscribe]` handlers cannot be `const`"),
        );
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        push_err(
            &mut err,
            syn::Error::new(
                sig.generics.span(),
                "`#[tchu::subscribe]` handlers cannot be generic: each argument type decides how the message is decoded",
            ),
        );
    }
    if let Some(v) = &sig.variadic {
        push_err(
            &mut err,
            syn::Error::new(v.span(), "`#[tchu::subscribe]` handlers cannot be variadic"),
        );
    }
    for arg in &sig.inputs {
        if let FnArg::Receiver(r) = arg {
            push_err(
                &mut err,
                syn::Error::new(
                    r.span(),
                    "`#[tchu::subscribe]` handlers are free functions, not methods",
                ),
            );
        }
    }
    match err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let f: ItemFn = match syn::parse2(input.clone()) {
        Ok(f) => f,
        Err(_) => {
            return fallback(
                input,
                syn::Error::new(
                    Span::call_site(),
                    "`#[tchu::subscribe]` applies to `async fn` items",
                ),
            );
        }
    };
    let mut err = None;
    let args = match parse_args.parse2(args) {
        Ok(a) => a,
        Err(e) => {
            push_err(&mut err, e);
            Args::default()
        }
    };
    if let Err(e) = check_signature(&f) {
        push_err(&mut err, e);
    }
    if let Some(e) = err {
        return fallback(input, e);
    }

    let ident = &f.sig.ident;
    let types: Vec<&syn::Type> = f
        .sig
        .inputs
        .iter()
        .filter_map(|a| match a {
            FnArg::Typed(t) => Some(&*t.ty),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let vars: Vec<Ident> = (0..types.len())
        .map(|i| format_ident!("__tchu_arg{}", i))
        .collect();
    let extracts = types.iter().zip(&vars).map(|(ty, v)| {
        quote_spanned! {ty.span()=>
            let #v = <#ty as ::tchu::__private::FromMessage>::from_message(&__tchu_incoming)?;
        }
    });
    let checks = types.iter().map(|ty| {
        quote_spanned! {ty.span()=> <#ty as ::tchu::__private::FromMessage>::check(__tchu_resources)?; }
    });
    let topics = types
        .iter()
        .map(|ty| quote_spanned! {ty.span()=> <#ty as ::tchu::__private::FromMessage>::TOPIC })
        .collect::<Vec<_>>();
    let events = types
        .iter()
        .map(|ty| quote_spanned! {ty.span()=> <#ty as ::tchu::__private::FromMessage>::EVENT });
    // The answer the handler owes: `NoReply`, or `Reply<R, E>` when one argument is a request
    // event. rustc then checks the return type against it, spanned on the user's signature.
    let spec = types.iter().fold(quote! { ::tchu::__private::NoReply }, |acc, ty| {
        quote_spanned! {ty.span()=>
            <#acc as ::tchu::__private::Combine<<#ty as ::tchu::__private::FromMessage>::Rpc>>::Out
        }
    });
    let call = match &f.sig.output {
        ReturnType::Default => quote_spanned! {ident.span()=>
            <() as ::tchu::__private::IntoHandlerResult<__TchuSpec>>::into_handler_result(#ident(#(#vars),*).await)
        },
        ReturnType::Type(_, ty) => quote_spanned! {ty.span()=>
            <#ty as ::tchu::__private::IntoHandlerResult<__TchuSpec>>::into_handler_result(#ident(#(#vars),*).await)
        },
    };
    let explicit = match &args.pattern {
        Some((lit, p)) => {
            let l = LitStr::new(p, lit.span());
            quote! { ::std::option::Option::Some(#l) }
        }
        None => quote! { ::std::option::Option::None },
    };
    // A pattern that cannot match the event's topic is reported on the pattern literal.
    let pattern_span = args
        .pattern
        .as_ref()
        .map_or_else(Span::call_site, |(lit, _)| lit.span());
    let pattern_const = quote_spanned! {pattern_span=>
        const __TCHU_PATTERN: &str = ::tchu::__private::resolve_pattern(#explicit, &[#(#topics),*]);
    };
    let retry = match &args.retry {
        Some(r) => {
            let p = crate::retry::policy_tokens(&r.policy);
            quote! { ::std::option::Option::Some(#p) }
        }
        None => quote! { ::std::option::Option::None },
    };
    let retry_on = crate::retry::classifier(args.retry.as_ref().map_or(&[][..], |r| &r.on[..]));
    let ack = if args.ack_early == Some(true) {
        quote! { ::tchu::__private::AckPolicy::Early }
    } else {
        quote! { ::tchu::__private::AckPolicy::Late }
    };
    let name = match &args.name {
        Some(n) => quote! { #n },
        None => {
            let s = ident.to_string();
            quote! { ::std::concat!(::std::module_path!(), "::", #s) }
        }
    };
    quote! {
        #f

        #[doc(hidden)]
        #[allow(non_upper_case_globals, clippy::all)]
        const _: () = {
            type __TchuSpec = #spec;
            fn __tchu_call(
                __tchu_incoming: ::std::sync::Arc<::tchu::__private::Incoming>,
            ) -> ::tchu::__private::HandlerFuture {
                ::std::boxed::Box::pin(async move {
                    #(#extracts)*
                    #call
                })
            }
            fn __tchu_check(
                __tchu_resources: &::tchu::__private::Resources,
            ) -> ::std::result::Result<(), ::std::string::String> {
                #(#checks)*
                ::std::result::Result::Ok(())
            }
            #pattern_const
            const __TCHU_EVENT: ::std::option::Option<&str> = ::tchu::__private::first_some(&[#(#events),*]);
            ::tchu::__private::inventory::submit! {
                ::tchu::__private::HandlerDescriptor {
                    name: #name,
                    module: ::std::module_path!(),
                    pattern: __TCHU_PATTERN,
                    event: __TCHU_EVENT,
                    event_topic: ::tchu::__private::first_some(&[#(#topics),*]),
                    file: ::std::file!(),
                    line: ::std::line!(),
                    call: __tchu_call,
                    check: __tchu_check,
                    responder: <__TchuSpec as ::tchu::__private::RpcSpec>::RESPONDER,
                    retry: #retry,
                    retry_on: #retry_on,
                    ack: #ack,
                }
            }
        };
    }
}
