//! One walker for every argument list: `#[tchu::event(...)]`, `#[tchu::subscribe(...)]`,
//! `retry(...)` and `tchu::run!(...)`.
//!
//! Each macro describes its keys in a [`Spec`]: the name, the form (`key = value`, `key(...)`
//! or a flag), a hint for the list of accepted keys, and a handler that parses and checks the
//! value into the macro's own argument struct. The walker reports unknown and duplicate keys
//! the same way for every macro, and after a bad argument it skips to the next comma and goes
//! on, so every mistake of the list is reported in one build.

use crate::ctxt::{Ctxt, Reported};
use proc_macro2::{Spacing, Span, TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::parse::discouraged::{AnyDelimiter, Speculative};
use syn::parse::{ParseStream, Parser};
use syn::{Ident, LitStr, Token};

/// Parses and checks one argument's value into the argument struct `S`.
///
/// Gets the span of the key (for errors about the argument as a whole) and the stream at the
/// value: after `=`, inside the parentheses, or empty for a bare flag. An `Err` means the
/// argument was rejected, its error already reported; the walker then skips the rest of it.
pub(crate) type Handler<S> = fn(&mut S, &Ctxt, Span, ParseStream<'_>) -> Result<(), Reported>;

/// How an argument is written.
#[derive(Clone, Copy)]
enum Form {
    /// `key = value`.
    Value,
    /// `key(...)`.
    List,
    /// `key` alone, or `key = value`.
    Flag,
    /// `key` alone, or `key(...)`.
    FlagOrList,
}

/// One accepted key of an argument list.
pub(crate) struct Key<S: 'static> {
    /// The name the macro knows the key by.
    name: &'static str,
    /// Another spelling of the same key (`max` for `max_attempts`).
    alias: Option<&'static str>,
    /// How the argument is written.
    form: Form,
    /// How the key reads in the list of accepted keys, like "`topic = \"...\"`".
    hint: &'static str,
    /// Whether the key may come more than once (`state = ...`).
    repeatable: bool,
    /// Whether a bare string literal stands for `key = "..."`.
    positional: bool,
    /// Parses and checks the value.
    handler: Handler<S>,
}

impl<S> Key<S> {
    /// A `key = value` argument.
    pub(crate) const fn value(name: &'static str, hint: &'static str, h: Handler<S>) -> Self {
        Self::new(name, Form::Value, hint, h)
    }

    /// A `key(...)` argument.
    pub(crate) const fn list(name: &'static str, hint: &'static str, h: Handler<S>) -> Self {
        Self::new(name, Form::List, hint, h)
    }

    /// A `key` or `key = value` argument; the handler gets an empty stream for the bare flag.
    pub(crate) const fn flag(name: &'static str, hint: &'static str, h: Handler<S>) -> Self {
        Self::new(name, Form::Flag, hint, h)
    }

    /// A `key` or `key(...)` argument; the handler gets an empty stream for the bare key.
    pub(crate) const fn flag_or_list(
        name: &'static str,
        hint: &'static str,
        h: Handler<S>,
    ) -> Self {
        Self::new(name, Form::FlagOrList, hint, h)
    }

    /// The shared constructor.
    const fn new(name: &'static str, form: Form, hint: &'static str, h: Handler<S>) -> Self {
        Key {
            name,
            alias: None,
            form,
            hint,
            repeatable: false,
            positional: false,
            handler: h,
        }
    }

    /// Accepts `alias` as another spelling of this key.
    pub(crate) const fn alias(mut self, alias: &'static str) -> Self {
        self.alias = Some(alias);
        self
    }

    /// Lets the key come more than once.
    pub(crate) const fn repeatable(mut self) -> Self {
        self.repeatable = true;
        self
    }

    /// Lets a bare string literal stand for `key = "..."`.
    pub(crate) const fn positional(mut self) -> Self {
        self.positional = true;
        self
    }

    /// Whether the user's spelling names this key.
    fn is(&self, written: &str) -> bool {
        self.name == written || self.alias == Some(written)
    }
}

/// The accepted keys of one argument list and how its errors name it.
pub(crate) struct Spec<S: 'static> {
    /// The list's owner as errors name it, like "`#[tchu::event]`".
    pub(crate) place: &'static str,
    /// What one entry is called: "argument" or "option".
    pub(crate) noun: &'static str,
    /// Every accepted key, in the order the list of accepted keys gives them.
    pub(crate) keys: &'static [Key<S>],
    /// Told of each argument whose key was known but whose form or value was rejected, so
    /// that a required argument written wrong is not also reported missing.
    pub(crate) rejected: Option<fn(&mut S, &'static str, Reported)>,
}

impl<S> Spec<S> {
    /// "expected `a`, `b` or `c`", from the keys' hints.
    fn expected(&self) -> String {
        let hints: Vec<&str> = self.keys.iter().map(|k| k.hint).collect();
        match hints.split_last() {
            Some((last, rest)) if !rest.is_empty() => {
                format!("expected {} or {last}", rest.join(", "))
            }
            _ => format!("expected {}", hints.join("")),
        }
    }
}

/// Walks a whole argument list given as tokens (the attribute's arguments, the macro's input).
pub(crate) fn parse<S>(cx: &Ctxt, spec: &Spec<S>, state: &mut S, tokens: TokenStream) {
    let walker = |input: ParseStream<'_>| {
        walk(cx, spec, state, input);
        Ok(())
    };
    // The walker consumes every token, so this only fails on what syn itself rejects.
    if let Err(e) = walker.parse2(tokens) {
        cx.syn_error(e);
    }
}

/// Walks an argument list to its end, reporting every mistake into `cx`.
pub(crate) fn walk<S>(cx: &Ctxt, spec: &Spec<S>, state: &mut S, input: ParseStream<'_>) {
    let mut seen: Vec<&'static str> = Vec::new();
    while !input.is_empty() {
        let entry = entry(cx, spec, state, &mut seen, input).and_then(|()| {
            if input.is_empty() || input.peek(Token![,]) {
                Ok(())
            } else {
                Err(cx.syn_error(input.error("expected `,`")))
            }
        });
        if entry.is_err() {
            skip_to_comma(cx, input);
        }
        if let Err(e) = input.parse::<Option<Token![,]>>() {
            cx.syn_error(e);
        }
    }
}

/// Parses one argument and hands its value to its key's handler.
fn entry<S>(
    cx: &Ctxt,
    spec: &Spec<S>,
    state: &mut S,
    seen: &mut Vec<&'static str>,
    input: ParseStream<'_>,
) -> Result<(), Reported> {
    let found = key(cx, spec, input)?;
    let key = found.key;
    if !key.repeatable && seen.contains(&key.name) {
        let (written, place, noun) = (&found.written, spec.place, spec.noun);
        return Err(cx.error_at(
            found.span,
            format!("duplicate `{written}` {noun} in {place}"),
        ));
    }
    seen.push(key.name);
    let value = value(cx, state, &found, input);
    if let (Err(why), Some(rejected)) = (&value, spec.rejected) {
        rejected(state, key.name, why.clone());
    }
    value
}

/// Reads the value in the key's form and hands it to the key's handler.
fn value<S>(
    cx: &Ctxt,
    state: &mut S,
    found: &Found<'_, S>,
    input: ParseStream<'_>,
) -> Result<(), Reported> {
    let (key, span) = (found.key, found.span);
    let expected = || cx.error_at(span, format!("expected {}", key.hint));
    match key.form {
        Form::Value if found.positional => {}
        Form::Value => {
            input.parse::<Token![=]>().map_err(|_| expected())?;
        }
        Form::Flag if input.peek(Token![=]) => {
            input.parse::<Token![=]>().map_err(|e| cx.syn_error(e))?;
        }
        Form::Flag => return flag(cx, state, key, span),
        Form::FlagOrList if input.peek(Token![=]) => return Err(expected()),
        Form::FlagOrList if input.peek(syn::token::Paren) => {
            return list(cx, state, key, span, input, expected);
        }
        Form::FlagOrList => return flag(cx, state, key, span),
        Form::List => return list(cx, state, key, span, input, expected),
    }
    // On a fork: a rejected value leaves the stream at its start, where skipping to the next
    // comma counts brackets right.
    let fork = input.fork();
    (key.handler)(state, cx, span, &fork)?;
    input.advance_to(&fork);
    Ok(())
}

/// The key of one argument, as [`key`] reads it.
struct Found<'s, S: 'static> {
    /// The key it names.
    key: &'s Key<S>,
    /// Its spelling as written, for errors: an alias stays an alias.
    written: String,
    /// The span of the key, or of the literal for a positional argument.
    span: Span,
    /// Whether it is a bare literal, still unread, standing for the positional key.
    positional: bool,
}

/// Reads the key of the next argument: an identifier, or a bare string literal for the
/// positional key.
fn key<'s, S>(
    cx: &Ctxt,
    spec: &'s Spec<S>,
    input: ParseStream<'_>,
) -> Result<Found<'s, S>, Reported> {
    let positional = spec.keys.iter().find(|k| k.positional);
    if let Some(key) = positional.filter(|_| input.peek(LitStr)) {
        let (written, span) = (key.name.to_owned(), input.span());
        return Ok(Found {
            key,
            written,
            span,
            positional: true,
        });
    }
    // `parse_any`: a keyword used as a key is an unknown key, not "expected identifier".
    let ident = input
        .call(Ident::parse_any)
        .map_err(|e| cx.error_at(e.span(), spec.expected()))?;
    let written = ident.to_string();
    match spec.keys.iter().find(|k| k.is(&written)) {
        Some(key) => Ok(Found {
            key,
            written,
            span: ident.span(),
            positional: false,
        }),
        None => {
            let (place, noun, expected) = (spec.place, spec.noun, spec.expected());
            let msg = format!("unknown {place} {noun} `{written}`; {expected}");
            Err(cx.error_at(ident.span(), msg))
        }
    }
}

/// A bare flag: the handler gets an empty stream.
fn flag<S>(cx: &Ctxt, state: &mut S, key: &Key<S>, span: Span) -> Result<(), Reported> {
    let run = |input: ParseStream<'_>| Ok((key.handler)(state, cx, span, input));
    run.parse2(TokenStream::new())
        .map_err(|e| cx.syn_error(e))?
}

/// `key(...)`: the handler gets the stream inside the parentheses and must use all of it.
fn list<S>(
    cx: &Ctxt,
    state: &mut S,
    key: &Key<S>,
    span: Span,
    input: ParseStream<'_>,
    expected: impl FnOnce() -> Reported,
) -> Result<(), Reported> {
    if !input.peek(syn::token::Paren) {
        return Err(expected());
    }
    let (_, _, content) = input.parse_any_delimiter().map_err(|e| cx.syn_error(e))?;
    let handled = (key.handler)(state, cx, span, &content);
    if handled.is_ok() && !content.is_empty() {
        cx.syn_error(content.error("unexpected token"));
    }
    // Consumed either way: syn would otherwise report the leftover tokens a second time.
    skip_rest(cx, &content);
    handled
}

/// Skips to the next comma outside brackets (or the end), past a rejected argument.
///
/// `<`/`>` are counted too, so a comma inside `Result<A, B>` does not end the argument; the
/// `>` of `->` and `=>` is not a closing bracket.
fn skip_to_comma(cx: &Ctxt, input: ParseStream<'_>) {
    let skipped = input.step(|cursor| {
        let (mut rest, mut depth, mut arrow) = (*cursor, 0usize, false);
        while let Some((tt, next)) = rest.token_tree() {
            if let TokenTree::Punct(p) = &tt {
                match p.as_char() {
                    ',' if depth == 0 => break,
                    '<' => depth += 1,
                    '>' if !arrow => depth = depth.saturating_sub(1),
                    _ => {}
                }
                arrow = p.spacing() == Spacing::Joint && matches!(p.as_char(), '-' | '=');
            } else {
                arrow = false;
            }
            rest = next;
        }
        Ok(((), rest))
    });
    if let Err(e) = skipped {
        cx.syn_error(e);
    }
}

/// Skips every remaining token of a stream.
fn skip_rest(cx: &Ctxt, input: ParseStream<'_>) {
    let skipped = input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((_, next)) = rest.token_tree() {
            rest = next;
        }
        Ok(((), rest))
    });
    if let Err(e) = skipped {
        cx.syn_error(e);
    }
}
