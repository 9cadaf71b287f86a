//! Observability: metrics through the `metrics` facade, and W3C trace context carried in message
//! headers so a trace follows an event from service to service.
//!
//! # Metrics
//! Recorded through whatever `metrics` recorder the application installs. Per-handler handles
//! are registered once, so a delivery costs a few atomic operations and no allocation. With the `prometheus` feature, `tchu::run!()` serves them on
//! `TCHU_METRICS_ADDR` (e.g. `0.0.0.0:9464`). Install a recorder before starting a service: the
//! per-handler handles are registered at start.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `tchu_handled_total` | counter | `queue`, `handler` |
//! | `tchu_failed_total` | counter | `queue`, `handler`, `kind` (`failed`, `rejected`, `panicked`) |
//! | `tchu_retried_total` | counter | `queue`, `handler` |
//! | `tchu_dead_lettered_total` | counter | `queue`, `reason` (handler failure kind, `undecodable`, `no_handler`, `too_large`) |
//! | `tchu_handler_duration_seconds` | histogram | `queue`, `handler` |
//! | `tchu_in_flight` | gauge | `queue`; handler runs in progress (a delivery matching two handlers counts two) |
//! | `tchu_published_total` | counter | `outcome` (`confirmed`, `unroutable`, `nacked`, `timeout`, `error`); every confirmed publish, retry and dead-letter copies included |
//! | `tchu_publish_confirm_seconds` | histogram | |
//!
//! # Trace context
//! Every message tchu publishes carries a `traceparent` header
//! (`00-<trace id>-<parent id>-<flags>`, W3C Trace Context). Published from inside a handler, it
//! continues the trace of the delivery being handled (and passes its `tracestate` on); otherwise
//! it starts a new trace. The delivery's trace id is in its log span (`trace_id`) and available
//! to handlers as [`crate::Message::trace_context`].

#[cfg(feature = "otel")]
pub mod otlp;
mod span;

use serde_json::Value;
pub(crate) use span::{Span, SpanKind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tchu_core::envelope::Headers;

pub use tchu_core::headers::{TRACEPARENT, TRACESTATE};

/// A W3C trace context: which trace a message belongs to and which span sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 16 bytes, never all zero.
    pub trace_id: u128,
    /// The span that sent the message (or, for a delivery, the span handling it).
    pub span_id: u64,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
    /// The `tracestate` header, passed on unchanged.
    pub state: Option<String>,
}

impl TraceContext {
    /// A new trace (random ids, sampled).
    pub fn new_root() -> Self {
        Self {
            trace_id: nonzero_u128(),
            span_id: nonzero_u64(),
            flags: 1,
            state: None,
        }
    }

    /// A new span in the same trace.
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero_u64(),
            ..self.clone()
        }
    }

    /// Parses a `traceparent` value (version 00; later versions by their first four fields, as
    /// the specification asks).
    pub fn parse(traceparent: &str) -> Option<Self> {
        let t = traceparent.trim();
        let mut parts = t.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2)
            || version == "ff"
            || !hex(trace, 32)
            || !hex(span, 16)
            || !hex(flags, 2)
        {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags: u8::from_str_radix(flags, 16).ok()?,
            state: None,
        })
    }

    /// The context a message's headers carry, if any valid one.
    pub fn from_headers(headers: &Headers) -> Option<Self> {
        let mut ctx = Self::parse(headers.get(TRACEPARENT)?.as_str()?)?;
        ctx.state = headers
            .get(TRACESTATE)
            .and_then(Value::as_str)
            .map(str::to_owned);
        Some(ctx)
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

fn nonzero_u128() -> u128 {
    (u128::from(fastrand::u64(..)) << 64) | u128::from(nonzero_u64())
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// Runs `fut` as the handling of a delivery in `ctx`: what it publishes continues that trace.
#[cfg(any(feature = "service", test))]
pub(crate) async fn in_trace<F: std::future::Future>(ctx: TraceContext, fut: F) -> F::Output {
    #[cfg(feature = "otel")]
    if exporting() {
        let fut = otlp::in_context(&ctx, fut);
        return CURRENT.scope(ctx, fut).await;
    }
    CURRENT.scope(ctx, fut).await
}

/// The span a message published now is a child of: the application's span in progress (with
/// the `otel` feature), else the current handler run's.
fn current_parent(current: Option<&TraceContext>) -> Option<u64> {
    let current = current?;
    #[cfg(feature = "otel")]
    if exporting()
        && let Some(span) = otlp::active_span(current.trace_id)
    {
        return Some(span);
    }
    Some(current.span_id)
}

/// The trace context of the delivery being handled by the current task, if any.
pub fn current_trace() -> Option<TraceContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Stamps an outgoing message with a `traceparent` naming a new span, the publish: a child of
/// the current handler run's span, or the root of a new trace. Returns that span's context and
/// its parent. A header already set by the caller is kept (and returned, without a parent).
pub(crate) fn stamp(headers: &mut Headers) -> (TraceContext, Option<u64>) {
    if let Some(set) = TraceContext::from_headers(headers) {
        return (set, None);
    }
    let current = current_trace();
    let ctx = current
        .as_ref()
        .map_or_else(TraceContext::new_root, TraceContext::child);
    headers.insert(TRACEPARENT.into(), ctx.traceparent().into());
    if let Some(state) = &ctx.state {
        headers.insert(TRACESTATE.into(), state.as_str().into());
    }
    (ctx, current_parent(current.as_ref()))
}

/// The span of sending `msg` (its `traceparent` names it), a child of the current handler
/// run, with the messaging attributes OpenTelemetry's conventions name.
pub(crate) fn message_span(
    name: impl FnOnce() -> String,
    kind: SpanKind,
    msg: &tchu_core::WireMessage,
    topic: &str,
) -> Span {
    if !exporting() {
        return Span::none();
    }
    let Some(ctx) = TraceContext::from_headers(&msg.headers) else {
        return Span::none();
    };
    let parent = current_parent(current_trace().as_ref());
    let mut span = Span::start(name, kind, &ctx, parent);
    span.attr("messaging.system", "rabbitmq");
    span.attr("messaging.destination.name", topic);
    if let Some(id) = &msg.properties.correlation_id {
        span.attr("messaging.message.conversation_id", id.as_str());
    }
    let celery_id = msg.celery.as_ref().map(|t| t.id.as_str());
    if let Some(id) = celery_id.or_else(|| msg.headers.get("id").and_then(Value::as_str)) {
        span.attr("messaging.message.id", id);
    }
    span
}

tokio::task_local! {
    static SERVICE: Arc<str>;
}

/// Runs `fut` as work of the service consuming `queue`: the spans it records belong to it.
/// Without the `otel` feature no span is recorded, and the scope is left out.
#[cfg(feature = "service")]
pub(crate) async fn in_service<F: std::future::Future>(queue: Arc<str>, fut: F) -> F::Output {
    if cfg!(feature = "otel") {
        SERVICE.scope(queue, fut).await
    } else {
        fut.await
    }
}

pub(crate) fn current_service() -> Option<Arc<str>> {
    SERVICE.try_with(Clone::clone).ok()
}

/// Whether spans are recorded: an OTLP exporter is installed.
static EXPORTING: AtomicBool = AtomicBool::new(false);

pub(crate) fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

#[cfg(feature = "otel")]
fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

fn export(span: span::SpanRecord) {
    #[cfg(feature = "otel")]
    otlp::send(span);
    #[cfg(not(feature = "otel"))]
    drop(span);
}

/// Records a publish's final outcome (after any retry across a reconnection) and, when
/// confirmed, its latency. Every label is a literal, so the keys are static: no allocation.
pub(crate) fn published(started: std::time::Instant, result: &crate::Result<()>) {
    use crate::Error;
    match result {
        Ok(()) => {
            metrics::counter!("tchu_published_total", "outcome" => "confirmed").increment(1);
            metrics::histogram!("tchu_publish_confirm_seconds").record(started.elapsed());
        }
        Err(Error::Unroutable { .. }) => {
            metrics::counter!("tchu_published_total", "outcome" => "unroutable").increment(1)
        }
        Err(Error::Nacked { .. }) => {
            metrics::counter!("tchu_published_total", "outcome" => "nacked").increment(1)
        }
        Err(Error::Disconnected { .. }) => {
            metrics::counter!("tchu_published_total", "outcome" => "timeout").increment(1)
        }
        Err(_) => metrics::counter!("tchu_published_total", "outcome" => "error").increment(1),
    }
}

/// A trace id shown in logs without a `String` per delivery.
#[cfg(feature = "service")]
pub(crate) struct TraceIdHex(pub u128);

#[cfg(feature = "service")]
impl std::fmt::Display for TraceIdHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// With the `prometheus` feature and `TCHU_METRICS_ADDR` set, serves `/metrics` there.
///
/// # Errors
/// [`crate::Error::Metrics`] when the address does not parse or the exporter cannot start;
/// [`crate::Error::FeatureMissing`] when the address is set in a build without `prometheus`.
pub fn install_prometheus_from_env() -> crate::Result<bool> {
    let Some(addr) = std::env::var(METRICS_ADDR_ENV)
        .ok()
        .filter(|a| !a.is_empty())
    else {
        return Ok(false);
    };
    #[cfg(feature = "prometheus")]
    {
        let metrics_error =
            |source: Box<dyn std::error::Error + Send + Sync>| crate::Error::Metrics {
                addr: addr.clone(),
                source,
            };
        let socket: std::net::SocketAddr = addr.parse().map_err(|e| metrics_error(Box::new(e)))?;
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(socket)
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ])
            .and_then(|b| b.install())
            .map_err(|e| metrics_error(Box::new(e)))?;
        tracing::info!(%addr, "serving Prometheus metrics on /metrics");
        Ok(true)
    }
    #[cfg(not(feature = "prometheus"))]
    {
        Err(crate::Error::FeatureMissing {
            feature: "prometheus",
            needed_for: format!("{METRICS_ADDR_ENV}={addr}"),
        })
    }
}

/// Environment variable: the address of the Prometheus endpoint (`prometheus` feature).
pub const METRICS_ADDR_ENV: &str = "TCHU_METRICS_ADDR";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_malformed_values() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = TraceContext::parse(v).unwrap();
        assert_eq!(c.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(c.span_id, 0x00f067aa0ba902b7);
        assert_eq!(c.traceparent(), v);
        let child = c.child();
        assert_eq!(child.trace_id, c.trace_id);
        assert_ne!(child.span_id, c.span_id);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        // A later version may add fields; the first four still count.
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
        let root = TraceContext::new_root();
        assert_eq!(TraceContext::parse(&root.traceparent()), Some(root));
    }

    #[tokio::test]
    async fn stamping_continues_the_current_trace_or_starts_one() {
        let mut h = Headers::new();
        stamp(&mut h);
        let root = TraceContext::from_headers(&h).unwrap();
        let parent = TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .map(|mut c| {
                c.state = Some("congo=t61rcWkgMzE".into());
                c
            })
            .unwrap();
        let mut inside = Headers::new();
        let (sent, sender) = in_trace(parent.clone(), async { stamp(&mut inside) }).await;
        let got = TraceContext::from_headers(&inside).unwrap();
        assert_eq!(got, sent, "the header names the publish span");
        assert_eq!(got.trace_id, parent.trace_id);
        assert_ne!(got.span_id, parent.span_id, "a span of its own");
        assert_eq!(sender, Some(parent.span_id), "a child of the handler run");
        assert_eq!(got.state.as_deref(), Some("congo=t61rcWkgMzE"));
        assert_ne!(root.trace_id, parent.trace_id);
    }
}
