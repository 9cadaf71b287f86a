//! The relay: publishes what the outbox stored, in order, with confirms (see
//! [`OutboxRelay`]).

use super::Outbox;
use super::row::{self, Row};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::error_chain;
use sqlx::postgres::{PgConnection, PgListener};
use std::future::Future;
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// The advisory lock the active relay holds for its batch: one per outbox table, so outboxes
/// in different schemas relay independently.
const RELAY_LOCK: &str =
    "SELECT pg_try_advisory_xact_lock(7379012, hashtext(current_schema() || '.tchu_outbox'))";

/// Publishes an outbox's messages until stopped.
///
/// - **One active relay.** Each batch runs in a transaction holding a transaction-scoped
///   advisory lock; a relay that cannot take it waits for the next turn. Several relays can run
///   (one per service replica) without publishing a message twice in the normal case, and
///   messages go out in `id` order, so the events of one transaction keep their order. Row
///   locks with `SKIP LOCKED` would let two relays publish neighbouring batches at once and
///   interleave them; the order is worth more than the parallelism of a step that is one
///   round trip per batch.
/// - **Deleted after the confirm.** A batch is published in order, its confirms awaited
///   together, and the confirmed prefix deleted in the transaction that locked it. A failure
///   leaves the rest in the table for the next turn. A relay killed mid-batch leaves its whole
///   batch (its transaction never commits): that batch, at most, is published twice, and an
///   inbox on the consumer removes the duplicates.
/// - **Unroutable events** (no queue bound to the topic) are deleted with a warning: no one
///   subscribes, exactly what `Client::publish` reports as `Error::Unroutable`. Keeping them
///   would stop every later event behind them.
/// - **Wake-ups.** `LISTEN tchu_outbox`, notified by each committing writer, with a poll every
///   `poll_interval` in case a notification is missed or the listener is down.
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    outbox: Outbox,
}

/// One batch's result.
pub(super) struct Batch {
    /// Messages published and deleted.
    pub(super) sent: usize,
    /// The batch was full: more may wait.
    pub(super) full: bool,
    /// Another relay holds the lock.
    pub(super) busy: bool,
}

impl OutboxRelay {
    pub(super) fn new(outbox: Outbox) -> Self {
        Self { outbox }
    }

    /// Relays until SIGINT or SIGTERM (`tchu outbox relay`).
    ///
    /// # Errors
    /// None so far: failures are logged and retried; the signature leaves room for start-up
    /// checks.
    pub async fn run(&self, client: &Client) -> Result<()> {
        self.run_until(client, crate::signal::shutdown_signal())
            .await;
        Ok(())
    }

    /// Relays until `stop` completes. Failures (database or broker down) are logged and
    /// retried with backoff; nothing is lost meanwhile: messages wait in the table.
    pub async fn run_until(&self, client: &Client, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut listener = listen(self.outbox.pool()).await;
        let mut backoff = Duration::from_millis(100);
        info!(batch = self.outbox.batch, "outbox relay running");
        loop {
            // Between batches only: a batch cut short would be published again.
            if futures_lite::future::poll_once(&mut stop).await.is_some() {
                break;
            }
            let pause = match relay_batch(&self.outbox, client).await {
                Ok(b) if b.full => None,
                Ok(b) => {
                    backoff = Duration::from_millis(100);
                    Some(if b.busy { Wait::Poll } else { Wait::Wake })
                }
                Err(e) => {
                    let (error, retry_in_ms) = (error_chain(&e), backoff.as_millis() as u64);
                    warn!(help = "tchu::troubleshooting#outbox-batch-failed", %error, retry_in_ms, "outbox relay: batch failed; the messages wait in the table");
                    let b = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    Some(Wait::Sleep(b))
                }
            };
            let Some(pause) = pause else { continue };
            tokio::select! {
                () = &mut stop => break,
                () = wait(&mut listener, pause, self.outbox.poll) => {}
            }
        }
        info!("outbox relay stopped");
    }
}

/// How the relay waits before its next batch.
enum Wait {
    /// The table is empty: until a writer notifies, or the poll interval.
    Wake,
    /// Another relay is active: the poll interval.
    Poll,
    /// After a failure.
    Sleep(Duration),
}

async fn wait(listener: &mut Option<PgListener>, how: Wait, poll: Duration) {
    match (how, listener.as_mut()) {
        (Wait::Wake, Some(l)) => match tokio::time::timeout(poll, l.recv()).await {
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => {
                debug!(error = %error_chain(&e), "outbox relay: notifications lost; polling");
                tokio::time::sleep(poll).await;
            }
        },
        (Wait::Wake | Wait::Poll, _) => tokio::time::sleep(poll).await,
        (Wait::Sleep(d), _) => tokio::time::sleep(d).await,
    }
}

/// A listener on the outbox channel, or `None` (the relay then polls).
async fn listen(pool: &sqlx::PgPool) -> Option<PgListener> {
    let mut l = match PgListener::connect_with(pool).await {
        Ok(l) => l,
        Err(e) => {
            warn!(help = "tchu::troubleshooting#outbox-listen", error = %error_chain(&e), "outbox relay: cannot LISTEN; polling only");
            return None;
        }
    };
    match l.listen(crate::sql::OUTBOX_CHANNEL).await {
        Ok(()) => Some(l),
        Err(e) => {
            warn!(help = "tchu::troubleshooting#outbox-listen", error = %error_chain(&e), "outbox relay: cannot LISTEN; polling only");
            None
        }
    }
}

/// Publishes one batch under the relay lock and deletes what the broker confirmed.
pub(super) async fn relay_batch(outbox: &Outbox, client: &Client) -> Result<Batch> {
    let mut tx = outbox.pool.begin().await?;
    let (locked,): (bool,) = sqlx::query_as(RELAY_LOCK).fetch_one(&mut *tx).await?;
    if !locked {
        return Ok(Batch {
            sent: 0,
            full: false,
            busy: true,
        });
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, routing_key, properties, headers, body FROM tchu_outbox ORDER BY id LIMIT $1",
    )
    .bind(i64::try_from(outbox.batch).unwrap_or(i64::MAX))
    .fetch_all(&mut *tx)
    .await?;
    let full = rows.len() == outbox.batch;
    let published = publish_rows(client, &rows).await;
    crate::fault::point("exit-after-relay-publish");
    settle(&mut tx, &rows, &published).await?;
    tx.commit().await?;
    if published.done > 0 {
        debug!(sent = published.done, "outbox relay: batch published");
    }
    match published.failure {
        Some(e) => Err(e),
        None => Ok(Batch {
            sent: published.done,
            full,
            busy: false,
        }),
    }
}

/// How many times the broker may refuse a message before it is parked.
const MAX_REFUSALS: i32 = 5;

/// Records a batch's outcome in its transaction: the settled prefix deleted (or parked, for
/// rows that are not messages), and a refusal counted on the row that failed, which is parked
/// at the last one so the rows behind it go on.
async fn settle(tx: &mut PgConnection, rows: &[Row], p: &Published) -> Result<()> {
    for (id, why) in &p.unreadable {
        error!(help = "tchu::troubleshooting#outbox-parked", id, %why, "outbox relay: parking a row that is not a message");
        park(tx, *id, &format!("not a message: {why}")).await?;
    }
    let ids: Vec<i64> = rows[..p.done]
        .iter()
        .map(|r| r.0)
        .filter(|id| !p.unreadable.iter().any(|(u, _)| u == id))
        .collect();
    sqlx::query("DELETE FROM tchu_outbox WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    if let (true, Some(row), Some(e)) = (p.blamed, rows.get(p.done), &p.failure) {
        let (attempts,): (i32,) = sqlx::query_as(
            "UPDATE tchu_outbox SET attempts = attempts + 1 WHERE id = $1 RETURNING attempts",
        )
        .bind(row.0)
        .fetch_one(&mut *tx)
        .await?;
        if attempts >= MAX_REFUSALS {
            error!(help = "tchu::troubleshooting#outbox-parked", id = row.0, error = %error_chain(&e), "outbox relay: the broker refused the message {attempts} times; parked in tchu_outbox_parked");
            park(tx, row.0, &format!("refused {attempts} times: {e}")).await?;
        }
    }
    Ok(())
}

/// Moves a row to `tchu_outbox_parked` with the reason.
async fn park(tx: &mut PgConnection, id: i64, reason: &str) -> Result<()> {
    sqlx::query(
        "WITH moved AS (DELETE FROM tchu_outbox WHERE id = $1 \
         RETURNING id, routing_key, properties, headers, body, created_at) \
         INSERT INTO tchu_outbox_parked (id, routing_key, properties, headers, body, created_at, reason) \
         SELECT id, routing_key, properties, headers, body, created_at, $2 FROM moved",
    )
    .bind(id)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// What publishing a batch came to.
#[derive(Default)]
struct Published {
    /// Rows settled from the start: confirmed, unroutable, or not a message.
    done: usize,
    /// The first failure after them.
    failure: Option<Error>,
    /// The failure is the broker refusing that very message, sent on its own.
    blamed: bool,
    /// Rows among the settled ones that are not messages (id, why).
    unreadable: Vec<(i64, String)>,
}

/// Publishes the rows in order, up to the first failure. When the broker refused one of a
/// pipelined batch, it closed the channel, and the confirms of messages sent before it may be
/// lost with it: the rest go again one at a time, so that only the message refused on its own
/// is blamed (and the others are at worst published twice).
async fn publish_rows(client: &Client, rows: &[Row]) -> Published {
    let mut readable = Vec::with_capacity(rows.len());
    let mut slot = Vec::with_capacity(rows.len());
    let mut unreadable = Vec::new();
    for r in rows {
        match row::message(r) {
            Ok(m) => {
                slot.push(Some(readable.len()));
                readable.push(m);
            }
            Err(why) => {
                slot.push(None);
                unreadable.push((r.0, why));
            }
        }
    }
    let mut published = Published {
        done: rows.len(),
        failure: None,
        blamed: false,
        unreadable: Vec::new(),
    };
    let results = client.publish_encoded(&readable).await;
    let refused = walk_results(rows, &slot, &unreadable, results, &mut published);
    if refused {
        let from = published.done;
        published.failure = None;
        published.done = rows.len();
        let singles = rows.iter().enumerate().skip(from);
        for (i, r) in singles {
            let Some(k) = slot[i] else {
                if let Some(u) = unreadable.iter().find(|(id, _)| *id == r.0) {
                    published.unreadable.push(u.clone());
                }
                continue;
            };
            let result = client
                .publish_encoded(std::slice::from_ref(&readable[k]))
                .await;
            let mut single = Published::default();
            let refused = walk_results(&rows[i..=i], &[Some(0)], &[], result, &mut single);
            if single.failure.is_some() {
                // Refused on its own: this message; anything else (the connection) blames none.
                published.done = i;
                published.blamed = refused;
                published.failure = single.failure;
                break;
            }
        }
    }
    published
}

/// Reads the results of publishing `rows` (their readable ones, by `slot`) into `published`
/// up to the first failure; returns whether that failure was the broker refusing a message.
fn walk_results(
    rows: &[Row],
    slot: &[Option<usize>],
    unreadable: &[(i64, String)],
    results: Vec<Result<()>>,
    published: &mut Published,
) -> bool {
    let mut results = results.into_iter();
    for (i, r) in rows.iter().enumerate() {
        if slot[i].is_none() {
            if let Some(u) = unreadable.iter().find(|(id, _)| *id == r.0) {
                published.unreadable.push(u.clone());
            }
            continue;
        }
        match results.next() {
            Some(Ok(())) => {}
            Some(Err(Error::Unroutable { topic })) => {
                warn!(help = "tchu::troubleshooting#unroutable", id = r.0, %topic, "outbox relay: no queue is bound to the topic; the event is dropped");
            }
            Some(Err(e)) => {
                let refused = is_refusal(&e);
                published.done = i;
                published.failure = Some(e);
                return refused;
            }
            None => {
                published.done = i;
                return false;
            }
        }
    }
    false
}

/// A failure about one message (the broker refused it), not the connection. A negative
/// confirm is not one: the broker cannot take the message just now (a quorum queue without a
/// leader during a partition, a full queue), so it waits in the table like any message while
/// the broker is away, instead of being parked after five quick tries.
fn is_refusal(e: &Error) -> bool {
    matches!(e, Error::Refused { .. } | Error::TooLarge { .. })
}
