//! Expansion of a valid handler. Cannot fail: what rustc checks (extractor types, return
//! type, the pattern against the event's topic) is emitted as code spanned on the user's tokens.

use super::model::HandlerModel;
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, LitStr, ReturnType, Type};

/// The function as written, plus its registration in a `const _` block.
pub(crate) fn handler(m: &HandlerModel<'_>) -> TokenStream {
    let func = m.func;
    let types = m.arg_types();
    let spec = reply_spec(&types);
    let call = call_fn(m, &types);
    let check = check_fn(&types);
    let topics = types
        .iter()
        .map(|ty| quote_spanned! {ty.span()=> <#ty as ::tchu::__private::FromMessage>::TOPIC })
        .collect::<Vec<_>>();
    let events = types
        .iter()
        .map(|ty| quote_spanned! {ty.span()=> <#ty as ::tchu::__private::FromMessage>::EVENT });
    let pattern = pattern_const(m, &topics);
    let descriptor = descriptor(m, &topics);
    let no_event = schedule_takes_no_event(m);
    quote! {
        #func

        #[doc(hidden)]
        #[allow(non_upper_case_globals, clippy::all)]
        const _: () = {
            type __TchuSpec = #spec;
            #call
            #check
            #pattern
            const __TCHU_EVENT: ::std::option::Option<&str> =
                ::tchu::__private::first_some(&[#(#events),*]);
            #no_event
            ::tchu::__private::inventory::submit! { #descriptor }
        };
    }
}

/// The answer the handler owes: `NoReply`, or `Reply<R, E>` when one argument is a request
/// event. rustc then checks the return type against it, spanned on the user's signature.
fn reply_spec(types: &[&Type]) -> TokenStream {
    types
        .iter()
        .fold(quote! { ::tchu::__private::NoReply }, |acc, ty| {
            quote_spanned! {ty.span()=>
                <#acc as ::tchu::__private::Combine<
                    <#ty as ::tchu::__private::FromMessage>::Rpc
                >>::Out
            }
        })
}

/// `__tchu_call`: extracts every argument, calls the handler, converts what it returns.
fn call_fn(m: &HandlerModel<'_>, types: &[&Type]) -> TokenStream {
    let ident = &m.func.sig.ident;
    let vars: Vec<Ident> = (0..types.len())
        .map(|i| format_ident!("__tchu_arg{}", i))
        .collect();
    let extracts = types.iter().zip(&vars).map(|(ty, v)| {
        quote_spanned! {ty.span()=>
            let #v = <#ty as ::tchu::__private::FromMessage>::from_message(&__tchu_incoming)?;
        }
    });
    let call = match &m.func.sig.output {
        ReturnType::Default => quote_spanned! {ident.span()=>
            <() as ::tchu::__private::IntoHandlerResult<__TchuSpec>>::into_handler_result(
                #ident(#(#vars),*).await
            )
        },
        ReturnType::Type(_, ty) => quote_spanned! {ty.span()=>
            <#ty as ::tchu::__private::IntoHandlerResult<__TchuSpec>>::into_handler_result(
                #ident(#(#vars),*).await
            )
        },
    };
    quote! {
        fn __tchu_call(
            __tchu_incoming: ::std::sync::Arc<::tchu::__private::Incoming>,
        ) -> ::tchu::__private::HandlerFuture {
            ::std::boxed::Box::pin(async move {
                #(#extracts)*
                #call
            })
        }
    }
}

/// `__tchu_check`: asks every argument, at start-up, whether it can ever be produced.
fn check_fn(types: &[&Type]) -> TokenStream {
    let checks = types.iter().map(|ty| {
        quote_spanned! {ty.span()=>
            <#ty as ::tchu::__private::FromMessage>::check(__tchu_resources)?;
        }
    });
    quote! {
        fn __tchu_check(
            __tchu_resources: &::tchu::__private::Resources,
        ) -> ::std::result::Result<(), ::std::string::String> {
            #(#checks)*
            ::std::result::Result::Ok(())
        }
    }
}

/// `__TCHU_PATTERN`, resolved at compile time from the explicit pattern and the event's topic;
/// a schedule's topic as it is (an event argument is its own error).
fn pattern_const(m: &HandlerModel<'_>, topics: &[TokenStream]) -> TokenStream {
    if let (Some(_), Some(topic)) = (&m.args.schedule, &m.args.pattern) {
        return quote! { const __TCHU_PATTERN: &str = #topic; };
    }
    let explicit = match &m.args.pattern {
        Some(lit) => quote! { ::std::option::Option::Some(#lit) },
        None => quote! { ::std::option::Option::None },
    };
    // A pattern that cannot match the event's topic is reported on the pattern literal.
    let span = m
        .args
        .pattern
        .as_ref()
        .map_or_else(Span::call_site, LitStr::span);
    quote_spanned! {span=>
        const __TCHU_PATTERN: &str =
            ::tchu::__private::resolve_pattern(#explicit, &[#(#topics),*]);
    }
}

/// The `HandlerDescriptor` literal.
fn descriptor(m: &HandlerModel<'_>, topics: &[TokenStream]) -> TokenStream {
    let retry = match &m.args.retry {
        Some(r) => {
            let p = crate::retry::policy_tokens(&r.policy);
            quote! { ::std::option::Option::Some(#p) }
        }
        None => quote! { ::std::option::Option::None },
    };
    let retry_on = crate::retry::classifier(m.args.retry.as_ref().map_or(&[][..], |r| &r.on[..]));
    let ack = if m.args.ack_early {
        quote! { ::tchu::__private::AckPolicy::Early }
    } else {
        quote! { ::tchu::__private::AckPolicy::Late }
    };
    let dedup = match &m.args.dedup {
        Some(super::args::Dedup::MessageId(_)) => quote! {
            ::std::option::Option::Some(::tchu::__private::DedupKey::MessageId)
        },
        Some(super::args::Dedup::Field(lit)) => quote! {
            ::std::option::Option::Some(::tchu::__private::DedupKey::Field(
                ::std::borrow::Cow::Borrowed(#lit),
            ))
        },
        None => quote! { ::std::option::Option::None },
    };
    let ordered = match &m.args.ordered {
        Some((lit, _)) => quote! { ::std::option::Option::Some(#lit) },
        None => quote! { ::std::option::Option::None },
    };
    let saga = saga_spec(m);
    let schedule = schedule_spec(m);
    let metadata = m.args.metadata.iter().map(|(n, v)| quote! { (#n, #v) });
    let name = match &m.args.name {
        Some(n) => quote! { #n },
        None => {
            let s = m.func.sig.ident.to_string();
            quote! { ::std::concat!(::std::module_path!(), "::", #s) }
        }
    };
    quote! {
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
            dedup: #dedup,
            ordered: #ordered,
            saga: #saga,
            schedule: #schedule,
            metadata: &[#(#metadata),*],
        }
    }
}

/// The descriptor's `saga`: the spec, its name and completion taken from the state type.
fn saga_spec(m: &HandlerModel<'_>) -> TokenStream {
    let (Some(saga), Some(state)) = (&m.args.saga, m.saga_state) else {
        return quote! { ::std::option::Option::None };
    };
    let key = &saga.key;
    let start = saga.start;
    let unknown = if saga.ignore_unknown {
        quote! { ::tchu::__private::UnknownSaga::Ignore }
    } else {
        quote! { ::tchu::__private::UnknownSaga::Park }
    };
    quote_spanned! {state.span()=>
        ::std::option::Option::Some(::tchu::__private::SagaSpec {
            name: <#state as ::tchu::__private::SagaState>::NAME,
            key: #key,
            start: #start,
            unknown: #unknown,
            keep_completed: <#state as ::tchu::__private::SagaState>::KEEP_COMPLETED,
        })
    }
}

/// The descriptor's `schedule`: what `#[tchu::schedule(...)]` said.
fn schedule_spec(m: &HandlerModel<'_>) -> TokenStream {
    let Some(s) = &m.args.schedule else {
        return quote! { ::std::option::Option::None };
    };
    let name = &s.name;
    let cron = s.cron.as_ref().map(LitStr::value).unwrap_or_default();
    let tz =
        s.tz.as_ref()
            .map_or_else(|| "UTC".to_owned(), LitStr::value);
    let missed = if s.skip_missed {
        quote! { ::tchu::__private::Missed::Skip }
    } else {
        quote! { ::tchu::__private::Missed::RunOnce }
    };
    quote! {
        ::std::option::Option::Some(::tchu::__private::ScheduleSpec {
            name: ::std::borrow::Cow::Borrowed(#name),
            cron: ::std::borrow::Cow::Borrowed(#cron),
            tz: ::std::borrow::Cow::Borrowed(#tz),
            missed: #missed,
        })
    }
}

/// A schedule's handler takes no event: its messages are the schedule's occurrences. Checked
/// by rustc, which alone knows which argument types are events, on each argument's type.
fn schedule_takes_no_event(m: &HandlerModel<'_>) -> TokenStream {
    if m.args.schedule.is_none() {
        return TokenStream::new();
    }
    let checks = m.arg_types().into_iter().map(|ty| {
        quote_spanned! {ty.span()=>
            const _: () = ::std::assert!(
                <#ty as ::tchu::__private::FromMessage>::TOPIC.is_none(),
                "a `#[tchu::schedule]` handler takes no event argument: it takes `tchu::Occurrence` and other extractors"
            );
        }
    });
    quote! { #(#checks)* }
}
