//! Catching up on the past: a service deployed today that needs the events published before
//! it existed (a search index of every user ever created, not only tomorrow's).
//!
//! `run!(replay_from = "first")` dispatches the past events of the event log that match the
//! service's bindings, in log order, before it consumes its queue; live events wait in the
//! queue meanwhile. Each is written through the inbox's transaction (`Tx`), with the message
//! id as the inbox key: an event published while the replay began comes twice (from the log
//! and live) and is indexed once, and a replay killed with `kill -9` resumes where it stopped
//! without indexing anything twice. A finished replay is remembered: the next start goes live
//! at once.
//!
//! Run with (RabbitMQ and PostgreSQL): `cargo run --bin tchu -- log declare` once (the log,
//! bound to `tchu_events` with `#`), publish a few `user.*` events, then
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/tchu_test cargo run --example catch_up
//! --features postgres`.
//!
//! An event whose payload has `"poison": true` aborts the process, the way an out-of-memory
//! kill would: started again, the replay runs what the ended run may have been running one
//! event at a time, and parks the one that keeps ending the process as `crashed` (past
//! `TCHU_REDELIVERY_LIMIT` runs) in `catch_up.dlq` instead of dying on it for ever.
//!
//! Environment: `DATABASE_URL`; `TCHU_QUEUE` (default `catch_up`); `TCHU_PATTERN`, the
//! topics indexed (default `user.#`); `TCHU_TABLE`, where (default `user_index`);
//! `TCHU_REPLAY_FROM` and `TCHU_EVENT_LOG` over the replay point and the log.

use tchu::{DedupKey, Handler, Inbox, Message, Tx, sqlx};

/// Indexes one event, replayed or live, in the inbox's transaction.
async fn index((m, tx): (Message, Tx)) -> tchu::Result<()> {
    let table = table();
    let body: serde_json::Value = m.decode().map_err(tchu::Error::handler)?;
    if body["poison"] == true {
        std::process::abort();
    }
    let replayed = m.replayed_from().is_some();
    sqlx::query(&format!(
        "INSERT INTO {table} (topic, body, replayed, pid) VALUES ($1, $2, $3, $4)"
    ))
    .bind(m.topic())
    .bind(body)
    .bind(replayed)
    .bind(i64::from(std::process::id()))
    .execute(&mut *tx.lock().await?)
    .await?;
    Ok(())
}

fn table() -> String {
    std::env::var("TCHU_TABLE").unwrap_or_else(|_| "user_index".into())
}

#[tokio::main]
async fn main() -> tchu::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tchu_test".into());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await?;
    // No unique constraint on purpose: the inbox, not the table, keeps each event single.
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {} (id bigserial PRIMARY KEY, topic text NOT NULL, \
         body jsonb NOT NULL, replayed boolean NOT NULL, pid bigint NOT NULL)",
        table()
    ))
    .execute(&pool)
    .await?;
    let pattern = std::env::var("TCHU_PATTERN").unwrap_or_else(|_| "user.#".into());
    let index = Handler::on_pattern(pattern, index).with_dedup(DedupKey::MessageId);
    tchu::run!(
        queue = "catch_up",
        replay_from = "first",
        inbox = Inbox::postgres(pool),
        handler = index
    )
}
