//! What a service logs, and how: to stderr, filtered by `RUST_LOG` (default `info`), as text or
//! as JSON lines (`TCHU_LOG_FORMAT=json`). Colours only on a terminal, never with `NO_COLOR`.
//! Every field is written with its control characters escaped: a topic, routing key, payload
//! or error text a stranger chose cannot start a line of its own and pass for a log entry.

use std::fmt::Write as _;
use std::io::IsTerminal;
use tracing_subscriber::field::MakeExt;

/// The environment variable choosing the log format: `json` for JSON lines, else text.
pub const LOG_FORMAT_ENV: &str = "TCHU_LOG_FORMAT";

/// Installs a `tracing` subscriber writing to stderr, filtered by `RUST_LOG` (default `info`),
/// unless one is already installed. `TCHU_LOG_FORMAT=json` writes one JSON object per line;
/// text has colours only when stderr is a terminal and `NO_COLOR` is unset or empty.
pub fn init_tracing() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var(LOG_FORMAT_ENV).is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let lines = if json {
        // JSON strings escape control characters themselves.
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        text_lines().boxed()
    };
    let subscriber = tracing_subscriber::registry().with(filter).with(lines);
    // The application's own spans, exported beneath tchu's once an exporter is installed.
    #[cfg(feature = "otel")]
    let subscriber = subscriber.with(crate::observe::otlp::layer());
    let _ = subscriber.try_init();
}

/// Log lines as text, control characters escaped, colours on a terminal unless `NO_COLOR`.
fn text_lines<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        if field.name() != "message" {
            write!(w, "{field}=")?;
        }
        // Escaped as it is written: no text of its own per field (measured: formatting the
        // delivery span's fields cost more than decoding the event).
        write!(Escaping(w), "{value:?}")
    })
    .delimited(" ");
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .fmt_fields(fields)
}

/// A writer that writes every control character as an escape (`\n`, `\u{1b}`...).
struct Escaping<W>(W);

impl<W: std::fmt::Write> std::fmt::Write for Escaping<W> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let mut rest = text;
        while let Some(at) = rest.find(char::is_control) {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// The text with every control character written as an escape (`\n`, `\u{1b}`...).
#[cfg(test)]
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let _ = Escaping(&mut out).write_str(text);
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("plain text"), "plain text");
        assert_eq!(
            escape("a\n2026-01-01T00:00:00Z ERROR forged"),
            "a\\n2026-01-01T00:00:00Z ERROR forged"
        );
        assert_eq!(escape("\u{1b}[31mred\r\t"), "\\u{1b}[31mred\\r\\t");
    }
}
