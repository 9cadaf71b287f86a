//! Writing results: stdout lines flushed one by one, JSON objects, stderr progress.

use crate::exit::Failure;
use serde_json::{Value, json};
use std::io::Write;

/// Where results go, and in which form.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// `--json`: stdout carries JSON objects only.
    pub json: bool,
}

impl Out {
    /// An output in the chosen form.
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// Writes one line on stdout and flushes it, so a pipe sees it at once.
    ///
    /// # Errors
    /// [`Failure::stdout_closed`] when the reader went away; a failure for other I/O errors.
    pub fn line(&self, line: &str) -> Result<(), Failure> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::BrokenPipe => Failure::stdout_closed(),
                _ => Failure::failed("io", format!("cannot write to stdout: {e}")),
            })
    }

    /// Writes one JSON object on one stdout line.
    ///
    /// # Errors
    /// As [`Out::line`].
    pub fn object(&self, v: &Value) -> Result<(), Failure> {
        self.line(&v.to_string())
    }

    /// Prints a failure: `tchu: <message>` on stderr and, with `--json`, an object on stdout.
    pub fn report(&self, failure: &Failure) {
        if failure.kind == "stdout_closed" {
            return;
        }
        eprintln!("tchu: {}", failure.message);
        if self.json {
            let mut v = json!({"ok": false, "error": failure.kind, "message": failure.message});
            if let Some(d) = &failure.detail {
                v["detail"] = d.clone();
            }
            // Nothing more to do if stdout is gone too.
            let _ = self.object(&v);
        }
    }

    /// A progress or information line on stderr (in both output forms).
    pub fn info(&self, line: impl std::fmt::Display) {
        eprintln!("{line}");
    }
}

/// Cuts `s` to at most `max` characters on one line, ending with `…` when cut.
pub fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Prints rows as left-aligned columns separated by two spaces (the last column unpadded).
pub fn table(out: &Out, rows: &[Vec<String>]) -> Result<(), Failure> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                let pad = widths[c] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.line(line.trim_end())?;
    }
    Ok(())
}
