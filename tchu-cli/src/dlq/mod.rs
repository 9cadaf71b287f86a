//! `tchu dlq list|show|replay|purge`: a service's dead-letter queue, through lapin.
//!
//! Reading never consumes: messages are fetched with `basic.get` without acknowledgement and
//! given back with one `basic.nack(multiple, requeue)`, which puts them back in their places.
//! Replaying acknowledges a dead letter only once its republished copy is confirmed.
//!
//! One module per command: [`list`], [`show`], [`replay`], [`skip`], [`purge`]; [`parked`]
//! reads the queue without consuming it; [`held`] knows the keys of ordered handlers held
//! behind a parked message, which only their service releases.

mod held;
mod list;
mod parked;
mod purge;
mod replay;
mod show;
mod skip;

use list::list;
use purge::purge;
use replay::replay;
use show::show;
use skip::skip;

use crate::DlqCommand;
use crate::broker::{self, op};
use crate::exit::Failure;
use crate::output::Out;
use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::Value;

/// Progress goes to stderr every this many messages.
const PROGRESS_EVERY: u64 = 500;

/// The dead-letter queue and its service queue, from the `QUEUE` argument.
#[derive(Debug, Clone)]
pub(super) struct Names {
    dlq: String,
    service: String,
    /// Whether the service has an ordered queue (`<service>.ordered`).
    ordered: bool,
}

impl Names {
    fn new(arg: &str) -> Result<Self, Failure> {
        if arg.is_empty() || arg.len() > 255 {
            return Err(Failure::usage(format!(
                "`{arg}` is not a queue name (1 to 255 bytes)"
            )));
        }
        Ok(match arg.strip_suffix(".dlq") {
            Some(service) if !service.is_empty() => Self {
                dlq: arg.to_owned(),
                service: service.to_owned(),
                ordered: false,
            },
            _ => Self {
                dlq: format!("{arg}.dlq"),
                service: arg.to_owned(),
                ordered: false,
            },
        })
    }
}

/// Runs a `dlq` subcommand.
///
/// # Errors
/// Exit 1 for a missing queue or a broker failure, 3 when the broker is unreachable, 2 for
/// `purge` without `--yes`.
pub async fn run(url: &str, cmd: DlqCommand, out: &Out) -> Result<(), Failure> {
    let (queue, action) = match &cmd {
        DlqCommand::List { queue, .. } => (queue, "list"),
        DlqCommand::Show { queue, .. } => (queue, "show"),
        DlqCommand::Replay { queue, .. } => (queue, "replay"),
        DlqCommand::Skip { queue, .. } => (queue, "skip"),
        DlqCommand::Purge { queue, yes } => {
            if !yes {
                return Err(Failure::usage(format!(
                    "`dlq purge` deletes every message in {}: pass --yes to confirm",
                    Names::new(queue)?.dlq
                )));
            }
            (queue, "purge")
        }
    };
    let names = Names::new(queue)?;
    let conn = broker::connect(url).await?;
    let result = async {
        let ch = op("channel.open", conn.create_channel()).await?;
        let count = message_count(&ch, &names.dlq).await?;
        // Without its ordered queue, the service has no ordered handler any more: what its
        // dead letters say about order is history, and they are replayed as any other.
        let names = &Names {
            ordered: has_ordered_queue(&conn, &names.service).await,
            ..names.clone()
        };
        match cmd {
            DlqCommand::List { limit, .. } => list(&ch, names, count, limit, out).await,
            DlqCommand::Show { index, all, .. } => show(&ch, names, count, index, all, out).await,
            DlqCommand::Replay {
                limit, id, force, ..
            } => {
                let force = force.then_some(url);
                let only = (limit, id.as_deref());
                replay(&ch, names, count, only, (url, force), out).await
            }
            DlqCommand::Skip { id, .. } => skip(&ch, names, count, &id, url, out).await,
            DlqCommand::Purge { .. } => purge(&ch, names, out).await,
        }
    }
    .await;
    let _ = conn
        .close(200, format!("tchu dlq {action} done").into())
        .await;
    result
}

/// How many ready messages the queue holds (passive declare: a missing queue is an error).
async fn message_count(ch: &Channel, queue: &str) -> Result<u64, Failure> {
    let q = broker::op(
        "queue.declare",
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .map_err(|f| match f.kind {
        "not_found" => Failure::failed("not_found", format!("queue `{queue}` does not exist")),
        _ => f,
    })?;
    Ok(u64::from(q.message_count()))
}

/// Whether `<service>.ordered` exists (a passive declaration, on a channel of its own: a
/// missing queue closes it).
async fn has_ordered_queue(conn: &lapin::Connection, service: &str) -> bool {
    let Ok(ch) = conn.create_channel().await else {
        return false;
    };
    let name = format!("{service}.ordered");
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let found = (ch
        .queue_declare(name.as_str().into(), passive, FieldTable::default())
        .await)
        .is_ok();
    let _ = ch.close(200, "looked".into()).await;
    found
}

/// A JSON string, `null` when empty (as an absent header is in `list --json`).
fn null_if_empty(s: String) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s)
    }
}
