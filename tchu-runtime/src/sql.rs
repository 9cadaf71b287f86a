//! The tables of the PostgreSQL stores, as tchu creates them at start-up (unless told not to)
//! and as `tchu inbox schema` / `tchu outbox schema` print them for teams that manage their
//! own migrations. Each script is idempotent.

/// The inbox: one row per (service queue, handler, key) whose effect happened, with the
/// recorded RPC answer and the token of the last forced replay. Rows older than the retention
/// are deleted by the service.
pub const INBOX_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS tchu_inbox (
    queue      text        NOT NULL,
    handler    text        NOT NULL,
    key        text        NOT NULL,
    answer     text,
    forced     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, handler, key)
);
CREATE INDEX IF NOT EXISTS tchu_inbox_created_at ON tchu_inbox (created_at);
";

/// The outbox: messages encoded exactly as `Client::publish` sends them, written in the
/// producer's transaction, published and deleted by the relay in `id` order; and where the
/// relay parks a message the broker keeps refusing (or a row that is not a message), with the
/// reason, instead of losing it or stopping every later one behind it.
pub const OUTBOX_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS tchu_outbox (
    id          bigserial   PRIMARY KEY,
    routing_key text        NOT NULL,
    properties  text        NOT NULL,
    headers     text        NOT NULL,
    body        bytea       NOT NULL,
    attempts    int         NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS tchu_outbox_parked (
    id          bigint      PRIMARY KEY,
    routing_key text        NOT NULL,
    properties  text        NOT NULL,
    headers     text        NOT NULL,
    body        bytea       NOT NULL,
    created_at  timestamptz NOT NULL,
    reason      text        NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now()
);
";

/// Sagas: one row per saga (name, correlation key), its state as JSON, `running` or (when its
/// state type keeps them) `completed`, and the timeouts it waits for (topic → token, due time). Created at start-up by services with saga handlers.
pub const SAGA_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS tchu_sagas (
    saga         text        NOT NULL,
    key          text        NOT NULL,
    state        text,
    status       text        NOT NULL DEFAULT 'running',
    timeouts     text        NOT NULL DEFAULT '{}',
    version      bigint      NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    PRIMARY KEY (saga, key)
);
CREATE INDEX IF NOT EXISTS tchu_sagas_updated_at ON tchu_sagas (saga, status, updated_at);
";

/// Schedules: one row per schedule of a service, when its next occurrence is due, and how the
/// last one went. Created at start-up by services with schedules.
pub const SCHEDULE_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS tchu_schedules (
    service          text        NOT NULL,
    name             text        NOT NULL,
    spec             text        NOT NULL,
    missed           text        NOT NULL,
    next_due         timestamptz NOT NULL,
    last_due         timestamptz,
    last_fired_at    timestamptz,
    last_finished_at timestamptz,
    last_outcome     text,
    last_error       text,
    fired            bigint      NOT NULL DEFAULT 0,
    skipped          bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (service, name)
);
";

/// The channel the outbox's writers notify and its relays listen on.
pub const OUTBOX_CHANNEL: &str = "tchu_outbox";

/// Runs an idempotent schema script under a transaction-scoped advisory lock, so replicas
/// starting together do not race on `CREATE TABLE IF NOT EXISTS`.
#[cfg(feature = "postgres")]
pub(crate) async fn create_schema(
    pool: &sqlx::PgPool,
    script: &str,
) -> std::result::Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(7379011)")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(script).execute(&mut *tx).await?;
    tx.commit().await
}
