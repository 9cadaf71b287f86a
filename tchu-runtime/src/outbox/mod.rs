//! The transactional outbox: an event is published if and only if the database transaction
//! that produced it commits.
//!
//! [`Outbox::publish`] encodes the event exactly as [`Client::publish`] would (so Python
//! services receive it unchanged) and inserts it into `tchu_outbox` in the caller's
//! transaction, with a `NOTIFY` that PostgreSQL delivers only on commit. The [`OutboxRelay`]
//! publishes stored messages in `id` order with confirms and deletes each batch's confirmed
//! prefix in the same transaction that locked it; see [`OutboxRelay`] for ordering, concurrency and
//! failure behaviour.

mod relay;
mod row;

use crate::client::{Client, DEFAULT_MAX_MESSAGE_BYTES, Wire, encode_event};
use crate::error::Result;
use serde::Serialize;
use sqlx::postgres::{PgConnection, PgPool};
use std::time::Duration;
use tchu_core::{Event, Format, TchuTchu};

pub use relay::OutboxRelay;

/// Writes events into the outbox table, in the caller's transaction.
///
/// ```no_run
/// # use tchu_runtime::Outbox;
/// # #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// # struct OrderPlaced { order_id: u64 }
/// # impl tchu_core::Event for OrderPlaced { const TOPIC: &'static str = "order.placed"; }
/// # async fn demo(pool: sqlx::PgPool) -> tchu_runtime::Result<()> {
/// let outbox = Outbox::new(pool.clone()).await?;
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id) VALUES (42)").execute(&mut *tx).await?;
/// outbox.publish(&mut tx, &OrderPlaced { order_id: 42 }).await?;
/// tx.commit().await?; // the event exists now, and only now
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Outbox {
    pool: PgPool,
    format: Format,
    tchu_tchu: TchuTchu,
    /// Celery v2 events carry a `reply_to`, as tchu-tchu 3.x's publisher sets one on every
    /// message (not in the 2.x form: see [`TchuTchu::V2`]).
    reply_to: String,
    max_message_bytes: usize,
    batch: usize,
    poll: Duration,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("format", &self.format)
            .field("tchu_tchu", &self.tchu_tchu)
            .field("batch", &self.batch)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

/// Messages a relay publishes per transaction unless set otherwise.
pub const DEFAULT_BATCH: usize = 256;

/// How often a relay looks at the table when no notification woke it.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

impl Outbox {
    /// An outbox on `pool`, creating the table `tchu_outbox` if it does not exist (under an
    /// advisory lock, so replicas may start together).
    ///
    /// Its messages are written for the tchu-tchu version `TCHU_TCHU_VERSION` names, as a
    /// client's are (default 3.x; see [`Outbox::tchu_tchu`]).
    ///
    /// # Errors
    /// [`crate::Error::Database`] when the database cannot be reached or refuses the schema;
    /// [`crate::Error::InvalidSetting`] when `TCHU_TCHU_VERSION` is neither 2 nor 3.
    pub async fn new(pool: PgPool) -> Result<Self> {
        let tchu_tchu = crate::client::tchu_tchu_from_env()?;
        crate::sql::create_schema(&pool, crate::sql::OUTBOX_SCHEMA).await?;
        Ok(Self::writing_for(pool, tchu_tchu))
    }

    /// An outbox on `pool` whose table is managed elsewhere (from `tchu outbox schema`). Its
    /// messages are written for the tchu-tchu version `TCHU_TCHU_VERSION` names, or
    /// [`Outbox::tchu_tchu`]'s; a value that is neither 2 nor 3 is logged as an error and the
    /// 3.x form kept ([`Outbox::new`] refuses it).
    pub fn unmanaged(pool: PgPool) -> Self {
        let tchu_tchu = crate::client::tchu_tchu_from_env().unwrap_or_else(|e| {
            tracing::error!(help = "tchu::troubleshooting#invalid-setting", error = %e, "keeping tchu-tchu 3.x's form for the outbox");
            TchuTchu::V3
        });
        Self::writing_for(pool, tchu_tchu)
    }

    fn writing_for(pool: PgPool, tchu_tchu: TchuTchu) -> Self {
        Self {
            pool,
            format: Format::CeleryV2,
            tchu_tchu,
            reply_to: uuid::Uuid::new_v4().to_string(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            batch: DEFAULT_BATCH,
            poll: DEFAULT_POLL,
        }
    }

    /// The wire format of stored messages (default Celery v2, as [`Client::publish`]).
    #[must_use]
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Which Python tchu-tchu the stored Celery messages are written for, as
    /// [`Client::with_tchu_tchu`]: [`TchuTchu::V2`] for fleets with tchu-tchu 2.x consumers.
    #[must_use]
    pub fn tchu_tchu(mut self, version: TchuTchu) -> Self {
        self.tchu_tchu = version;
        self
    }

    /// How many messages a relay publishes per transaction (default 256, at least 1). A relay
    /// killed mid-batch publishes at most this many twice.
    #[must_use]
    pub fn batch_size(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// How often a relay looks at the table without a notification (default 1 s).
    #[must_use]
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_millis(10));
        self
    }

    /// The pool the outbox writes to.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Stores `event` in the caller's transaction; it is published after the transaction
    /// commits, never if it rolls back. Returns the message id.
    ///
    /// Takes any `&mut PgConnection`: a `&mut Transaction<Postgres>`, or the guard of a
    /// handler's `Tx`.
    ///
    /// # Errors
    /// [`crate::Error::Database`] from PostgreSQL; encoding errors and
    /// [`crate::Error::TooLarge`] as [`Client::publish`] would report them.
    pub async fn publish<E: Event>(&self, tx: &mut PgConnection, event: &E) -> Result<String> {
        self.store(tx, E::TOPIC, event, crate::catalog::fingerprint(E::TOPIC))
            .await
    }

    /// Stores any JSON object on a topic, like [`Client::publish_raw`].
    ///
    /// # Errors
    /// As [`Outbox::publish`], plus [`crate::Error::Topic`] for a topic that breaks the grammar.
    pub async fn publish_raw(
        &self,
        tx: &mut PgConnection,
        topic: &str,
        payload: &serde_json::Value,
    ) -> Result<String> {
        self.store(tx, topic, payload, None).await
    }

    async fn store<T: Serialize + ?Sized>(
        &self,
        tx: &mut PgConnection,
        topic: &str,
        payload: &T,
        schema: Option<&str>,
    ) -> Result<String> {
        let wire = Wire {
            format: self.format,
            tchu_tchu: self.tchu_tchu,
            reply_to: &self.reply_to,
            max_message_bytes: self.max_message_bytes,
        };
        let (id, mut msg) = encode_event(topic, payload, wire)?;
        crate::client::stamp_schema(&mut msg, schema);
        // The publish span is the store: the message's `traceparent` names it, and the relay
        // only carries the row to the broker later.
        let kind = crate::observe::SpanKind::Producer;
        let mut span =
            crate::observe::message_span(|| format!("publish {topic}"), kind, &msg, topic);
        span.attr("tchu.outbox", true);
        let stored = row::insert(tx, &msg).await;
        if let Err(e) = &stored {
            span.fail(e);
        }
        stored?;
        Ok(id)
    }

    /// How many messages wait in the table.
    ///
    /// # Errors
    /// [`crate::Error::Database`].
    pub async fn pending(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM tchu_outbox")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// How many messages the relay parked in `tchu_outbox_parked`: refused by the broker
    /// again and again, or rows that are not messages. Each keeps its reason.
    ///
    /// # Errors
    /// [`crate::Error::Database`].
    pub async fn parked(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM tchu_outbox_parked")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// A relay for this outbox: run it with [`OutboxRelay::run`], or beside a service with
    /// `Service::relay_outbox`.
    pub fn relay(&self) -> OutboxRelay {
        OutboxRelay::new(self.clone())
    }

    /// Publishes one batch now, whatever relay may be running: for tests and tools.
    ///
    /// # Errors
    /// As the relay meets them: [`crate::Error::Database`], or the first publish that failed
    /// (the rest of the batch stays in the table).
    pub async fn relay_once(&self, client: &Client) -> Result<usize> {
        relay::relay_batch(self, client).await.map(|b| b.sent)
    }
}
