//! The PostgreSQL inbox: a claim is a row inserted in a transaction held open while the
//! handler runs, the same transaction the handler's [`Tx`] writes in.

use super::{ClaimKey, HandlerResult, Tables, record, skipped, store_failure};
use crate::error::{Error, Result};
use crate::error_chain;
use crate::handler::{FromMessage, HandlerError, Incoming, NoReply, Outcome, Resources};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, MutexGuard};
use tracing::warn;

/// The inbox's pool.
pub(crate) struct PgStore {
    pool: PgPool,
}

/// Connections of the pool `Inbox::connect` makes: twice the default prefetch (16), room for a
/// claim per delivery in flight plus the handlers' own queries.
const LAZY_POOL_SIZE: u32 = 32;

/// A pool for a URL, connected on first use.
pub(super) fn lazy_pool(url: &str) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(LAZY_POOL_SIZE)
        .connect_lazy(url)
        .map_err(|e| Error::Store(format!("PostgreSQL URL: {e}")))
}

impl PgStore {
    pub(super) fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool's size.
    pub(super) fn max_connections(&self) -> u32 {
        self.pool.options().get_max_connections()
    }

    /// Checks the database answers, and creates the tables when asked (the sagas' too, for a
    /// service with saga handlers).
    pub(super) async fn prepare(&self, manage_schema: bool, tables: Tables) -> Result<()> {
        let fail = |e: sqlx::Error| Error::Store(format!("PostgreSQL inbox: {e}"));
        let wanted = [
            (true, "tchu_inbox", crate::sql::INBOX_SCHEMA),
            (tables.sagas, "tchu_sagas", crate::sql::SAGA_SCHEMA),
            (
                tables.schedules,
                "tchu_schedules",
                crate::sql::SCHEDULE_SCHEMA,
            ),
        ];
        for (_, table, script) in wanted.into_iter().filter(|w| w.0) {
            if manage_schema {
                crate::sql::create_schema(&self.pool, script)
                    .await
                    .map_err(fail)?;
            } else {
                sqlx::query(&format!("SELECT 1 FROM {table} LIMIT 0"))
                    .execute(&self.pool)
                    .await
                    .map_err(fail)?;
            }
        }
        Ok(())
    }

    /// The pool, for the stores kept beside the inbox (sagas, schedules).
    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Deletes rows older than `retention` every few minutes, in batches, until `stop`.
    pub(super) async fn keep_clean(
        &self,
        queue: &str,
        retention: Duration,
        stop: impl Future<Output = ()>,
    ) {
        let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(300));
        let sweep = async {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = purge_expired(&self.pool, queue, retention).await {
                    warn!(help = "tchu::troubleshooting#inbox-failure", error = %error_chain(&e), "inbox: could not delete expired keys; trying again later");
                }
            }
        };
        tokio::select! {
            () = sweep => {}
            () = stop => {}
        }
    }

    /// Claims the key (when there is one) in a new transaction, runs the handler inside it,
    /// and commits or rolls back by the outcome.
    pub(super) async fn run<F>(&self, key: Option<ClaimKey<'_>>, call: F) -> HandlerResult
    where
        F: Future<Output = HandlerResult> + Send,
    {
        let slot = Arc::new(TxSlot {
            pool: self.pool.clone(),
            tx: Mutex::new(None),
        });
        if let Some(key) = key {
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(|e| store_failure("begin", e))?;
            if !claim(&mut tx, &key).await? {
                let answer = recorded_answer(&mut tx, &key).await?;
                return Ok(skipped(&key, answer.as_deref()));
            }
            *slot.tx.lock().await = Some(tx);
        }
        let result = TX_SLOT.scope(slot.clone(), call).await;
        let tx = slot.tx.lock().await.take();
        // Failed: the transaction is dropped, which rolls it back, claim and all.
        let outcome = result?;
        let Some(mut tx) = tx else {
            return without_tx(key, outcome);
        };
        // A plain `Done` is what an answer-less row already says: one statement saved.
        if let (Some(key), false) = (&key, outcome == Outcome::Done) {
            remember(&mut tx, key, &outcome).await?;
        }
        crate::fault::point("exit-before-inbox-commit");
        tx.commit()
            .await
            .map_err(|e| store_failure("commit (the effect did not happen)", e))?;
        crate::fault::point("exit-after-inbox-commit");
        Ok(outcome)
    }
}

/// The outcome of a handler that succeeded with no transaction to commit: fine when it never
/// began one; a claim always leaves one, which only a handler keeping its `Tx` past its own
/// end (in a spawned task) could have taken.
fn without_tx(key: Option<ClaimKey<'_>>, outcome: Outcome) -> HandlerResult {
    match key {
        Some(k) => Err(store_failure(
            "commit",
            format!("the transaction of `{}` was not returned", k.handler),
        )),
        None => Ok(outcome),
    }
}

/// Inserts the claim row; `false` when the key is recorded already. A concurrent claim of
/// the same key blocks here until its transaction ends.
async fn claim(
    tx: &mut PgConnection,
    key: &ClaimKey<'_>,
) -> std::result::Result<bool, HandlerError> {
    // A forced claim takes the row over once per force token: the same forced copy
    // delivered again finds its token and is a duplicate.
    let sql = if key.force.is_some() {
        "INSERT INTO tchu_inbox (queue, handler, key, forced) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (queue, handler, key) DO UPDATE \
         SET answer = NULL, created_at = now(), forced = $4 \
         WHERE tchu_inbox.forced IS DISTINCT FROM $4"
    } else {
        "INSERT INTO tchu_inbox (queue, handler, key) VALUES ($1, $2, $3) \
         ON CONFLICT (queue, handler, key) DO NOTHING"
    };
    let mut query = sqlx::query(sql)
        .bind(key.queue)
        .bind(key.handler)
        .bind(key.key);
    if let Some(token) = key.force {
        query = query.bind(token);
    }
    let done = query
        .execute(tx)
        .await
        .map_err(|e| store_failure("claim", e))?;
    Ok(done.rows_affected() == 1)
}

async fn recorded_answer(
    tx: &mut PgConnection,
    key: &ClaimKey<'_>,
) -> std::result::Result<Option<String>, HandlerError> {
    let row: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT answer FROM tchu_inbox WHERE queue = $1 AND handler = $2 AND key = $3",
    )
    .bind(key.queue)
    .bind(key.handler)
    .bind(key.key)
    .fetch_optional(tx)
    .await
    .map_err(|e| store_failure("read the recorded answer", e))?;
    Ok(row.and_then(|(a,)| a))
}

/// Records the outcome on the claimed row, in the handler's transaction.
async fn remember(
    tx: &mut PgConnection,
    key: &ClaimKey<'_>,
    outcome: &Outcome,
) -> std::result::Result<(), HandlerError> {
    sqlx::query("UPDATE tchu_inbox SET answer = $4 WHERE queue = $1 AND handler = $2 AND key = $3")
        .bind(key.queue)
        .bind(key.handler)
        .bind(key.key)
        .bind(record(outcome))
        .execute(tx)
        .await
        .map_err(|e| store_failure("record", e))?;
    Ok(())
}

/// Deletes the queue's rows older than `retention`, 10,000 at a time.
async fn purge_expired(
    pool: &PgPool,
    queue: &str,
    retention: Duration,
) -> std::result::Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let n = sqlx::query(
            "DELETE FROM tchu_inbox WHERE ctid IN (SELECT ctid FROM tchu_inbox \
             WHERE queue = $2 AND created_at < now() - make_interval(secs => $1) LIMIT 10000)",
        )
        .bind(retention.as_secs_f64())
        .bind(queue)
        .execute(pool)
        .await?
        .rows_affected();
        total += n;
        if n < 10_000 {
            return Ok(total);
        }
    }
}

/// The transaction of the handler call in progress, begun by the claim or by the handler's
/// first [`Tx::lock`].
struct TxSlot {
    pool: PgPool,
    tx: Mutex<Option<Transaction<'static, Postgres>>>,
}

tokio::task_local! {
    static TX_SLOT: Arc<TxSlot>;
}

/// The database transaction of the handler call, committed by tchu after the handler returns
/// `Ok` (with the inbox key, for a `dedup` handler) and rolled back when it fails: the
/// handler's writes and its inbox record happen together or not at all.
///
/// Available to handlers of a service whose inbox is PostgreSQL.
///
/// ```no_run
/// # use tchu_runtime::Tx;
/// # async fn demo(tx: Tx) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// sqlx::query("UPDATE accounts SET balance = balance - 5 WHERE id = 1")
///     .execute(&mut *tx.lock().await?)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Tx(Arc<TxSlot>);

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tx")
    }
}

impl Tx {
    /// The transaction, begun now if the handler has none yet.
    ///
    /// # Errors
    /// When a transaction cannot be begun (the database is unreachable).
    pub async fn lock(&self) -> std::result::Result<TxGuard<'_>, sqlx::Error> {
        let mut guard = self.0.tx.lock().await;
        if guard.is_none() {
            *guard = Some(self.0.pool.begin().await?);
        }
        Ok(TxGuard(guard))
    }
}

/// The handler's transaction, locked: a `PgConnection` to run queries on.
#[derive(Debug)]
pub struct TxGuard<'a>(MutexGuard<'a, Option<Transaction<'static, Postgres>>>);

impl Deref for TxGuard<'_> {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        self.0
            .as_ref()
            .expect("a TxGuard always holds a transaction")
    }
}

impl DerefMut for TxGuard<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.0
            .as_mut()
            .expect("a TxGuard always holds a transaction")
    }
}

/// The transaction of the handler call in progress, if it runs under a PostgreSQL inbox.
pub(crate) fn current_tx() -> Option<Tx> {
    TX_SLOT.try_with(|slot| Tx(slot.clone())).ok()
}

impl FromMessage for Tx {
    type Rpc = NoReply;

    fn from_message(_: &Incoming) -> std::result::Result<Self, HandlerError> {
        TX_SLOT.try_with(|slot| Tx(slot.clone())).map_err(|_| {
            HandlerError::rejected("`Tx` is only available while tchu runs the handler")
        })
    }

    fn check(resources: &Resources) -> std::result::Result<(), String> {
        if resources.transactional {
            Ok(())
        } else {
            Err("needs `Tx` but the service has no PostgreSQL inbox: \
                 `Service::inbox(Inbox::postgres(pool))` or `run!(inbox = ...)`"
                .into())
        }
    }
}
