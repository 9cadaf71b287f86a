//! Reading AMQP's length-prefixed encodings without recursion: a bounds-checked byte reader,
//! and the check of a field table (the message headers) that bounds its nesting before the
//! published, recursive parser ever sees it.

/// How deep field tables and arrays may nest in message headers, the outermost table
/// included. The published parser recurses once per level on lapin's I/O thread, so a
/// stranger's headers nested thousands deep overflowed its stack and aborted the process.
pub(crate) const MAX_NESTING: usize = 32;

/// A cursor over bytes; every read is bounds-checked and returns `None` past the end.
#[derive(Debug)]
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    /// How many bytes were read.
    pub(super) fn position(&self) -> usize {
        self.at
    }

    /// The bytes not read yet.
    pub(super) fn rest(&self) -> &'a [u8] {
        &self.bytes[self.at..]
    }

    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len())?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Some(taken)
    }

    pub(super) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub(super) fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub(super) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A short string's contents (its one-byte length read first).
    pub(super) fn short(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// A long string's, byte array's, table's or array's contents (a four-byte length first).
    pub(super) fn long(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()?;
        self.take(n as usize)
    }
}

/// One open table or array while walking headers: where it ends, and whether its entries
/// have names.
struct Open {
    end: usize,
    named: bool,
}

/// Checks a field table as it sits in a frame (its four-byte length, then its entries): every
/// length inside its bounds, every type known, every name UTF-8, and nesting within
/// [`MAX_NESTING`]. Iterative, so no input can exhaust the stack. The error says what is wrong,
/// in words fit for a dead letter. `Ok(true)` when `reserved` is among the outermost names.
pub(super) fn check_table(raw: &[u8], reserved: &str) -> Result<bool, String> {
    let mut found = false;
    let mut r = Reader::new(raw);
    let len = r.u32().ok_or("the headers are cut short")? as usize;
    let mut open = vec![Open {
        end: 4usize.saturating_add(len),
        named: true,
    }];
    if open[0].end > raw.len() {
        return Err("the headers' length runs past the frame".into());
    }
    while let Some(top) = open.last() {
        if r.position() == top.end {
            open.pop();
            continue;
        }
        let (end, named) = (top.end, top.named);
        if named {
            let name = r.short().ok_or(CUT)?;
            if std::str::from_utf8(name).is_err() {
                return Err(format!("the header name {} is not UTF-8", shown(name)));
            }
            found |= open.len() == 1 && name == reserved.as_bytes();
        }
        if let Some(inner) = check_value(&mut r)? {
            if open.len() >= MAX_NESTING {
                return Err(format!(
                    "the headers nest tables or arrays deeper than {MAX_NESTING} levels"
                ));
            }
            open.push(inner);
        }
        if r.position() > end || open.last().is_some_and(|o| o.end > end) {
            return Err(CUT.into());
        }
    }
    Ok(found)
}

const CUT: &str = "a header runs past the end of its table";

/// Reads one typed value: skips a scalar or a string, or opens a table or an array (returned
/// for the caller to walk).
fn check_value(r: &mut Reader<'_>) -> Result<Option<Open>, String> {
    let tag = r.u8().ok_or(CUT)?;
    let fixed = match tag {
        b'V' => 0,
        b't' | b'b' | b'B' => 1,
        b's' | b'U' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'D' => 5,
        b'L' | b'l' | b'd' | b'T' => 8,
        b'S' | b'x' => {
            r.long().ok_or(CUT)?;
            return Ok(None);
        }
        b'A' | b'F' => {
            let len = r.u32().ok_or(CUT)? as usize;
            return Ok(Some(Open {
                end: r.position().saturating_add(len),
                named: tag == b'F',
            }));
        }
        other => {
            return Err(format!(
                "a header holds a value of unknown type {}",
                shown(&[other])
            ));
        }
    };
    r.take(fixed).ok_or(CUT)?;
    Ok(None)
}

/// Bytes as text for a reason: lossy, with anything not printable escaped, cut short.
pub(super) fn shown(bytes: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(&bytes[..bytes.len().min(64)])
        .chars()
        .flat_map(char::escape_debug)
        .collect();
    let more = if bytes.len() > 64 { "…" } else { "" };
    format!(
        "\"{text}{more}\" (bytes {:02x?})",
        &bytes[..bytes.len().min(16)]
    )
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::transport::amqp::guard) fn table(entries: &[u8]) -> Vec<u8> {
        let mut out = (entries.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(entries);
        out
    }

    /// A table holding `depth` arrays, each inside the one before.
    pub(in crate::transport::amqp::guard) fn nested_arrays(depth: usize) -> Vec<u8> {
        let mut entry = vec![1, b'k'];
        for level in 0..depth {
            entry.push(b'A');
            entry.extend(((5 * (depth - 1 - level)) as u32).to_be_bytes());
        }
        table(&entry)
    }

    #[test]
    fn well_formed_tables_pass() {
        assert_eq!(check_table(&table(&[]), "r"), Ok(false));
        let mut e = vec![3, b'a', b'b', b'c', b'S', 0, 0, 0, 2, b'h', b'i'];
        e.extend([
            1, b'n', b'I', 0, 0, 0, 7, 1, b'v', b'V', 1, b'd', b'D', 2, 0, 0, 0, 5,
        ]);
        assert_eq!(check_table(&table(&e), "n"), Ok(true));
        assert_eq!(check_table(&table(&e), "m"), Ok(false));
        // The outermost table and 31 levels inside it: exactly the limit.
        assert_eq!(check_table(&nested_arrays(MAX_NESTING - 1), "r"), Ok(false));
    }

    #[test]
    fn nesting_past_the_limit_is_refused_without_recursion() {
        let err = check_table(&nested_arrays(MAX_NESTING), "r").unwrap_err();
        assert!(err.contains("deeper than 32"), "{err}");
        // Deep enough to overflow any stack if walked recursively.
        let err = check_table(&nested_arrays(200_000), "r").unwrap_err();
        assert!(err.contains("deeper than 32"), "{err}");
    }

    #[test]
    fn names_that_are_not_utf8_are_refused() {
        let err = check_table(&table(&[2, 0xc3, 0x28, b'V']), "r").unwrap_err();
        assert!(err.contains("header name") && err.contains("c3"), "{err}");
        // Inside a nested table too.
        let inner = table(&[1, 0xff, b'V']);
        let mut e = vec![1, b'x', b'F'];
        e.extend(inner);
        assert!(
            check_table(&table(&e), "r")
                .unwrap_err()
                .contains("not UTF-8")
        );
    }

    #[test]
    fn unknown_types_and_bad_lengths_are_refused() {
        let err = check_table(&table(&[1, b'k', b'Z', 0]), "r").unwrap_err();
        assert!(err.contains("unknown type") && err.contains("Z"), "{err}");
        // A string longer than its table.
        assert_eq!(
            check_table(&table(&[1, b'k', b'S', 0, 0, 0, 9, b'x']), "r"),
            Err(CUT.into())
        );
        // An inner table whose length runs past the outer one.
        assert_eq!(
            check_table(&table(&[1, b'k', b'F', 0, 0, 0, 9]), "r"),
            Err(CUT.into())
        );
        // A table whose length runs past the frame.
        assert!(check_table(&[0, 0, 0, 9, 1], "r").is_err());
        assert!(check_table(&[0, 0], "r").is_err());
    }
}
