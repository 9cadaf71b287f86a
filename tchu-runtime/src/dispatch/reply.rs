//! The RPC answer, in the Celery `rpc://` result shape (see `tchu_core::rpc`).

use super::Dispatcher;
use tchu_core::envelope::{Properties, WireMessage};
use tchu_core::rpc::{ReplyEntry, encode_reply};
use tracing::error;

/// Answers a request with these entries (none: tchu-tchu's `no_handlers`).
pub(crate) async fn send(
    d: &Dispatcher,
    request: &WireMessage,
    task_id: &str,
    topic: &str,
    entries: &[ReplyEntry],
) {
    let Some(reply_to) = request.properties.reply_to.clone() else {
        return;
    };
    let reply = WireMessage {
        routing_key: reply_to,
        properties: Properties {
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            delivery_mode: Some(1),
            priority: Some(0),
            // v1 requests carry no correlation id: Celery then uses the task id, and so do we.
            correlation_id: Some(
                request
                    .properties
                    .correlation_id
                    .clone()
                    .unwrap_or_else(|| task_id.to_owned()),
            ),
            ..Properties::default()
        },
        headers: Default::default(),
        body: encode_reply(
            task_id,
            topic,
            entries,
            &tchu_core::time::now_iso8601(false),
        ),
    };
    // Not mandatory: a caller that gave up has no reply queue any more, which is not an error.
    if let Err(e) = d.client.transport().send_unconfirmed("", &reply).await {
        error!(error = %e, "could not send the RPC reply; the caller will time out");
    }
}
