//! Spans of tchu's own work (publish, delivery, handler run, retry, RPC call and answer), named
//! by the same ids the `traceparent` header carries, so a trace exported by several services
//! joins up. Recorded only while an OTLP exporter is installed (`otel` feature); otherwise a
//! [`Span`] is an empty shell and costs nothing.

use super::TraceContext;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

/// What a span stands for (OTLP's `SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    not(feature = "service"),
    allow(dead_code, reason = "a publish-only build records no deliveries")
)]
pub(crate) enum SpanKind {
    Internal = 1,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        Self::Str(v.to_owned())
    }
}

impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        Self::Str(v)
    }
}

impl From<u32> for AttrValue {
    fn from(v: u32) -> Self {
        Self::Int(i64::from(v))
    }
}

impl From<u64> for AttrValue {
    fn from(v: u64) -> Self {
        Self::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

/// A finished span, as the exporter sends it.
#[derive(Debug, Clone)]
#[cfg_attr(
    not(feature = "otel"),
    allow(dead_code, reason = "read by the OTLP exporter only")
)]
pub(crate) struct SpanRecord {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    pub(crate) parent: Option<u64>,
    pub(crate) state: Option<String>,
    pub(crate) flags: u8,
    pub(crate) name: Cow<'static, str>,
    pub(crate) kind: SpanKind,
    /// The service it belongs to (its queue), for the `service.name` resource attribute.
    pub(crate) service: Option<Arc<str>>,
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
    pub(crate) attributes: Vec<(&'static str, AttrValue)>,
    /// `Some(message)`: the operation failed.
    pub(crate) error: Option<String>,
}

/// A span in progress; sent to the exporter when dropped (so a cancelled operation still
/// shows, ended where it stopped).
pub(crate) struct Span(Option<Box<SpanRecord>>);

impl Span {
    /// A span that records nothing.
    pub(crate) fn none() -> Self {
        Self(None)
    }

    /// Starts a span for `ctx` (its ids), child of `parent`. Empty unless an exporter is
    /// installed and the trace is sampled; `name` is only called then, so an unrecorded span
    /// allocates nothing.
    pub(crate) fn start(
        name: impl FnOnce() -> String,
        kind: SpanKind,
        ctx: &TraceContext,
        parent: Option<u64>,
    ) -> Self {
        if !super::exporting() || ctx.flags & 1 == 0 {
            return Self(None);
        }
        let now = SystemTime::now();
        Self(Some(Box::new(SpanRecord {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent,
            state: ctx.state.clone(),
            flags: ctx.flags,
            name: Cow::Owned(name()),
            kind,
            service: super::current_service(),
            start: now,
            end: now,
            attributes: Vec::new(),
            error: None,
        })))
    }

    /// Adds an attribute.
    pub(crate) fn attr(&mut self, key: &'static str, value: impl Into<AttrValue>) {
        if let Some(r) = &mut self.0 {
            r.attributes.push((key, value.into()));
        }
    }

    /// Marks the operation failed.
    pub(crate) fn fail(&mut self, message: impl std::fmt::Display) {
        if let Some(r) = &mut self.0 {
            r.error = Some(message.to_string());
        }
    }

    /// Ends the span now (dropping it does the same).
    #[cfg_attr(
        not(feature = "service"),
        allow(dead_code, reason = "a publish-only build runs no handlers")
    )]
    pub(crate) fn end(self) {}
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(mut r) = self.0.take() {
            r.end = SystemTime::now();
            super::export(*r);
        }
    }
}
