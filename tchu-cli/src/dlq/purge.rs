//! `tchu dlq purge`: delete every parked message.

use super::Names;
use crate::broker::op;
use crate::exit::Failure;
use crate::output::Out;
use lapin::Channel;
use lapin::options::QueuePurgeOptions;
use serde_json::json;

/// Deletes every message of the dead-letter queue.
pub(super) async fn purge(ch: &Channel, names: &Names, out: &Out) -> Result<(), Failure> {
    let purged = op(
        "queue.purge",
        ch.queue_purge(names.dlq.as_str().into(), QueuePurgeOptions::default()),
    )
    .await?;
    if out.json {
        out.object(&json!({"ok": true, "queue": names.dlq, "purged": purged}))
    } else {
        out.line(&format!("purged {purged} message(s) from {}", names.dlq))
    }
}
