//! What the guard checks in one whole frame, and the frame it hands on instead when lapin's
//! parser would refuse it. Pure: bytes in, bytes out.
//!
//! Two kinds of frames carry what a publisher wrote: the content header (properties and
//! headers) and the methods that carry its exchange and routing key (`basic.deliver`,
//! `basic.get-ok`, `basic.return`). A refused content header is rebuilt with every property
//! the parser takes, texts made valid UTF-8, and [`MALFORMED_HEADER`] saying what was wrong;
//! a refused method gets valid texts, and its content header (the next on its channel) the
//! marker.

use super::table::{Reader, check_table, shown};
use amq_protocol::frame::parse_frame;
use tchu_core::headers::MALFORMED_HEADER;

pub(super) const FRAME_METHOD: u8 = 1;
pub(super) const FRAME_HEADER: u8 = 2;
const FRAME_END: u8 = 0xCE;
/// A frame's type, channel and payload size.
pub(super) const FRAME_PREFIX: usize = 7;
/// The content header's class, weight and body size, before its property flags.
const HEADER_FIXED: usize = 12;
const HEADERS_FLAG: u16 = 1 << 13;
/// The longest reason the marker keeps.
const MAX_REASON: usize = 1024;

/// Whether a method frame (by its class and method ids) carries a publisher's texts.
pub(super) fn carries_publisher_texts(class: u16, method: u16) -> bool {
    class == 60 && method_texts(method).is_some()
}

/// The fields of `basic.deliver`, `basic.get-ok` and `basic.return` after their ids.
fn method_texts(method: u16) -> Option<&'static [Field]> {
    use Field::{Fixed, Text};
    match method {
        60 => Some(&[
            Text("consumer tag"),
            Fixed(9),
            Text("exchange"),
            Text("routing key"),
        ]),
        71 => Some(&[Fixed(9), Text("exchange"), Text("routing key"), Fixed(4)]),
        50 => Some(&[
            Fixed(2),
            Text("reply text"),
            Text("exchange"),
            Text("routing key"),
        ]),
        _ => None,
    }
}

#[derive(Clone, Copy)]
enum Field {
    /// A short string, by name.
    Text(&'static str),
    /// Bytes passed as they are.
    Fixed(usize),
}

/// The guard's memory across frames: channels whose delivery had its method frame repaired,
/// so that the content header that follows is marked too.
#[derive(Debug, Default)]
pub(super) struct Inspector {
    marked: Vec<(u16, String)>,
}

impl Inspector {
    /// A content header on `channel` passed on unchecked (too large to hold): the mark of its
    /// delivery, if any, must not fall on the next one.
    pub(super) fn forget(&mut self, channel: u16) {
        self.marked.retain(|(c, _)| *c != channel);
    }

    /// Checks one whole method or content header frame: `None` when it passes unchanged,
    /// otherwise the frame to hand on instead.
    pub(super) fn inspect(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        let channel = u16::from_be_bytes([frame[1], frame[2]]);
        if frame[0] == FRAME_METHOD {
            let (repaired, reason) = repair_method(frame)?;
            self.marked.retain(|(c, _)| *c != channel);
            self.marked.push((channel, reason));
            return Some(repaired);
        }
        let mark = self
            .marked
            .iter()
            .position(|(c, _)| *c == channel)
            .map(|i| self.marked.swap_remove(i).1);
        inspect_header(frame, mark)
    }
}

/// A method frame with its texts made valid UTF-8, and what was wrong; `None` when nothing was.
fn repair_method(frame: &[u8]) -> Option<(Vec<u8>, String)> {
    let payload = &frame[FRAME_PREFIX..frame.len() - 1];
    let mut r = Reader::new(payload);
    let ids = r.take(4)?;
    let fields = method_texts(u16::from_be_bytes([ids[2], ids[3]]))?;
    let mut out = payload_start(frame, ids);
    let mut wrong = Vec::new();
    for field in fields {
        match *field {
            Field::Fixed(n) => out.extend_from_slice(r.take(n)?),
            Field::Text(name) => {
                let text = r.short()?;
                if std::str::from_utf8(text).is_err() {
                    wrong.push(format!("the {name} {} is not UTF-8", shown(text)));
                }
                push_short(&mut out, text);
            }
        }
    }
    if wrong.is_empty() {
        return None;
    }
    out.extend_from_slice(r.rest());
    Some((finish(out), wrong.join("; ")))
}

/// Checks a content header frame; `mark` is a reason found in its delivery's method frame.
fn inspect_header(frame: &[u8], mark: Option<String>) -> Option<Vec<u8>> {
    let payload = &frame[FRAME_PREFIX..frame.len() - 1];
    if payload.len() < HEADER_FIXED + 2 {
        // Not a content header the guard can rebuild (no body size): lapin judges it.
        return None;
    }
    let mut wrong: Vec<String> = mark.into_iter().collect();
    if frame.last() != Some(&FRAME_END) {
        wrong.push("its frame does not end with the frame-end octet".into());
    }
    let props = match Properties::split(&payload[HEADER_FIXED..]) {
        Ok(props) => props,
        Err(why) => {
            wrong.push(why);
            return Some(rebuild(frame, payload, None, &wrong));
        }
    };
    props.check(&mut wrong);
    if wrong.is_empty() {
        // What passes these checks, the published parser takes: they mirror it (flags, texts,
        // table layout and types), and the fuzz run holds them to it
        // (`frames_through_the_guard_parse_or_pass_unchanged`). Parsing every header a second
        // time here cost a quarter of a delivery's work in tchu.
        return None;
    }
    Some(rebuild(frame, payload, Some(&props), &wrong))
}

/// What a property holds on the wire.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Table,
    Octet,
    Timestamp,
}

/// The basic class's properties by flag bit, from bit 15 down: content type, encoding,
/// headers, delivery mode, priority, correlation id, reply to, expiration, message id,
/// timestamp, type, user id, app id, cluster id.
const PROPERTIES: [(&str, Kind); 14] = [
    ("content_type", Kind::Text),
    ("content_encoding", Kind::Text),
    ("headers", Kind::Table),
    ("delivery_mode", Kind::Octet),
    ("priority", Kind::Octet),
    ("correlation_id", Kind::Text),
    ("reply_to", Kind::Text),
    ("expiration", Kind::Text),
    ("message_id", Kind::Text),
    ("timestamp", Kind::Timestamp),
    ("type", Kind::Text),
    ("user_id", Kind::Text),
    ("app_id", Kind::Text),
    ("cluster_id", Kind::Text),
];

/// A content header's properties, each as its raw bytes (length prefix included).
struct Properties<'a> {
    present: Vec<(usize, &'a [u8])>,
}

impl<'a> Properties<'a> {
    /// Splits the flags and properties; refuses trailing bytes, as the published parser does
    /// (which, like this, ignores the two lowest flag bits).
    fn split(bytes: &'a [u8]) -> Result<Self, String> {
        let mut r = Reader::new(bytes);
        let cut = |name: &str| format!("its {name} property is cut short");
        let flags = r.u16().ok_or_else(|| cut("flags"))?;
        let mut present = Vec::new();
        for (i, (name, kind)) in PROPERTIES.iter().enumerate() {
            if flags & (1 << (15 - i)) == 0 {
                continue;
            }
            let start = r.position();
            let ok = match kind {
                Kind::Text => r.short().is_some(),
                Kind::Table => r.long().is_some(),
                Kind::Octet => r.take(1).is_some(),
                Kind::Timestamp => r.take(8).is_some(),
            };
            if !ok {
                return Err(cut(name));
            }
            present.push((i, &bytes[start..r.position()]));
        }
        if !r.rest().is_empty() {
            return Err("its properties do not end where the frame does".into());
        }
        Ok(Self { present })
    }

    /// Adds what the published parser would refuse to `wrong`.
    fn check(&self, wrong: &mut Vec<String>) {
        for (i, raw) in &self.present {
            let (name, kind) = PROPERTIES[*i];
            match kind {
                Kind::Text if std::str::from_utf8(&raw[1..]).is_err() => {
                    wrong.push(format!("its {name} {} is not UTF-8", shown(&raw[1..])));
                }
                Kind::Table => match check_table(raw, MALFORMED_HEADER) {
                    Err(why) => wrong.push(why),
                    // Only the guard says what is malformed: a publisher's own marker would
                    // let it choose the reason its message is parked with.
                    Ok(true) => wrong.push(format!("the publisher set {MALFORMED_HEADER} itself")),
                    Ok(false) => {}
                },
                _ => {}
            }
        }
    }
}

/// The content header to hand on: the same class and body size, every property that can be
/// kept (texts made valid UTF-8; headers kept if they parse), and the marker in the headers;
/// with no properties to go on, the marker alone. Never longer than the frame it replaces (or
/// than the smallest `frame_max` there is): lapin closes the connection on a frame over its
/// `frame_max`, so what does not fit is dropped, the headers first.
fn rebuild(
    frame: &[u8],
    payload: &[u8],
    props: Option<&Properties<'_>>,
    wrong: &[String],
) -> Vec<u8> {
    let reason = truncated(wrong.join("; "), MAX_REASON);
    let limit = frame.len().max(MIN_FRAME_MAX);
    let present = props.map_or(&[][..], |p| &p.present[..]);
    let attempts = [(present, true), (present, false)];
    for (present, keep_headers) in attempts {
        let rebuilt = build_header(frame, payload, present, keep_headers, &reason);
        // A parser failure here is never expected; but it would cost the connection.
        if rebuilt.len() <= limit && parse_frame(&rebuilt[..]).is_ok() {
            return rebuilt;
        }
    }
    build_header(frame, payload, &[], false, &reason)
}

/// The smallest `frame_max` AMQP allows: a frame this long always fits.
const MIN_FRAME_MAX: usize = 4096;

/// A content header frame with `present` properties (texts made valid UTF-8), the headers
/// among them only if `keep_headers` and they pass, and the marker.
fn build_header(
    frame: &[u8],
    payload: &[u8],
    present: &[(usize, &[u8])],
    keep_headers: bool,
    reason: &str,
) -> Vec<u8> {
    let mut out = payload_start(frame, &payload[..HEADER_FIXED]);
    let mut flags = HEADERS_FLAG;
    let mut body = Vec::new();
    for (i, (_, kind)) in PROPERTIES.iter().enumerate() {
        let raw = present.iter().find(|(j, _)| *j == i).map(|(_, raw)| *raw);
        match (kind, raw) {
            (Kind::Table, _) => {
                let kept = raw.filter(|t| keep_headers && check_table(t, "").is_ok());
                push_marked_table(&mut body, kept, reason);
            }
            (_, None) => continue,
            (Kind::Text, Some(raw)) => push_short(&mut body, &raw[1..]),
            (_, Some(raw)) => body.extend_from_slice(raw),
        }
        flags |= 1 << (15 - i);
    }
    out.extend(flags.to_be_bytes());
    out.extend(body);
    finish(out)
}

/// A frame's type and channel, a size to fill in, and the start of its payload.
fn payload_start(frame: &[u8], start: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + 128);
    out.extend_from_slice(&frame[..3]);
    out.extend([0; 4]);
    out.extend_from_slice(start);
    out
}

/// Writes the payload size and the frame end.
fn finish(mut out: Vec<u8>) -> Vec<u8> {
    let size = (out.len() - FRAME_PREFIX) as u32;
    out[3..FRAME_PREFIX].copy_from_slice(&size.to_be_bytes());
    out.push(FRAME_END);
    out
}

/// A short string of `bytes` made valid UTF-8 (and cut, on a character boundary, to fit).
fn push_short(out: &mut Vec<u8>, bytes: &[u8]) {
    let text = truncated(String::from_utf8_lossy(bytes).into_owned(), 255);
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

/// A field table: `kept` (a checked table, as on the wire) or none, with the marker last.
fn push_marked_table(out: &mut Vec<u8>, kept: Option<&[u8]>, reason: &str) {
    let entries = kept.map_or(&[][..], |t| &t[4..]);
    let mut marker = vec![MALFORMED_HEADER.len() as u8];
    marker.extend_from_slice(MALFORMED_HEADER.as_bytes());
    marker.push(b'S');
    marker.extend((reason.len() as u32).to_be_bytes());
    marker.extend_from_slice(reason.as_bytes());
    out.extend(((entries.len() + marker.len()) as u32).to_be_bytes());
    out.extend_from_slice(entries);
    out.extend(marker);
}

fn truncated(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}
