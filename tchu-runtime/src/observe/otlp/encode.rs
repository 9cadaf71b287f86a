//! `ExportTraceServiceRequest` in OTLP's two HTTP encodings: protobuf (written by hand: a few
//! fields, no code generator) and JSON (ids as hex, 64-bit numbers as strings). Spans are
//! grouped by service into one `ResourceSpans` each.

use super::OtlpConfig;
use crate::observe::span::{AttrValue, SpanRecord};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

const SCOPE: &str = "tchu";

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The spans by the `service.name` they are exported under.
fn by_service<'a>(
    config: &OtlpConfig,
    spans: &'a [SpanRecord],
) -> BTreeMap<String, Vec<&'a SpanRecord>> {
    let mut out: BTreeMap<String, Vec<&SpanRecord>> = BTreeMap::new();
    for s in spans {
        let name = config
            .service_name
            .clone()
            .or_else(|| s.service.as_deref().map(str::to_owned))
            .unwrap_or_else(|| "unknown_service".to_owned());
        out.entry(name).or_default().push(s);
    }
    out
}

/// OTLP/JSON.
pub(super) fn json(config: &OtlpConfig, spans: &[SpanRecord]) -> Vec<u8> {
    let resources: Vec<Value> = by_service(config, spans)
        .into_iter()
        .map(|(service, spans)| {
            json!({
                "resource": { "attributes": [kv_json("service.name", &AttrValue::Str(service))] },
                "scopeSpans": [{
                    "scope": { "name": SCOPE, "version": env!("CARGO_PKG_VERSION") },
                    "spans": spans.iter().map(|s| span_json(s)).collect::<Vec<_>>(),
                }],
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "resourceSpans": resources })).unwrap_or_default()
}

fn span_json(s: &SpanRecord) -> Value {
    let mut v = json!({
        "traceId": format!("{:032x}", s.trace_id),
        "spanId": format!("{:016x}", s.span_id),
        "name": s.name,
        "kind": s.kind as u8,
        "startTimeUnixNano": nanos(s.start).to_string(),
        "endTimeUnixNano": nanos(s.end).to_string(),
        "attributes": s.attributes.iter().map(|(k, v)| kv_json(k, v)).collect::<Vec<_>>(),
        "flags": u32::from(s.flags),
        "status": match &s.error {
            Some(m) => json!({ "code": 2, "message": m }),
            None => json!({ "code": 0 }),
        },
    });
    if let Some(p) = s.parent {
        v["parentSpanId"] = format!("{p:016x}").into();
    }
    if let Some(state) = &s.state {
        v["traceState"] = state.as_str().into();
    }
    v
}

fn kv_json(key: &str, value: &AttrValue) -> Value {
    let value = match value {
        AttrValue::Str(s) => json!({ "stringValue": s }),
        AttrValue::Int(i) => json!({ "intValue": i.to_string() }),
        AttrValue::Bool(b) => json!({ "boolValue": b }),
    };
    json!({ "key": key, "value": value })
}

/// OTLP/protobuf.
pub(super) fn protobuf(config: &OtlpConfig, spans: &[SpanRecord]) -> Vec<u8> {
    let mut request = Vec::new();
    for (service, spans) in by_service(config, spans) {
        let mut resource = Vec::new();
        message(
            &mut resource,
            1,
            &kv_proto("service.name", &AttrValue::Str(service)),
        );
        let mut scope = Vec::new();
        string(&mut scope, 1, SCOPE);
        string(&mut scope, 2, env!("CARGO_PKG_VERSION"));
        let mut scope_spans = Vec::new();
        message(&mut scope_spans, 1, &scope);
        for s in spans {
            message(&mut scope_spans, 2, &span_proto(s));
        }
        let mut resource_spans = Vec::new();
        message(&mut resource_spans, 1, &resource);
        message(&mut resource_spans, 2, &scope_spans);
        message(&mut request, 1, &resource_spans);
    }
    request
}

fn span_proto(s: &SpanRecord) -> Vec<u8> {
    let mut b = Vec::new();
    bytes(&mut b, 1, &s.trace_id.to_be_bytes());
    bytes(&mut b, 2, &s.span_id.to_be_bytes());
    if let Some(state) = &s.state {
        string(&mut b, 3, state);
    }
    if let Some(p) = s.parent {
        bytes(&mut b, 4, &p.to_be_bytes());
    }
    string(&mut b, 5, &s.name);
    varint_field(&mut b, 6, s.kind as u64);
    fixed64(&mut b, 7, nanos(s.start));
    fixed64(&mut b, 8, nanos(s.end));
    for (k, v) in &s.attributes {
        message(&mut b, 9, &kv_proto(k, v));
    }
    let mut status = Vec::new();
    if let Some(m) = &s.error {
        string(&mut status, 2, m);
        varint_field(&mut status, 3, 2);
    }
    message(&mut b, 15, &status);
    varint(&mut b, (16 << 3) | 5); // flags: fixed32 (a tag over 127 takes two bytes)
    b.extend_from_slice(&u32::from(s.flags).to_le_bytes());
    b
}

fn kv_proto(key: &str, value: &AttrValue) -> Vec<u8> {
    let mut any = Vec::new();
    match value {
        AttrValue::Str(s) => string(&mut any, 1, s),
        AttrValue::Bool(v) => varint_field(&mut any, 2, u64::from(*v)),
        #[allow(
            clippy::cast_sign_loss,
            reason = "protobuf's int64 is the two's complement"
        )]
        AttrValue::Int(i) => varint_field(&mut any, 3, *i as u64),
    }
    let mut kv = Vec::new();
    string(&mut kv, 1, key);
    message(&mut kv, 2, &any);
    kv
}

fn varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn varint_field(b: &mut Vec<u8>, field: u32, v: u64) {
    varint(b, u64::from(field) << 3);
    varint(b, v);
}

fn fixed64(b: &mut Vec<u8>, field: u32, v: u64) {
    varint(b, (u64::from(field) << 3) | 1);
    b.extend_from_slice(&v.to_le_bytes());
}

fn bytes(b: &mut Vec<u8>, field: u32, v: &[u8]) {
    varint(b, (u64::from(field) << 3) | 2);
    varint(b, v.len() as u64);
    b.extend_from_slice(v);
}

fn string(b: &mut Vec<u8>, field: u32, v: &str) {
    bytes(b, field, v.as_bytes());
}

fn message(b: &mut Vec<u8>, field: u32, v: &[u8]) {
    bytes(b, field, v);
}
