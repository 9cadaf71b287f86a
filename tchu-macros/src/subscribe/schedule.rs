//! The arguments of `#[tchu::schedule(...)]`: a handler whose messages are the occurrences of
//! a schedule. The cron expression and time zone are checked here, with the parsers the
//! runtime uses, so a malformed literal is a compile error on it.

use super::args::{ScheduleArgs, SubscribeArgs, lit_str, metadata, retry};
use crate::args::{self, Key, Spec};
use crate::ctxt::{Ctxt, Reported};
use proc_macro2::{Span, TokenStream};
use syn::LitStr;
use syn::parse::ParseStream;

/// The arguments `#[tchu::schedule]` accepts.
const SPEC: Spec<SubscribeArgs> = Spec {
    place: "`#[tchu::schedule]`",
    noun: "argument",
    keys: &[
        Key::value("cron", "`cron = \"sec min hour day month weekday\"`", cron).positional(),
        Key::value("tz", "`tz = \"Europe/Amsterdam\"`", tz),
        Key::value("missed", "`missed = \"run_once\" | \"skip\"`", missed),
        Key::value("name", "`name = \"...\"`", name),
        Key::list("retry", "`retry(...)`", retry),
        Key::list("metadata", "`metadata(name = \"value\", ...)`", metadata),
    ],
    rejected: None,
};

/// Parses the attribute's arguments for the function `func_name`, reporting every mistake;
/// the handler's pattern is the schedule's topic.
pub(crate) fn parse(cx: &Ctxt, tokens: TokenStream, func_name: Option<String>) -> SubscribeArgs {
    let mut out = SubscribeArgs {
        schedule: Some(ScheduleArgs::default()),
        ..SubscribeArgs::default()
    };
    args::parse(cx, &SPEC, &mut out, tokens);
    let s = out.schedule.as_mut().expect("set above");
    if s.name.is_empty() {
        s.name = func_name.unwrap_or_default();
        if !fits_a_name(&s.name) {
            cx.error_at(
                Span::call_site(),
                format!(
                    "the function's name `{}` cannot name a schedule (1 to 100 ASCII letters, digits, `_` or `-`): give one with `name = \"...\"`",
                    s.name
                ),
            );
        }
    }
    if s.cron.is_none() && !cx.has_errors() {
        cx.error_at(
            Span::call_site(),
            "`#[tchu::schedule]` needs `cron = \"...\"`: when it runs, like `cron = \"0 */15 * * * *\"` (seconds first)",
        );
    }
    let topic = format!("tchu.schedule.{}", s.name);
    out.pattern = Some(LitStr::new(&topic, Span::call_site()));
    out
}

fn schedule(a: &mut SubscribeArgs) -> &mut ScheduleArgs {
    a.schedule.get_or_insert_with(ScheduleArgs::default)
}

/// `cron = "0 */15 * * * *"`.
fn cron(a: &mut SubscribeArgs, cx: &Ctxt, _: Span, input: ParseStream<'_>) -> Result<(), Reported> {
    let lit = lit_str(cx, input, "`cron` must be a string literal")?;
    if let Err(e) = lit.value().parse::<cron::Schedule>() {
        return Err(cx.error_at(
            lit.span(),
            format!(
                "`{}` is not a cron expression: {}; write `sec min hour day-of-month month day-of-week [year]`, like `\"0 */15 * * * *\"`",
                lit.value(),
                cron_reason(&e)
            ),
        ));
    }
    schedule(a).cron = Some(lit);
    Ok(())
}

/// `tz = "Europe/Amsterdam"`.
fn tz(a: &mut SubscribeArgs, cx: &Ctxt, _: Span, input: ParseStream<'_>) -> Result<(), Reported> {
    let lit = lit_str(cx, input, "`tz` must be a string literal")?;
    if lit.value().parse::<chrono_tz::Tz>().is_err() {
        return Err(cx.error_at(
            lit.span(),
            format!(
                "`{}` is not an IANA time zone: write one like `\"Europe/Amsterdam\"` or `\"UTC\"`",
                lit.value()
            ),
        ));
    }
    schedule(a).tz = Some(lit);
    Ok(())
}

/// `missed = "run_once"` or `missed = "skip"`.
fn missed(
    a: &mut SubscribeArgs,
    cx: &Ctxt,
    _: Span,
    input: ParseStream<'_>,
) -> Result<(), Reported> {
    let lit = lit_str(cx, input, "`missed` must be \"run_once\" or \"skip\"")?;
    schedule(a).skip_missed = match lit.value().as_str() {
        "run_once" => false,
        "skip" => true,
        _ => {
            return Err(cx.error_at(
                lit.span(),
                "`missed` must be \"run_once\" (the latest missed occurrence runs once, the default) or \"skip\" (none runs)",
            ));
        }
    };
    Ok(())
}

/// `name = "..."`: the schedule's name, a word of its topic.
fn name(a: &mut SubscribeArgs, cx: &Ctxt, _: Span, input: ParseStream<'_>) -> Result<(), Reported> {
    let lit = lit_str(cx, input, "`name` must be a string literal")?;
    let value = lit.value();
    if !fits_a_name(&value) {
        return Err(cx.error_at(
            lit.span(),
            "a schedule's `name` is 1 to 100 letters, digits, `_` or `-`",
        ));
    }
    schedule(a).name = value;
    Ok(())
}

/// What the cron parser says is wrong, without its echo of the expression and caret line (the
/// error is spanned on the literal); the runtime words it the same way.
fn cron_reason(e: &cron::error::Error) -> String {
    let text = e.to_string();
    let reason: Vec<&str> = (text.lines().skip(2))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if reason.is_empty() {
        "it needs 6 or 7 fields, seconds first".to_owned()
    } else {
        reason.join(" ")
    }
}

/// Whether `name` can name a schedule: a word of its topic, as the runtime checks it.
fn fits_a_name(name: &str) -> bool {
    let fits = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    !name.is_empty() && name.len() <= 100 && name.chars().all(fits)
}
