//! The HTTP client the OTLP/HTTP exporter posts with: the ureq agent tchu already builds for
//! the management API (and its rustls under `tls`), instead of a second HTTP stack.

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use std::time::Duration;

/// The largest collector answer read (the exporter only looks at its status and a few fields).
const MAX_ANSWER: u64 = 4 * 1024 * 1024;

/// Blocking posts, run on the SDK's batch thread (never on a tokio worker).
#[derive(Debug)]
pub(super) struct UreqClient(ureq::Agent);

impl UreqClient {
    pub(super) fn new() -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Self(agent)
    }
}

#[async_trait::async_trait]
impl HttpClient for UreqClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, body.to_vec());
        let answer = self.0.run(request)?;
        let (parts, mut body) = answer.into_parts();
        let bytes = body.with_config().limit(MAX_ANSWER).read_to_vec()?;
        Ok(Response::from_parts(parts, Bytes::from(bytes)))
    }
}
