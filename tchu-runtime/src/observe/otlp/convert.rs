//! tchu's spans as the OpenTelemetry SDK's: the same ids the `traceparent` headers carry.

use super::super::span::{AttrValue, SpanKind, SpanRecord};
use opentelemetry::trace::{SpanContext, SpanId, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::str::FromStr;

/// The OpenTelemetry span context of a tchu trace context.
#[cfg(feature = "service")]
pub(super) fn span_context(ctx: &super::super::TraceContext) -> SpanContext {
    context(ctx.trace_id, ctx.span_id, ctx.flags, ctx.state.as_deref())
}

fn context(trace_id: u128, span_id: u64, flags: u8, state: Option<&str>) -> SpanContext {
    let state = state
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    SpanContext::new(
        TraceId::from_bytes(trace_id.to_be_bytes()),
        SpanId::from_bytes(span_id.to_be_bytes()),
        TraceFlags::new(flags),
        false,
        state,
    )
}

/// A finished tchu span, for the batch processor.
pub(super) fn span_data(r: SpanRecord) -> SpanData {
    let kind = match r.kind {
        SpanKind::Internal => opentelemetry::trace::SpanKind::Internal,
        SpanKind::Client => opentelemetry::trace::SpanKind::Client,
        SpanKind::Producer => opentelemetry::trace::SpanKind::Producer,
        SpanKind::Consumer => opentelemetry::trace::SpanKind::Consumer,
    };
    let attributes = (r.attributes.into_iter())
        .map(|(k, v)| match v {
            AttrValue::Str(s) => KeyValue::new(k, s),
            AttrValue::Int(i) => KeyValue::new(k, i),
            AttrValue::Bool(b) => KeyValue::new(k, b),
        })
        .collect();
    SpanData {
        span_context: context(r.trace_id, r.span_id, r.flags, r.state.as_deref()),
        parent_span_id: r
            .parent
            .map_or(SpanId::INVALID, |p| SpanId::from_bytes(p.to_be_bytes())),
        // A delivery's parent is its sender's publish, in another process.
        parent_span_is_remote: r.kind == SpanKind::Consumer && r.parent.is_some(),
        span_kind: kind,
        name: r.name,
        start_time: r.start,
        end_time: r.end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: r.error.map_or(Status::Unset, Status::error),
        instrumentation_scope: InstrumentationScope::builder("tchu").build(),
    }
}
