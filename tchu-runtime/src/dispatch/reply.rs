//! The RPC answer, in the Celery `rpc://` result shape (see `tchu_core::rpc`).

use super::Dispatcher;
use crate::error_chain;
use tchu_core::envelope::WireMessage;
use tchu_core::rpc::{ReplyEntry, reply_message};
use tracing::error;

/// The answer to a request with these entries (none: tchu-tchu's `no_handlers`); `None` when
/// the request names no reply address.
pub(crate) fn answer(
    request: &WireMessage,
    task_id: &str,
    topic: &str,
    entries: &[ReplyEntry],
) -> Option<WireMessage> {
    let now = tchu_core::time::now_iso8601(false);
    reply_message(request, task_id, topic, entries, &now)
}

/// Sends an answer, without a confirm.
pub(crate) async fn send(d: &Dispatcher, reply: &WireMessage) {
    // Not mandatory: a caller that gave up has no reply queue any more, which is not an error.
    if let Err(e) = d.client.transport().send_unconfirmed("", reply).await {
        error!(help = "tchu::troubleshooting#reply-not-sent", error = %error_chain(&e), "could not send the RPC reply; the caller will time out");
    }
}
