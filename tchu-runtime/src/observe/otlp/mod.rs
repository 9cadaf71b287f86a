//! The OTLP/HTTP span exporter (`otel` feature): tchu's spans, batched on a thread of their own
//! and sent to a collector as `http/protobuf` (the OTLP default) or `http/json`.
//!
//! Configured from the standard variables by [`install_from_env`], which `tchu::run!()` calls:
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT` (with
//! `/v1/traces` appended), `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_SERVICE_NAME`, `OTEL_SDK_DISABLED`. Nothing is exported until one of the endpoints
//! is set or [`install`] is called.

mod encode;

use super::span::SpanRecord;
use crate::broker_url::percent_decode;
use crate::error_chain;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How spans are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Protocol {
    /// `http/protobuf`, the OTLP default.
    #[default]
    HttpProtobuf,
    /// `http/json`.
    HttpJson,
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The full URL spans are posted to (`http://127.0.0.1:4318/v1/traces`).
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
    /// A text for an unknown protocol (`grpc` is not supported: use port 4318).
    pub fn from_env() -> Result<Option<Self>, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let endpoint = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(e), _) => e,
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        let protocol = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .as_deref()
        {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("http/json") => Protocol::HttpJson,
            Some(other) => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other}: tchu exports `http/protobuf` or \
                     `http/json` (port 4318), not gRPC"
                ));
            }
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

enum Command {
    Span(Box<SpanRecord>),
    Flush(std::sync::mpsc::Sender<()>),
}

static EXPORTER: OnceLock<Mutex<Option<SyncSender<Command>>>> = OnceLock::new();

fn slot() -> &'static Mutex<Option<SyncSender<Command>>> {
    EXPORTER.get_or_init(|| Mutex::new(None))
}

/// Spans waiting for the exporter at most; beyond, new ones are dropped (and counted in
/// `tchu_spans_dropped_total`) rather than grow without bound when the collector is away.
const QUEUE: usize = 4096;
/// Spans per request at most.
const BATCH: usize = 512;
/// How long a span waits for a batch to fill.
const LINGER: Duration = Duration::from_millis(500);

/// Starts exporting to `config` (replacing an exporter installed before).
pub fn install(config: OtlpConfig) {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    let previous = slot().lock().unwrap_or_else(|e| e.into_inner()).replace(tx);
    drop(previous); // its thread sends what it holds and ends
    super::set_exporting(true);
    std::thread::Builder::new()
        .name("tchu-otlp".into())
        .spawn(move || run(&config, &rx))
        .expect("spawn the OTLP exporter thread");
}

/// [`install`] with [`OtlpConfig::from_env`]; `Ok(false)` when no endpoint is configured.
///
/// # Errors
/// [`crate::Error::Telemetry`] for a configuration tchu cannot export with (a gRPC protocol).
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

/// Sends every span recorded so far, waiting at most `timeout`; call before the process
/// exits (`tchu::run!()` does).
/// Blocks the calling thread: from async code, call it through `spawn_blocking`.
pub fn flush(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let Some(tx) = slot().lock().unwrap_or_else(|e| e.into_inner()).clone() else {
        return;
    };
    let (done, wait) = std::sync::mpsc::channel();
    let mut command = Command::Flush(done);
    // The queue may be full behind a slow collector: never wait on it past the deadline.
    loop {
        match tx.try_send(command) {
            Ok(()) => break,
            Err(TrySendError::Full(c)) if Instant::now() < deadline => {
                command = c;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return,
        }
    }
    let _ = wait.recv_timeout(deadline.saturating_duration_since(Instant::now()));
}

pub(crate) fn send(span: SpanRecord) {
    let guard = slot().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tx) = guard.as_ref()
        && let Err(TrySendError::Full(_)) = tx.try_send(Command::Span(Box::new(span)))
    {
        metrics::counter!("tchu_spans_dropped_total").increment(1);
    }
}

/// The exporter thread: batches spans and posts them until its sender is gone.
fn run(config: &OtlpConfig, rx: &Receiver<Command>) {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut batch: Vec<SpanRecord> = Vec::new();
    let mut since = Instant::now();
    loop {
        let (flush, done) = match rx.recv_timeout(LINGER) {
            Ok(Command::Span(s)) => {
                batch.push(*s);
                (batch.len() >= BATCH || since.elapsed() >= LINGER, None)
            }
            Ok(Command::Flush(done)) => (true, Some(done)),
            Err(RecvTimeoutError::Timeout) => (true, None),
            Err(RecvTimeoutError::Disconnected) => {
                post(&agent, config, &std::mem::take(&mut batch));
                return;
            }
        };
        if flush {
            post(&agent, config, &std::mem::take(&mut batch));
            since = Instant::now();
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}

/// Posts one batch; a failure is logged and the batch dropped (tracing must never hold up
/// or crash the service).
fn post(agent: &ureq::Agent, config: &OtlpConfig, batch: &[SpanRecord]) {
    if batch.is_empty() {
        return;
    }
    let (content_type, body) = match config.protocol {
        Protocol::HttpProtobuf => ("application/x-protobuf", encode::protobuf(config, batch)),
        Protocol::HttpJson => ("application/json", encode::json(config, batch)),
    };
    let mut req = agent
        .post(&config.endpoint)
        .header("content-type", content_type);
    for (k, v) in &config.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    match req.send(&body[..]) {
        Ok(resp) if resp.status().is_success() => {}
        Ok(resp) => {
            tracing::warn!(help = "tchu::troubleshooting#otlp-export", status = %resp.status(), spans = batch.len(), "the OTLP collector refused spans")
        }
        Err(e) => {
            tracing::warn!(help = "tchu::troubleshooting#otlp-export", error = %error_chain(&e), spans = batch.len(), "could not export spans")
        }
    }
}
