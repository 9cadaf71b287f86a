//! The one span pipeline: tchu's own spans and the application's `tracing` spans reach the
//! same OpenTelemetry batch processors, one per service (its `service.name` resource), each
//! with its OTLP exporter.

use super::{OtlpConfig, Protocol, http::UreqClient};
use opentelemetry::KeyValue;
use opentelemetry::trace::Span as _;
use opentelemetry_otlp::{RetryPolicy, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_otlp::{WithTonicConfig, tonic_types::metadata::MetadataMap};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanProcessor,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

/// The attribute a span started inside a service carries until it is routed (then removed).
const SERVICE_KEY: &str = "tchu.service";
/// `service.name` of spans outside any service, as OpenTelemetry names them.
const UNKNOWN_SERVICE: &str = "unknown_service";

/// What [`super::install`] set up: the configuration and a processor per service name.
struct Installed {
    config: OtlpConfig,
    /// The runtime tonic's channels are built in (gRPC only).
    runtime: Option<tokio::runtime::Handle>,
    processors: Mutex<HashMap<String, Arc<BatchSpanProcessor>>>,
}

static INSTALLED: RwLock<Option<Arc<Installed>>> = RwLock::new(None);

/// Replaces the installed exporters (the previous ones send what they hold and stop).
pub(super) fn install(config: OtlpConfig) {
    let installed = Arc::new(Installed {
        config,
        runtime: tokio::runtime::Handle::try_current().ok(),
        processors: Mutex::default(),
    });
    let previous = INSTALLED
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .replace(installed);
    if let Some(previous) = previous {
        for p in previous.all() {
            let _ = p.shutdown_with_timeout(Duration::from_secs(5));
        }
    }
}

fn installed() -> Option<Arc<Installed>> {
    INSTALLED.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Sends every span ended so far (each processor waits for its export).
pub(super) fn flush() {
    if let Some(installed) = installed() {
        for p in installed.all() {
            let _ = p.force_flush();
        }
    }
}

/// Hands a finished span to the processor of `service`.
pub(super) fn export(service: Option<&str>, span: SpanData) {
    if let Some(installed) = installed()
        && let Some(p) = installed.processor(service)
    {
        p.on_end(span);
    }
}

impl Installed {
    fn all(&self) -> Vec<Arc<BatchSpanProcessor>> {
        let map = self.processors.lock().unwrap_or_else(|e| e.into_inner());
        map.values().cloned().collect()
    }

    /// The processor of a service, made on its first span. `None` when the exporter cannot
    /// be built (logged once per service).
    fn processor(&self, service: Option<&str>) -> Option<Arc<BatchSpanProcessor>> {
        let name = (self.config.service_name.as_deref())
            .or(service)
            .unwrap_or(UNKNOWN_SERVICE);
        let mut map = self.processors.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = map.get(name) {
            return Some(p.clone());
        }
        let exporter = match self.exporter() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(help = "tchu::troubleshooting#otlp-export", error = %crate::error_chain(&e), "cannot build the OTLP exporter");
                return None;
            }
        };
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(4096)
            .with_max_export_batch_size(512)
            .with_scheduled_delay(Duration::from_millis(500))
            .build();
        let mut p = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let resource = Resource::builder_empty()
            .with_service_name(name.to_owned())
            .build();
        p.set_resource(&resource);
        let p = Arc::new(p);
        map.insert(name.to_owned(), p.clone());
        Some(p)
    }

    fn exporter(&self) -> Result<SpanExporter, opentelemetry_otlp::ExporterBuildError> {
        let c = &self.config;
        let headers: HashMap<String, String> = c.headers.iter().cloned().collect();
        match c.protocol {
            Protocol::Grpc => {
                // tonic builds its channel on the runtime that was current at `install`.
                let _entered = self.runtime.as_ref().map(tokio::runtime::Handle::enter);
                let metadata = MetadataMap::from_headers((&headers).try_into().unwrap_or_default());
                SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(&c.endpoint)
                    .with_metadata(metadata)
                    .with_retry_policy(RetryPolicy::recommended())
                    .build()
            }
            Protocol::HttpProtobuf | Protocol::HttpJson => {
                let protocol = match c.protocol {
                    Protocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
                    _ => opentelemetry_otlp::Protocol::HttpBinary,
                };
                SpanExporter::builder()
                    .with_http()
                    .with_http_client(UreqClient::new())
                    .with_endpoint(&c.endpoint)
                    .with_protocol(protocol)
                    .with_headers(headers)
                    .with_retry_policy(RetryPolicy::recommended())
                    .build()
            }
        }
    }
}

/// The provider of the application's spans: everything it ends goes to [`Router`].
pub(super) fn provider() -> &'static SdkTracerProvider {
    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        SdkTracerProvider::builder()
            .with_span_processor(Router)
            .build()
    })
}

/// Routes the application's spans to the processor of the service they ran in.
#[derive(Debug)]
struct Router;

impl SpanProcessor for Router {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {
        if let Some(service) = super::super::current_service() {
            span.set_attribute(KeyValue::new(SERVICE_KEY, service.to_string()));
        }
    }

    fn on_end(&self, mut span: SpanData) {
        let at = span
            .attributes
            .iter()
            .position(|kv| kv.key.as_str() == SERVICE_KEY);
        let service = at.map(|i| span.attributes.remove(i).value.to_string());
        export(service.as_deref(), span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        flush();
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}
