//! The RPC answer, in the Celery `rpc://` result shape (see `tchu_core::rpc`).

use super::Dispatcher;
use tchu_core::envelope::WireMessage;
use tchu_core::rpc::{ReplyEntry, reply_message};
use tracing::error;

/// Answers a request with these entries (none: tchu-tchu's `no_handlers`).
pub(crate) async fn send(
    d: &Dispatcher,
    request: &WireMessage,
    task_id: &str,
    topic: &str,
    entries: &[ReplyEntry],
) {
    let now = tchu_core::time::now_iso8601(false);
    let Some(reply) = reply_message(request, task_id, topic, entries, &now) else {
        return;
    };
    // Not mandatory: a caller that gave up has no reply queue any more, which is not an error.
    if let Err(e) = d.client.transport().send_unconfirmed("", &reply).await {
        error!(error = %e, "could not send the RPC reply; the caller will time out");
    }
}
