//! The inbox: a handler marked `#[tchu::subscribe(dedup)]` has its effect once per key (the
//! message id, or a payload field), however often the broker delivers the message.
//!
//! A delivery first *claims* its key in the store, runs the handler, then *records* the key
//! when the handler succeeded, or *releases* it when it failed (so a retry runs again):
//! - PostgreSQL (`postgres` feature): the claim is a row inserted in a transaction held open
//!   while the handler runs. A handler can take that transaction (`Tx`); its writes and the
//!   row commit together after it returns `Ok`, or roll back together: an exactly-once effect.
//!   A second copy arriving meanwhile waits on the row lock for the first one's outcome.
//! - Redis (`redis` feature): the claim is `SET NX` with a lease the running handler renews;
//!   the record replaces it with a retention TTL; a failure deletes it. A second copy waits
//!   while the claim is held; a crashed holder's lease runs out.
//!
//! A duplicate of a recorded key is acknowledged without running the handler; a responder's
//! duplicate request gets the recorded answer. Decisions and their reasons: the README,
//! "Exactly once: the inbox and the outbox".

// A build without stores still compiles the service's side of the inbox, which then has
// nothing to run.
#![cfg_attr(
    not(any(feature = "postgres", feature = "redis")),
    allow(dead_code, unused_variables, unused_imports)
)]

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

use crate::error::{Error, Result};
use crate::handler::{HandlerError, HandlerErrorKind, Outcome};
#[cfg(feature = "postgres")]
pub(crate) use postgres::current_tx;
#[cfg(feature = "postgres")]
pub use postgres::{Tx, TxGuard};
use serde_json::{Value, json};
use std::future::Future;
use std::time::Duration;

/// How long a recorded key is remembered unless set otherwise: a duplicate later than this
/// runs again.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a Redis claim lasts without renewal: a crashed holder's copy waits this long.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The longest a copy waits for another consumer's claim on the same key before it counts as
/// a failed attempt (and is retried or dead-lettered like one).
#[cfg(feature = "redis")]
const MAX_CLAIM_WAIT: Duration = Duration::from_secs(600);

/// A service's inbox store: `Service::inbox(Inbox::postgres(pool))`, `run!(inbox = ...)`.
pub struct Inbox {
    store: Store,
    retention: Duration,
    lease: Duration,
    manage_schema: bool,
}

/// The stores, each behind its feature.
enum Store {
    #[cfg(feature = "postgres")]
    Postgres(postgres::PgStore),
    #[cfg(feature = "redis")]
    Redis(redis::RedisStore),
    /// No store is built: an `Inbox` cannot be made.
    #[cfg(not(any(feature = "postgres", feature = "redis")))]
    None(std::convert::Infallible),
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("store", &self.store_name())
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl Inbox {
    /// An inbox in PostgreSQL: the table `tchu_inbox` (created at start-up unless
    /// [`Inbox::manage_schema`] says otherwise; `tchu inbox schema` prints it). Handlers of the
    /// service can take the transaction as `Tx`.
    #[cfg(feature = "postgres")]
    pub fn postgres(pool: sqlx::PgPool) -> Self {
        Self::with_store(Store::Postgres(postgres::PgStore::new(pool)))
    }

    /// An inbox in Redis at `url` (`redis://127.0.0.1:6379`), connected when the service
    /// starts.
    ///
    /// # Errors
    /// [`Error::Store`] for a URL Redis cannot use.
    #[cfg(feature = "redis")]
    pub fn redis(url: &str) -> Result<Self> {
        Ok(Self::with_store(Store::Redis(redis::RedisStore::new(url)?)))
    }

    /// An inbox for a URL: `redis://` / `rediss://` for Redis, `postgres://` / `postgresql://`
    /// for PostgreSQL (a pool connected lazily), whichever features are built.
    ///
    /// # Errors
    /// [`Error::Store`] for a URL no built store takes.
    pub fn connect(url: &str) -> Result<Self> {
        let scheme = url.split("://").next().unwrap_or_default();
        match scheme {
            #[cfg(feature = "redis")]
            "redis" | "rediss" => Self::redis(url),
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => Ok(Self::postgres(postgres::lazy_pool(url)?)),
            _ => Err(Error::Store(format!(
                "no inbox store for `{scheme}://` URLs in this build (features: postgres, redis)"
            ))),
        }
    }

    fn with_store(store: Store) -> Self {
        Self {
            store,
            retention: DEFAULT_RETENTION,
            lease: DEFAULT_LEASE,
            manage_schema: true,
        }
    }

    /// How long recorded keys are kept (default 7 days). A duplicate arriving later runs again.
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How long a Redis claim lasts unless renewed (default 30 s; renewed every third of it
    /// while the handler runs). Ignored by PostgreSQL, whose claims end with their connection.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(300));
        self
    }

    /// Whether the service creates the PostgreSQL table at start-up (default `true`). Turn
    /// it off when migrations are managed elsewhere, from `tchu inbox schema`.
    #[must_use]
    pub fn manage_schema(mut self, manage: bool) -> Self {
        self.manage_schema = manage;
        self
    }

    /// `"postgres"` or `"redis"`.
    pub fn store_name(&self) -> &'static str {
        match &self.store {
            #[cfg(feature = "postgres")]
            Store::Postgres(_) => "postgres",
            #[cfg(feature = "redis")]
            Store::Redis(_) => "redis",
            #[cfg(not(any(feature = "postgres", feature = "redis")))]
            Store::None(never) => match *never {},
        }
    }

    /// Connects, and creates the schema when asked: once, at service start.
    pub(crate) async fn prepare(&self, tables: Tables) -> Result<()> {
        let _ = tables;
        match &self.store {
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => s.prepare(self.manage_schema, tables).await,
            #[cfg(feature = "redis")]
            Store::Redis(s) => s.prepare().await,
            #[cfg(not(any(feature = "postgres", feature = "redis")))]
            Store::None(never) => match *never {},
        }
    }

    /// Deletes the service's recorded keys older than its retention, in bounded batches,
    /// until `stop` fires (other services sharing the table keep their own retention). Redis
    /// keys expire on their own.
    pub(crate) async fn keep_clean(&self, queue: &str, stop: impl Future<Output = ()>) {
        match &self.store {
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => s.keep_clean(queue, self.retention, stop).await,
            #[cfg(feature = "redis")]
            Store::Redis(_) => {
                stop.await;
            }
            #[cfg(not(any(feature = "postgres", feature = "redis")))]
            Store::None(never) => match *never {},
        }
    }

    /// Why the store may be too small for `prefetch` deliveries in flight: each PostgreSQL
    /// claim holds a pooled connection until its handler ends.
    pub(crate) fn capacity_warning(&self, prefetch: u16) -> Option<String> {
        match &self.store {
            #[cfg(feature = "postgres")]
            Store::Postgres(s) if s.max_connections() <= u32::from(prefetch) => Some(format!(
                "the inbox's pool has {} connections for a prefetch of {prefetch}: each claim \
                 holds one while its handler runs, so deliveries will wait for connections; \
                 size the pool above the prefetch plus what handlers use",
                s.max_connections()
            )),
            _ => None,
        }
    }

    /// The PostgreSQL pool of a PostgreSQL inbox.
    #[cfg(feature = "postgres")]
    pub(crate) fn pg_pool(&self) -> Option<&sqlx::PgPool> {
        match &self.store {
            Store::Postgres(s) => Some(s.pool()),
            #[cfg(feature = "redis")]
            Store::Redis(_) => None,
        }
    }

    /// Whether handlers can take a `Tx`.
    pub(crate) fn is_transactional(&self) -> bool {
        self.store_name() == "postgres"
    }

    /// Runs one handler call under the inbox: claims `key`, runs `call` unless the key was
    /// already recorded, then records or releases it by the outcome. `call` runs inside the
    /// store's transaction when there is one (see `Tx`).
    pub(crate) async fn run<F>(&self, key: Option<ClaimKey<'_>>, call: F) -> HandlerResult
    where
        F: Future<Output = HandlerResult> + Send,
    {
        match &self.store {
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => s.run(key, call).await,
            #[cfg(feature = "redis")]
            Store::Redis(s) => match key {
                Some(key) => s.run(key, self.lease, self.retention, call).await,
                None => call.await,
            },
            #[cfg(not(any(feature = "postgres", feature = "redis")))]
            Store::None(never) => match *never {},
        }
    }
}

/// The tables a PostgreSQL inbox's service needs beside `tchu_inbox`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tables {
    /// `tchu_sagas`: it has saga handlers.
    pub(crate) sagas: bool,
    /// `tchu_schedules`: it has schedules.
    pub(crate) schedules: bool,
}

/// What a handler call comes to.
pub(crate) type HandlerResult = std::result::Result<Outcome, HandlerError>;

/// The key one delivery claims for one handler.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClaimKey<'a> {
    pub(crate) queue: &'a str,
    pub(crate) handler: &'a str,
    pub(crate) key: &'a str,
    /// A forced replay's token (`tchu dlq replay --force`): runs even when the key was
    /// recorded, and records it again, once per token, so a redelivered forced copy is a
    /// duplicate like any other.
    pub(crate) force: Option<&'a str>,
}

/// The longest key the stores keep as it is; longer ones are kept by their hash.
const MAX_PLAIN_KEY: usize = 200;

/// The key as the stores keep it: itself when short and free of control characters, else
/// `sha256:<hex>`. A stranger's megabyte-long field would overflow PostgreSQL's index and
/// bloat Redis, and PostgreSQL refuses NUL in text: hashed, the same value still de-duplicates.
pub(crate) fn stored_key(key: &str) -> std::borrow::Cow<'_, str> {
    use sha2::{Digest, Sha256};
    if key.len() <= MAX_PLAIN_KEY && !key.chars().any(char::is_control) {
        return key.into();
    }
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}").into()
}

/// A store that could not be reached or refused an operation: the attempt failed, and is
/// retried or dead-lettered like any failure (the message is not the problem).
fn store_failure(what: &str, e: impl std::fmt::Display) -> HandlerError {
    HandlerError::new(HandlerErrorKind::Failed, format!("inbox: {what}: {e}"))
}

/// The recorded outcome, as the stores keep it: what a duplicate is answered with.
fn record(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Done => "\"done\"".into(),
        Outcome::Reply(v) => json!({ "reply": v }).to_string(),
        Outcome::BusinessError(v) => json!({ "error": v }).to_string(),
    }
}

/// A duplicate of a recorded key: logged, and answered with the recorded outcome.
fn skipped(key: &ClaimKey<'_>, answer: Option<&str>) -> Outcome {
    tracing::info!(
        handler = key.handler,
        key = key.key,
        "duplicate skipped: already handled"
    );
    recorded(answer)
}

/// A recorded outcome read back; anything unreadable (an older row) is a plain `Done`.
fn recorded(text: Option<&str>) -> Outcome {
    let value: Option<Value> = text.and_then(|t| serde_json::from_str(t).ok());
    match value {
        Some(Value::Object(mut m)) if m.contains_key("reply") => {
            Outcome::Reply(m.remove("reply").unwrap_or_default())
        }
        Some(Value::Object(mut m)) if m.contains_key("error") => {
            Outcome::BusinessError(m.remove("error").unwrap_or_default())
        }
        _ => Outcome::Done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_or_control_keys_are_kept_by_their_hash() {
        assert_eq!(stored_key("ord-42"), "ord-42");
        let long = "x".repeat(10_000);
        let hashed = stored_key(&long);
        assert!(
            hashed.starts_with("sha256:") && hashed.len() == 71,
            "{hashed}"
        );
        assert_eq!(stored_key(&long), hashed, "the same value, the same key");
        assert_ne!(stored_key(&"y".repeat(10_000)), hashed);
        assert!(stored_key("a\u{0}b").starts_with("sha256:"));
        assert!(stored_key("line\nbreak").starts_with("sha256:"));
    }

    #[test]
    fn recorded_outcomes_read_back() {
        for o in [
            Outcome::Done,
            Outcome::Reply(json!({"ok": 1})),
            Outcome::Reply(Value::Null),
            Outcome::BusinessError(json!({"code": "x"})),
        ] {
            assert_eq!(recorded(Some(&record(&o))), o);
        }
        assert_eq!(recorded(None), Outcome::Done);
        assert_eq!(recorded(Some("not json")), Outcome::Done);
    }
}
