//! The OpenTelemetry export (`otel` feature): tchu's spans and the application's own
//! `tracing` spans, in one trace, through the OpenTelemetry SDK's batch processors and its
//! OTLP exporter: `http/protobuf` (the OTLP default), `http/json` or `grpc`, retrying on
//! 429, 502, 503 and 504 (gRPC: `UNAVAILABLE` and throttling) with backoff.
//!
//! A handler runs inside the OpenTelemetry context of its `handle` span, so a span the
//! application opens there (a database query, an HTTP call) is that span's child, and what it
//! publishes from inside its own span is a child of that span. For the application's spans to
//! be exported, its subscriber needs [`layer`]: `tchu::run!()` adds it to the subscriber it
//! installs; a service with its own subscriber adds it itself:
//!
//! ```no_run
//! use tracing_subscriber::prelude::*;
//! tracing_subscriber::registry()
//!     .with(tracing_subscriber::fmt::layer())
//!     .with(tchu_runtime::observe::otlp::layer())
//!     .init();
//! ```
//!
//! Configured from the standard variables by [`install_from_env`], which `tchu::run!()` calls:
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT` (with
//! `/v1/traces` appended for HTTP), `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_SERVICE_NAME`, `OTEL_SDK_DISABLED`. Nothing is exported until one of the endpoints
//! is set or [`install`] is called.

mod convert;
mod http;
mod pipeline;

use super::span::SpanRecord;
use crate::broker_url::percent_decode;
use std::time::Duration;

/// How spans are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Protocol {
    /// `http/protobuf`, the OTLP default.
    #[default]
    HttpProtobuf,
    /// `http/json`.
    HttpJson,
    /// `grpc` (port 4317).
    Grpc,
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The full URL spans are posted to (`http://127.0.0.1:4318/v1/traces`), or for gRPC the
    /// collector's address (`http://127.0.0.1:4317`).
    pub endpoint: String,
    /// The encoding.
    pub protocol: Protocol,
    /// `service.name` of every span; `None`: each service's queue name (a plain client's
    /// spans: `unknown_service`).
    pub service_name: Option<String>,
    /// Extra request headers (an API key).
    pub headers: Vec<(String, String)>,
}

impl OtlpConfig {
    /// `http/protobuf` to `endpoint`, no extra headers, services named by their queues.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            protocol: Protocol::default(),
            service_name: None,
            headers: Vec::new(),
        }
    }

    /// The configuration the standard `OTEL_*` variables describe, if they name an endpoint.
    ///
    /// # Errors
    /// A text for an unknown protocol.
    pub fn from_env() -> Result<Option<Self>, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let protocol = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .as_deref()
        {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("http/json") => Protocol::HttpJson,
            Some("grpc") => Protocol::Grpc,
            Some(other) => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other}: tchu exports `http/protobuf`, \
                     `http/json` or `grpc`"
                ));
            }
        };
        let endpoint = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(e), _) => e,
            (None, Some(base)) if protocol == Protocol::Grpc => base,
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        let headers = var("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
            .or_else(|| var("OTEL_EXPORTER_OTLP_HEADERS"))
            .map(|h| {
                h.split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (percent_decode(k.trim()), percent_decode(v.trim())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(Self {
            endpoint,
            protocol,
            service_name: var("OTEL_SERVICE_NAME"),
            headers,
        }))
    }
}

/// Starts exporting to `config` (replacing an exporter installed before). Call it inside the
/// tokio runtime for gRPC: its channels are built there.
pub fn install(config: OtlpConfig) {
    pipeline::install(config);
    super::set_exporting(true);
}

/// [`install`] with [`OtlpConfig::from_env`]; `Ok(false)` when no endpoint is configured.
///
/// # Errors
/// [`crate::Error::Telemetry`] for a configuration tchu cannot export with (an unknown
/// protocol).
pub fn install_from_env() -> crate::Result<bool> {
    match OtlpConfig::from_env().map_err(crate::Error::Telemetry)? {
        Some(config) => {
            tracing::info!(endpoint = %config.endpoint, protocol = ?config.protocol, "exporting spans over OTLP");
            install(config);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Sends every span ended so far, each batch waiting for its export (and its retries); call
/// before the process exits (`tchu::run!()` does). Blocks the calling thread: from async code,
/// call it through `spawn_blocking`.
pub fn flush(timeout: Duration) {
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        pipeline::flush();
        let _ = done.send(());
    });
    let _ = wait.recv_timeout(timeout);
}

pub(crate) fn send(span: SpanRecord) {
    let service = span.service.clone();
    pipeline::export(service.as_deref(), convert::span_data(span));
}

/// The layer that exports the application's `tracing` spans with tchu's: each is a child of
/// the span it was opened in, or of the `handle` span of the handler it runs in. tchu's own
/// `tracing` spans (its log context) are left out: tchu exports its spans itself. Exports
/// nothing until an exporter is [installed](install).
pub fn layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    let tracer = pipeline::provider().tracer("tchu");
    let not_tchu =
        tracing_subscriber::filter::filter_fn(|meta| super::exporting() && !is_tchu(meta.target()));
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(not_tchu)
}

/// Whether a `tracing` target is one of tchu's own crates (not one whose name starts alike), or
/// OpenTelemetry's (its own diagnostics must not become spans it exports).
fn is_tchu(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    matches!(krate, "tchu" | "tchu_runtime" | "tchu_core" | "tchu_macros")
        || krate.starts_with("opentelemetry")
}

/// Runs `fut` in the OpenTelemetry context of the span `ctx` names, so that spans opened in it
/// are its children.
#[cfg(feature = "service")]
pub(crate) fn in_context<F: std::future::Future>(
    ctx: &super::TraceContext,
    fut: F,
) -> impl std::future::Future<Output = F::Output> + use<F> {
    use opentelemetry::context::FutureExt as _;
    use opentelemetry::trace::TraceContextExt as _;
    let cx = opentelemetry::Context::new().with_remote_span_context(convert::span_context(ctx));
    fut.with_context(cx)
}

/// The application's span in progress on this thread, if it belongs to `trace_id`.
pub(crate) fn active_span(trace_id: u128) -> Option<u64> {
    use opentelemetry::trace::TraceContextExt as _;
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    let same = sc.is_valid() && u128::from_be_bytes(sc.trace_id().to_bytes()) == trace_id;
    same.then(|| u64::from_be_bytes(sc.span_id().to_bytes()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_tchus_own_targets_are_left_to_tchu() {
        for own in [
            "tchu",
            "tchu_runtime::dispatch",
            "tchu::observe",
            "opentelemetry_sdk",
        ] {
            assert!(super::is_tchu(own), "{own}");
        }
        for user in ["tchu_downstream", "tchucker::db", "app::tchu"] {
            assert!(!super::is_tchu(user), "{user}");
        }
    }
}
