//! The spans a delivery exports (`otel` feature): its processing, each handler run, each
//! retry or dead letter it leads to, and the RPC answer. Named after OpenTelemetry's messaging
//! conventions; children of the sender's span, so one trace crosses services.

use super::inbound::Inbound;
use super::verdict::Failure;
use crate::handler::Handler;
use crate::observe::{Span, SpanKind, TraceContext};

/// The delivery's processing: `trace` is this service's span, `sender` the publisher's.
pub(super) fn process(trace: &TraceContext, sender: Option<u64>, inbound: &Inbound) -> Span {
    if !crate::observe::exporting() {
        return Span::none();
    }
    let topic = &inbound.env.topic;
    let mut span = Span::start(
        || format!("process {topic}"),
        SpanKind::Consumer,
        trace,
        sender,
    );
    span.attr("messaging.system", "rabbitmq");
    span.attr("messaging.operation.type", "process");
    span.attr("messaging.destination.name", topic.as_str());
    span.attr("messaging.message.id", inbound.env.id.as_str());
    span.attr("tchu.attempt", inbound.attempt);
    span
}

/// One handler's run, `run` its context, a child of the delivery's.
pub(super) fn handler(trace: &TraceContext, run: &TraceContext, h: &Handler, attempt: u32) -> Span {
    if !crate::observe::exporting() {
        return Span::none();
    }
    let mut span = Span::start(
        || format!("handle {}", h.name),
        SpanKind::Internal,
        run,
        Some(trace.span_id),
    );
    span.attr("tchu.handler", h.name.to_string());
    span.attr("tchu.attempt", attempt);
    span
}

/// A copy the delivery leads to: a retry scheduled on the delay tiers, or a dead letter.
pub(super) fn copy(trace: &TraceContext, f: &Failure, attempt: u32) {
    if !crate::observe::exporting() {
        return;
    }
    let handler = f.handler.as_deref().unwrap_or("-");
    let (name, delay) = match f.retry_in {
        Some(d) => (format!("retry {handler}"), Some(d)),
        None => (format!("dead-letter {handler}"), None),
    };
    let mut span = Span::start(
        || name,
        SpanKind::Producer,
        &trace.child(),
        Some(trace.span_id),
    );
    span.attr("tchu.handler", handler);
    span.attr("tchu.attempt", attempt);
    span.attr("tchu.error_kind", f.kind.as_str());
    if let Some(d) = delay {
        span.attr(
            "tchu.retry_in_ms",
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        );
    }
    span.fail(&f.reason);
}

/// The RPC answer sent back to the caller.
pub(super) fn reply(trace: &TraceContext, topic: &str) {
    let mut span = Span::start(
        || format!("reply {topic}"),
        SpanKind::Producer,
        &trace.child(),
        Some(trace.span_id),
    );
    span.attr("messaging.system", "rabbitmq");
    span.attr("messaging.destination.name", topic);
}
