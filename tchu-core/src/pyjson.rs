//! JSON written byte for byte as Python's `json.dumps` writes it with default arguments.
//!
//! tchu-tchu encodes `args[0]` with `json.dumps` (separators `", "` and `": "`, `ensure_ascii=True`),
//! and kombu encodes the Celery body the same way. Matching it exactly keeps our messages
//! indistinguishable from a Python publisher's, which is what the golden tests check.

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter};
use std::io::{self, Write};

/// A `serde_json` formatter that writes Python's `json.dumps` layout.
#[derive(Debug, Clone, Copy)]
pub struct PyFormatter {
    /// Escape every non-ASCII character as `\uXXXX` (Python's `ensure_ascii=True`).
    pub ensure_ascii: bool,
}

impl Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + Write>(&mut self, w: &mut W, s: &str) -> io::Result<()> {
        if !self.ensure_ascii {
            return w.write_all(s.as_bytes());
        }
        let mut buf = [0u16; 2];
        for c in s.chars() {
            if (' '..='~').contains(&c) {
                w.write_all(&[c as u8])?;
            } else {
                for unit in c.encode_utf16(&mut buf) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }

    fn write_char_escape<W: ?Sized + Write>(&mut self, w: &mut W, e: CharEscape) -> io::Result<()> {
        let s: &[u8] = match e {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(b) => return write!(w, "\\u{:04x}", b),
        };
        w.write_all(s)
    }
}

/// Serialises `value` as Python's `json.dumps(value, ensure_ascii=...)` would.
///
/// ```
/// let s = tchu_core::pyjson::to_string(&serde_json::json!({"a": [1, "é"]}), true)?;
/// assert_eq!(s, r#"{"a": [1, "\u00e9"]}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
///
/// # Errors
/// Whatever the value's `Serialize` implementation reports.
pub fn to_string<T: Serialize + ?Sized>(
    value: &T,
    ensure_ascii: bool,
) -> serde_json::Result<String> {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PyFormatter { ensure_ascii });
    value.serialize(&mut ser)?;
    // The formatter writes only valid UTF-8 (escapes are ASCII, fragments are `&str`).
    Ok(String::from_utf8(out).unwrap_or_default())
}

/// Python's `repr()` of a `str`, as Celery writes it into the `argsrepr` header.
pub fn repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    // Runs of characters that need no escape are copied whole: the text is usually a JSON
    // document with none at all.
    let mut run = 0;
    for (at, c) in s.char_indices() {
        let fixed = match c {
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            _ => "",
        };
        let control = (c as u32) < 0x20 || c as u32 == 0x7f;
        if fixed.is_empty() && c != quote && !control {
            continue;
        }
        out.push_str(&s[run..at]);
        run = at + c.len_utf8();
        if !fixed.is_empty() {
            out.push_str(fixed);
        } else if c == quote {
            out.push('\\');
            out.push(c);
        } else {
            out.push_str(&format!("\\x{:02x}", c as u32));
        }
    }
    out.push_str(&s[run..]);
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_layout_and_escapes() {
        let v = json!({"k": "a\"b\\c\n\u{1}\u{7f}😀", "n": null, "l": [true, 1.5]});
        assert_eq!(
            to_string(&v, true).unwrap(),
            r#"{"k": "a\"b\\c\n\u0001\u007f\ud83d\ude00", "n": null, "l": [true, 1.5]}"#
        );
        assert_eq!(
            to_string(&json!({"k": "é"}), false).unwrap(),
            "{\"k\": \"é\"}"
        );
    }

    #[test]
    fn repr_quotes_like_python() {
        assert_eq!(repr_str(r#"{"a": 1}"#), r#"'{"a": 1}'"#);
        assert_eq!(repr_str("it's"), r#""it's""#);
        assert_eq!(repr_str(r#"it's "x""#), r#"'it\'s "x"'"#);
    }

    /// What CPython 3.11's `repr()` printed for each (ASCII and the escapes Celery's reprs
    /// meet; runs of plain text are copied whole, escapes between them).
    #[test]
    fn repr_escapes_between_runs_like_python() {
        for (text, python) in [
            ("", "''"),
            ("plain", "'plain'"),
            ("a\\b\nc\rd\te", r"'a\\b\nc\rd\te'"),
            ("\u{1}x\u{7f}", r"'\x01x\x7f'"),
            ("é😀\n", "'é😀\\n'"),
            ("'\"", r#"'\'"'"#),
            ("\\\\", r"'\\\\'"),
        ] {
            assert_eq!(repr_str(text), python, "{text:?}");
        }
    }
}
