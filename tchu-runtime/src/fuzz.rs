//! A bounded fuzz run over the decode path, as a unit test so that CI runs it every time:
//! envelope decoding of every format, AMQP frame and field-table parsing, the AMQP-to-JSON
//! header conversion, and admission. Seeds come from `fuzz/corpus/` (kept in the repository);
//! mutations are drawn from a fixed seed, so a failure reproduces. The oracles: nothing panics
//! or overflows the stack, and well-framed field tables always parse back to what was written.

use crate::amqp::table_to_json as table_to_map;
use crate::dispatch::{Limits, SigningKey, admit};
use crate::transport::guard::{self, table::MAX_NESTING};
use lapin::types::parsing::parse_field_table;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};
use tchu_core::envelope::{WireMessage, decode};

/// How long each target runs at most, and how many inputs it tries.
const BUDGET: Duration = Duration::from_millis(1500);
const ROUNDS: usize = 100_000;

fn corpus(prefix: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    seeds.sort();
    assert!(
        !seeds.is_empty(),
        "no `{prefix}*` seeds in {}",
        dir.display()
    );
    seeds.into_iter().map(|(_, b)| b).collect()
}

/// One mutation of `input`: bit flips, byte changes, insertions, deletions, a length field
/// set to an extreme, or a splice of itself.
fn mutate(rng: &mut fastrand::Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.usize(1..4) {
        let len = out.len();
        match rng.u8(0..6) {
            0 if len > 0 => {
                let i = rng.usize(0..len);
                out[i] ^= 1 << rng.u8(0..8);
            }
            1 if len > 0 => {
                let i = rng.usize(0..len);
                out[i] = [0, 0xff, 0x7f, 0x80, b'A', b'F', b'S', b'"'][rng.usize(0..8)];
            }
            2 => {
                let i = rng.usize(0..=len);
                let n = rng.usize(1..16);
                out.splice(i..i, (0..n).map(|_| rng.u8(..)));
            }
            3 if len > 0 => {
                let i = rng.usize(0..len);
                let n = rng.usize(1..=(len - i).min(16));
                out.drain(i..i + n);
            }
            4 if len >= 4 => {
                let i = rng.usize(0..len - 3);
                let v: u32 = [0, 1, 0x7fff_ffff, 0xffff_ffff][rng.usize(0..4)];
                out[i..i + 4].copy_from_slice(&v.to_be_bytes());
            }
            _ if len > 1 => {
                let (a, b) = (rng.usize(0..len), rng.usize(0..len));
                let (a, b) = (a.min(b), a.max(b));
                let piece = out[a..b].to_vec();
                let at = rng.usize(0..=out.len());
                out.splice(at..at, piece);
            }
            _ => out.push(rng.u8(..)),
        }
    }
    out
}

/// Runs `target` on mutations of the seeds; a panic fails with the input that caused it.
fn run(name: &str, prefix: &str, seed: u64, mut target: impl FnMut(&[u8])) {
    let seeds = corpus(prefix);
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    for round in 0..ROUNDS {
        if started.elapsed() > BUDGET {
            break;
        }
        let input = if round < seeds.len() {
            seeds[round].clone()
        } else {
            let pick = rng.usize(0..seeds.len());
            mutate(&mut rng, &seeds[pick])
        };
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            panic!("{name}: panicked on input {:02x?}", input);
        }
    }
}

/// A message as a stranger could send it, with `body` and the headers `table` parses to.
fn message(body: &[u8], headers: serde_json::Map<String, serde_json::Value>) -> WireMessage {
    WireMessage {
        routing_key: "fuzz.topic".into(),
        headers,
        body: body.to_vec(),
        ..WireMessage::default()
    }
}

fn admit_quietly(mut msg: WireMessage) {
    let key = SigningKey::from_secret(b"fuzz");
    let limits = Limits {
        max_bytes: 1 << 20,
        redelivery_limit: 5,
        key: &key,
        quarantined: true,
    };
    let _ = admit(&mut msg, &limits);
}

#[test]
fn envelopes_of_every_format_decode_or_fail_cleanly() {
    run("decode", "body_", 1, |body| {
        let _ = decode(&message(body, Default::default()));
        let mut v2 = message(body, Default::default());
        v2.headers
            .insert("task".into(), "tchu_tchu.dispatch_event".into());
        v2.headers.insert("id".into(), "fuzz".into());
        let _ = decode(&v2);
        admit_quietly(v2);
    });
}

/// Field tables as a stranger could write them: they parse or are refused; a parsed one
/// converts to JSON and is admitted without a panic; and read as a service reads a delivery
/// (Celery's headers typed when they are tchu-tchu's), it holds exactly the same headers.
#[test]
fn field_tables_parse_convert_and_admit_or_fail_cleanly() {
    run("field table", "table_", 2, |bytes| {
        if let Ok((_, table)) = parse_field_table(bytes) {
            let headers = table_to_map(&table);
            let props = lapin::BasicProperties::default().with_headers(table);
            let received = crate::transport::from_delivery("a.b", &props, b"{}".to_vec());
            assert_eq!(
                received.all_headers(),
                headers,
                "the typed read lost or changed one"
            );
            admit_quietly(received);
            admit_quietly(message(br#"{"a": 1}"#, headers));
        }
    });
}

/// The seed of tchu-tchu's Celery headers, as `TchuClient` and tchu write them: it takes the
/// typed read, so the fuzz run mutates that path too.
#[test]
fn the_celery_headers_seed_is_read_typed() {
    let seed = corpus("table_celery");
    let (_, table) = parse_field_table(seed[0].as_slice()).expect("the seed parses");
    let props = lapin::BasicProperties::default().with_headers(table);
    let received = crate::transport::from_delivery("a.b", &props, b"{}".to_vec());
    assert!(received.celery.is_some(), "{:?}", received.headers);
}

#[test]
fn frames_parse_or_fail_cleanly() {
    run("frame", "frame_", 3, |bytes| {
        let _ = amq_protocol::frame::parsing::parse_frame(bytes);
    });
}

/// The frame guard on mutated streams of frames, read in random splits. The oracles: nothing
/// panics; every content header it hands on parses with the published parser (what lapin
/// reads), and every `basic.deliver` it hands on has UTF-8 texts; a stream whose frames all
/// parse passes unchanged.
#[test]
fn frames_through_the_guard_parse_or_pass_unchanged() {
    let mut seeds = corpus("frame_");
    seeds.push(guard::tests::ordinary_delivery(1, r#"{"n": 1}"#));
    seeds.push(seeds.concat());
    let mut rng = fastrand::Rng::with_seed(5);
    let started = Instant::now();
    for round in 0..ROUNDS {
        if started.elapsed() > BUDGET {
            break;
        }
        let seed = &seeds[rng.usize(0..seeds.len())];
        let input = if round < seeds.len() {
            seed.clone()
        } else {
            mutate(&mut rng, seed)
        };
        let sizes: Vec<usize> = (0..3).map(|_| rng.usize(1..64)).collect();
        let output = guard::tests::through(&input, &sizes, rng.usize(1..256));
        if all_parse(&input) {
            assert_eq!(output, input, "changed a stream that parses: {input:02x?}");
        }
        check_handed_on(&input, &output);
    }
}

/// Whether every byte of `bytes` is whole frames the published parser takes.
fn all_parse(mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        match amq_protocol::frame::parse_frame(bytes) {
            Ok((rest, _)) => bytes = rest,
            Err(_) => return false,
        }
    }
    true
}

/// The frames in `bytes`, as far as their prefixes say (a protocol header ends the walk).
fn frames_of(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while bytes.len() >= 7 && bytes[0] != b'A' {
        let size = u32::from_be_bytes([bytes[3], bytes[4], bytes[5], bytes[6]]) as usize;
        let Some(frame) = bytes.get(..size + 8) else {
            break;
        };
        out.push(frame);
        bytes = &bytes[size + 8..];
    }
    out
}

/// The guard's oracle over what it handed on, frame by frame: content headers parse and are
/// no longer than the largest frame it was given (or 4096 bytes, the smallest `frame_max`),
/// and the methods carrying a routing key have UTF-8 texts.
fn check_handed_on(input: &[u8], output: &[u8]) {
    let largest = frames_of(input).iter().map(|f| f.len()).max().unwrap_or(0);
    for frame in frames_of(output) {
        let payload = &frame[7..frame.len() - 1];
        if frame[0] == 2 && payload.len() >= 14 {
            let parsed = amq_protocol::frame::parse_frame(frame);
            assert!(
                parsed.is_ok(),
                "handed on a header lapin refuses: {frame:02x?}"
            );
            assert!(
                frame.len() <= largest.max(4096),
                "grew past its frame: {frame:02x?}"
            );
        }
        if frame[0] == 1 && payload.len() >= 4 && payload[..2] == [0, 60] {
            let method = u16::from_be_bytes([payload[2], payload[3]]);
            assert!(method_texts_are_utf8(method, &payload[4..]), "{frame:02x?}");
        }
    }
}

/// Whether the texts of `basic.deliver`, `basic.get-ok` or `basic.return` are UTF-8 (other
/// methods: true); one cut short is a broken frame of the broker's (the guard leaves it to
/// lapin), not a stranger's.
fn method_texts_are_utf8(method: u16, args: &[u8]) -> bool {
    // Each field: Some(n) for n bytes skipped, None for a short string.
    let layout: &[Option<usize>] = match method {
        60 => &[None, Some(9), None, None],
        71 => &[Some(9), None, None],
        50 => &[Some(2), None, None, None],
        _ => return true,
    };
    let (mut at, mut texts) = (0, Vec::new());
    for field in layout {
        match field {
            Some(n) => at += n,
            None => {
                let Some(&len) = args.get(at) else {
                    return true;
                };
                let Some(text) = args.get(at + 1..at + 1 + len as usize) else {
                    return true;
                };
                texts.push(text);
                at += 1 + len as usize;
            }
        }
    }
    texts.iter().all(|t| std::str::from_utf8(t).is_ok())
}

/// Field tables written by the rules parse back to exactly what was written, at any nesting up
/// to the limit, whatever their strings hold.
#[test]
fn well_framed_field_tables_always_parse() {
    let mut rng = fastrand::Rng::with_seed(4);
    let started = Instant::now();
    for _ in 0..20_000 {
        if started.elapsed() > BUDGET {
            break;
        }
        let depth = rng.u32(0..MAX_NESTING as u32);
        let table = random_table(&mut rng, depth);
        let bytes = encode_table(&table);
        let parsed = parse_field_table(&bytes[..]).map(|(rest, t)| (rest.len(), t));
        assert_eq!(parsed, Ok((0, table.clone())), "{bytes:02x?}");
    }
}

fn random_text(rng: &mut fastrand::Rng) -> String {
    (0..rng.usize(0..20))
        .map(|_| ['a', 'é', '😀', '"', '\\', '\0', ' '][rng.usize(0..7)])
        .collect()
}

fn random_value(rng: &mut fastrand::Rng, depth: u32) -> AMQPValue {
    match rng.u8(0..if depth > 0 { 6 } else { 4 }) {
        0 => AMQPValue::Boolean(rng.bool()),
        1 => AMQPValue::LongInt(rng.i32(..)),
        2 => AMQPValue::LongLongInt(rng.i64(..)),
        3 => AMQPValue::LongString(LongString::from(random_text(rng))),
        4 => AMQPValue::FieldArray(FieldArray::from(
            (0..rng.usize(0..3))
                .map(|_| random_value(rng, depth - 1))
                .collect::<Vec<_>>(),
        )),
        _ => AMQPValue::FieldTable(random_table(rng, depth - 1)),
    }
}

fn random_table(rng: &mut fastrand::Rng, depth: u32) -> FieldTable {
    let mut t = FieldTable::default();
    for _ in 0..rng.usize(0..4) {
        let key: String = random_text(rng).chars().take(40).collect();
        t.insert(key.into(), random_value(rng, depth));
    }
    t
}

/// The AMQP 0-9-1 encoding of a field table (the subset of types `random_value` makes).
fn encode_table(t: &FieldTable) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in t.inner() {
        body.push(k.as_str().len() as u8);
        body.extend_from_slice(k.as_str().as_bytes());
        encode_value(v, &mut body);
    }
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

fn encode_value(v: &AMQPValue, out: &mut Vec<u8>) {
    match v {
        AMQPValue::Boolean(b) => out.extend([b't', u8::from(*b)]),
        AMQPValue::LongInt(i) => {
            out.push(b'I');
            out.extend(i.to_be_bytes());
        }
        AMQPValue::LongLongInt(i) => {
            out.push(b'l');
            out.extend(i.to_be_bytes());
        }
        AMQPValue::LongString(s) => {
            out.push(b'S');
            out.extend((s.as_bytes().len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        AMQPValue::FieldArray(a) => {
            let mut body = Vec::new();
            for v in a.as_slice() {
                encode_value(v, &mut body);
            }
            out.push(b'A');
            out.extend((body.len() as u32).to_be_bytes());
            out.extend(body);
        }
        AMQPValue::FieldTable(t) => {
            out.push(b'F');
            out.extend(encode_table(t));
        }
        other => unreachable!("not generated: {other:?}"),
    }
}
