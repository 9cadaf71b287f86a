//! The guard on byte streams: what passes untouched (however the reads split it), and what
//! is rebuilt, with the published parser as the judge.

use super::FrameGuard;
use super::table::MAX_NESTING;
use super::table::tests::{nested_arrays, table};
use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, basic};
use futures_lite::io::{AsyncRead, AsyncReadExt};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tchu_core::headers::MALFORMED_HEADER;

/// Hands out `bytes` in reads of the given sizes (cycled), never more than asked.
struct Chunked {
    bytes: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
    turn: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let size = this.sizes[this.turn % this.sizes.len()];
        this.turn += 1;
        if size == 0 {
            // Nothing to read yet, as a socket would say: wake the reader when there is.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = size.min(out.len()).min(this.bytes.len() - this.at);
        out[..n].copy_from_slice(&this.bytes[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(n))
    }
}

/// What lapin would read through the guard, in reads of `sizes`, into a buffer of `out` bytes.
pub(crate) fn through(bytes: &[u8], sizes: &[usize], out: usize) -> Vec<u8> {
    let inner = Chunked {
        bytes: bytes.to_vec(),
        at: 0,
        sizes: sizes.to_vec(),
        turn: 0,
    };
    let mut guard = FrameGuard::new(inner);
    let mut got = Vec::new();
    let mut buf = vec![0; out];
    futures_lite::future::block_on(async {
        loop {
            let n = guard.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    });
    got
}

pub(crate) fn encode(frame: &AMQPFrame) -> Vec<u8> {
    let ctx = gen_frame(frame)(Vec::new().into()).unwrap();
    ctx.write
}

/// Every frame in `bytes`, parsed by the published parser.
fn frames(mut bytes: &[u8]) -> Vec<AMQPFrame> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (rest, frame) = parse_frame(bytes).unwrap_or_else(|e| panic!("{e:?}: {bytes:02x?}"));
        out.push(frame);
        bytes = rest;
    }
    out
}

fn deliver(channel: u16, routing_key: &str) -> Vec<u8> {
    encode(&AMQPFrame::Method(
        channel,
        AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: "ctag".into(),
            delivery_tag: 7,
            redelivered: false,
            exchange: "tchu_events".into(),
            routing_key: routing_key.into(),
        })),
    ))
}

fn header(channel: u16, body_size: u64, props: BasicProperties) -> Vec<u8> {
    encode(&AMQPFrame::Header(
        channel,
        AMQPContentHeader {
            class_id: 60,
            body_size,
            properties: props,
        },
    ))
}

fn body(channel: u16, data: &[u8]) -> Vec<u8> {
    encode(&AMQPFrame::Body(channel, data.to_vec()))
}

/// A content header frame with raw property bytes (flags first), as a stranger's may be.
fn raw_header(channel: u16, body_size: u64, props: &[u8]) -> Vec<u8> {
    let mut payload = vec![0, 60, 0, 0];
    payload.extend(body_size.to_be_bytes());
    payload.extend_from_slice(props);
    let mut out = vec![2];
    out.extend(channel.to_be_bytes());
    out.extend((payload.len() as u32).to_be_bytes());
    out.extend(payload);
    out.push(0xCE);
    out
}

pub(crate) fn ordinary_delivery(channel: u16, text: &str) -> Vec<u8> {
    let mut headers = FieldTable::default();
    headers.insert(
        "task".into(),
        AMQPValue::LongString(LongString::from("tchu_tchu.dispatch_event")),
    );
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_correlation_id("c-1".into())
        .with_headers(headers);
    [
        deliver(channel, "a.b"),
        header(channel, text.len() as u64, props),
        body(channel, text.as_bytes()),
    ]
    .concat()
}

fn marker(frame: &AMQPFrame) -> Option<String> {
    let AMQPFrame::Header(_, h) = frame else {
        panic!("{frame:?}")
    };
    match h
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(MALFORMED_HEADER)?
    {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ordinary_frames_pass_unchanged_however_the_reads_split_them() {
    let heartbeat = encode(&AMQPFrame::Heartbeat);
    let stream = [
        ordinary_delivery(1, "{\"n\": 1}"),
        heartbeat.clone(),
        ordinary_delivery(2, "{\"n\": 2}"),
        heartbeat,
        ordinary_delivery(1, ""),
    ]
    .concat();
    // Every split point, one byte at a time, several frames in one read, small buffers, and
    // reads that find nothing yet (0: the inner stream is pending).
    for sizes in [
        vec![1],
        vec![2, 3],
        vec![7],
        vec![11, 1],
        vec![64],
        vec![1 << 20],
        vec![0, 5, 0, 0, 3],
    ] {
        for out in [1, 5, 13, 4096] {
            assert_eq!(through(&stream, &sizes, out), stream, "{sizes:?} {out}");
        }
    }
    for split in 0..stream.len() {
        assert_eq!(
            through(&stream, &[split.max(1), stream.len()], 4096),
            stream,
            "{split}"
        );
    }
}

#[test]
fn frames_of_the_largest_size_pass_unchanged() {
    // A body frame of the default frame_max, and a content header nearly that large.
    let big_body = body(1, &vec![b'x'; 131_072 - 8]);
    let mut headers = FieldTable::default();
    headers.insert(
        "junk".into(),
        AMQPValue::LongString(LongString::from("j".repeat(130_000))),
    );
    let big_header = header(1, 10, BasicProperties::default().with_headers(headers));
    let stream = [deliver(1, "a.b"), big_header, big_body].concat();
    for sizes in [vec![1000], vec![65_536], vec![1 << 20], vec![7, 100_000]] {
        assert_eq!(through(&stream, &sizes, 131_072), stream, "{sizes:?}");
        assert_eq!(through(&stream, &sizes, 4096), stream, "{sizes:?}");
    }
}

#[test]
fn a_protocol_header_and_a_stream_cut_short_pass_as_they_are() {
    let refusal = b"AMQP\x00\x00\x09\x01".to_vec();
    assert_eq!(through(&refusal, &[3], 64), refusal);
    let cut = ordinary_delivery(1, "{}");
    let cut = &cut[..cut.len() - 20];
    assert_eq!(through(cut, &[5], 64), cut);
}

#[test]
fn a_content_type_that_is_not_utf8_is_rebuilt_with_the_rest_kept() {
    // content_type (bit 15) and correlation_id (bit 10).
    let props = [&[0x84, 0x00][..], b"\x09app/\xff\xfejsn", b"\x03c-9"].concat();
    let stream = [deliver(3, "a.b"), raw_header(3, 2, &props), body(3, b"{}")].concat();
    let got = frames(&through(&stream, &[4], 4096));
    assert_eq!(got.len(), 3);
    let why = marker(&got[1]).expect("marked");
    assert!(
        why.contains("content_type") && why.contains("not UTF-8"),
        "{why}"
    );
    let AMQPFrame::Header(3, h) = &got[1] else {
        panic!()
    };
    assert_eq!(h.body_size, 2);
    assert_eq!(
        h.properties
            .correlation_id()
            .as_ref()
            .map(ShortString::as_str),
        Some("c-9")
    );
    let shown = h
        .properties
        .content_type()
        .as_ref()
        .unwrap()
        .as_str()
        .to_owned();
    assert!(shown.starts_with("app/\u{FFFD}"), "{shown}");
    assert_eq!(got[2], AMQPFrame::Body(3, b"{}".to_vec()));
}

#[test]
fn headers_nested_thousands_deep_are_replaced_by_the_marker() {
    for depth in [MAX_NESTING, 2_500, 100_000] {
        let props = [&[0x20, 0x00][..], &nested_arrays(depth)].concat();
        let stream = [raw_header(1, 0, &props), deliver(1, "after")].concat();
        let got = frames(&through(&stream, &[65_536], 65_536));
        let why = marker(&got[0]).expect("marked");
        assert!(why.contains("deeper than 32"), "{why}");
        let AMQPFrame::Header(_, h) = &got[0] else {
            panic!()
        };
        assert_eq!(h.properties.headers().as_ref().unwrap().inner().len(), 1);
    }
    // Exactly at the limit: untouched.
    let props = [&[0x20, 0x00][..], &nested_arrays(MAX_NESTING - 1)].concat();
    let ok = raw_header(1, 0, &props);
    assert_eq!(through(&ok, &[9], 4096), ok);
}

#[test]
fn bad_header_names_and_unknown_types_keep_the_good_headers() {
    let good = [&[2, b'o', b'k'][..], b"S\x00\x00\x00\x02hi"].concat();
    for bad in [
        &[2, 0xc3, 0x28, b'V'][..],
        &[3, b'b', b'a', b'd', b'Z', 0, 0],
    ] {
        // A bad entry beside a good one: the table is dropped whole, the marker says why.
        let props = [
            &[0x20, 0x00][..],
            &table(&[good.clone(), bad.to_vec()].concat()),
        ]
        .concat();
        let got = frames(&through(&raw_header(1, 0, &props), &[100], 4096));
        let why = marker(&got[0]).expect("marked");
        assert!(
            why.contains("not UTF-8") || why.contains("unknown type"),
            "{why}"
        );
    }
}

#[test]
fn trailing_bytes_and_cut_properties_give_the_marker_alone() {
    let trailing = [&[0x80, 0x00][..], b"\x01a", b"junk"].concat();
    let cut = [&[0x80, 0x00][..], b"\x09a"].concat();
    for props in [trailing, cut] {
        let got = frames(&through(&raw_header(5, 3, &props), &[100], 4096));
        assert!(marker(&got[0]).is_some());
        let AMQPFrame::Header(5, h) = &got[0] else {
            panic!()
        };
        assert_eq!(h.body_size, 3);
    }
}

#[test]
fn a_header_frame_without_its_frame_end_is_rebuilt_with_one() {
    // The guard's checks are the only judge of a header (it no longer parses each one
    // again), so the frame-end octet is theirs to check too.
    let mut frame = raw_header(5, 3, &[0x80, 0x00, 1, b'a']);
    *frame.last_mut().unwrap() = 0;
    let got = frames(&through(&frame, &[100], 4096));
    let reason = marker(&got[0]).expect("marked");
    assert!(reason.contains("frame-end"), "{reason}");
}

#[test]
fn a_routing_key_that_is_not_utf8_marks_its_delivery_only() {
    let mut bad = deliver(2, "a.bXY");
    let at = bad.len() - 3;
    bad[at..at + 2].copy_from_slice(&[0xff, 0xfe]);
    let stream = [
        bad,
        header(
            2,
            2,
            BasicProperties::default().with_message_id("m-1".into()),
        ),
        body(2, b"{}"),
        ordinary_delivery(2, "{}"),
    ]
    .concat();
    let got = frames(&through(&stream, &[3], 4096));
    let AMQPFrame::Method(2, AMQPClass::Basic(basic::AMQPMethod::Deliver(d))) = &got[0] else {
        panic!("{:?}", got[0])
    };
    assert!(d.routing_key.as_str().starts_with("a.b\u{FFFD}"), "{d:?}");
    assert_eq!(d.delivery_tag, 7);
    let why = marker(&got[1]).expect("marked");
    assert!(why.contains("routing key"), "{why}");
    let AMQPFrame::Header(2, h) = &got[1] else {
        panic!()
    };
    assert_eq!(
        h.properties.message_id().as_ref().map(ShortString::as_str),
        Some("m-1")
    );
    // The next delivery on the channel is not marked.
    assert_eq!(marker(&got[4]), None);
}

#[test]
fn vectored_reads_fill_both_slices() {
    let stream = [
        ordinary_delivery(1, "{\"n\": 1}"),
        ordinary_delivery(1, "{\"n\": 2}"),
    ]
    .concat();
    let inner = Chunked {
        bytes: stream.clone(),
        at: 0,
        sizes: vec![1 << 20],
        turn: 0,
    };
    let mut guard = FrameGuard::new(inner);
    let (mut a, mut b) = (vec![0; 30], vec![0; 4096]);
    let mut got = Vec::new();
    futures_lite::future::block_on(async {
        loop {
            let mut slices = [io::IoSliceMut::new(&mut a), io::IoSliceMut::new(&mut b)];
            let n = guard.read_vectored(&mut slices).await.unwrap();
            if n == 0 {
                break;
            }
            let first = n.min(30);
            got.extend_from_slice(&a[..first]);
            got.extend_from_slice(&b[..n - first]);
        }
    });
    assert_eq!(got, stream);
}

#[test]
fn a_rebuilt_header_is_never_longer_than_the_frame_it_replaces() {
    // A content header of exactly the default frame_max: valid headers that fill it, and a
    // content type that is not UTF-8 (its repair and the marker would make it longer).
    let filler = |n: usize| {
        let mut entry = vec![4, b'j', b'u', b'n', b'k', b'S'];
        entry.extend((n as u32).to_be_bytes());
        entry.extend(vec![b'j'; n]);
        table(&entry)
    };
    let props = |n: usize| [&[0xA0, 0x00][..], b"\x01\xff", &filler(n)].concat();
    let n = 131_072 - raw_header(1, 0, &props(0)).len();
    let frame = raw_header(1, 0, &props(n));
    assert_eq!(frame.len(), 131_072);
    let out = through(&frame, &[1 << 20], 1 << 20);
    assert!(out.len() <= frame.len(), "{} > {}", out.len(), frame.len());
    let got = frames(&out);
    let why = marker(&got[0]).expect("marked");
    assert!(why.contains("content_type"), "{why}");
    let AMQPFrame::Header(_, h) = &got[0] else {
        panic!()
    };
    let headers = h.properties.headers().as_ref().unwrap();
    assert_eq!(headers.inner().len(), 1, "the headers dropped");
    assert!(
        h.properties.content_type().is_some(),
        "the content type kept"
    );
}

#[test]
fn a_publishers_own_marker_is_replaced_by_the_guards() {
    let mut headers = FieldTable::default();
    let forged = AMQPValue::LongString(LongString::from("forged"));
    headers.insert(MALFORMED_HEADER.into(), forged);
    headers.insert("ok".into(), AMQPValue::Boolean(true));
    let frame = header(1, 0, BasicProperties::default().with_headers(headers));
    let got = frames(&through(&frame, &[100], 4096));
    let why = marker(&got[0]).expect("marked");
    assert!(
        why.contains("the publisher set x-tchu-malformed itself"),
        "{why}"
    );
    let AMQPFrame::Header(_, h) = &got[0] else {
        panic!()
    };
    assert!(
        h.properties
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .contains_key("ok")
    );
}
