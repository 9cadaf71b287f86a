//! Exactly-once on the consumer side: each order is charged once, however often the broker
//! delivers `order.placed` (a redelivery after a crash, a producer retrying, a relay killed
//! mid-batch).
//!
//! The handler writes its charge through the transaction tchu gives it (`Tx`). tchu records the
//! inbox key (`order_id`) in that same transaction and commits after the handler returns `Ok`:
//! the charge and the record happen together or not at all, and a duplicate finds the record
//! and is acknowledged without running the handler.
//!
//! Run with: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/tchu_test cargo run --example
//! charges --features postgres` (RabbitMQ and PostgreSQL), then publish orders with the
//! `order_outbox` example. Environment: `DATABASE_URL`, `TCHU_QUEUE` (default `charges`).

use tchu::{Inbox, Tx, sqlx};

/// An order was placed (the same event in both examples: by topic and shape).
#[tchu::event(topic = "order.placed")]
#[derive(Debug)]
struct OrderPlaced {
    order_id: String,
    cents: i64,
}

#[tchu::subscribe(dedup(key = "order_id"), retry(max = 5, backoff = "200ms..5s"))]
async fn charge(order: OrderPlaced, tx: Tx) -> tchu::Result<()> {
    sqlx::query("INSERT INTO charges (order_id, cents) VALUES ($1, $2)")
        .bind(&order.order_id)
        .bind(order.cents)
        .execute(&mut *tx.lock().await?)
        .await?;
    println!("charged {} ({} cents)", order.order_id, order.cents);
    Ok(())
}

#[tokio::main]
async fn main() -> tchu::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tchu_test".into());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect(&url)
        .await?;
    // No unique constraint on purpose: the inbox, not the table, keeps charges single.
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS charges (id bigserial PRIMARY KEY, order_id text NOT NULL, \
         cents bigint NOT NULL, charged_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;
    tchu::run!(queue = "charges", inbox = Inbox::postgres(pool))
}
