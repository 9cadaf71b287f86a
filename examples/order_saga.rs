//! A saga: the order process across a stock service and a payment service, kept by the order
//! service in PostgreSQL, each step exactly once.
//!
//! ```text
//! order.placed ──▶ stock.reserve ──▶ stock.reserved ──▶ payment.charge ──▶ payment.charged ──▶ order.confirmed
//!                  (timeout: order.payment_due)          payment.failed or the timeout ──▶ stock.release + order.cancelled
//! ```
//!
//! Each step changes the saga's state, publishes its commands through the outbox, and records
//! its inbox key in one transaction: a step delivered twice, or cut short by a crash, applies
//! once. The payment deadline is a timeout held by the broker; it is ignored if the order was
//! confirmed or cancelled meanwhile.
//!
//! Run with: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/tchu_test cargo run --example
//! order_saga --features postgres` (RabbitMQ and PostgreSQL). Environment: `DATABASE_URL`,
//! `TCHU_QUEUE` (default `orders_saga`), `ORDER_PAYMENT_WINDOW_MS` (default 15 minutes).

use std::time::Duration;
use tchu::{Inbox, Outbox, Saga, SagaState, State, Tx, sqlx};

/// What the order process remembers between its events.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct OrderProcess {
    cents: i64,
    /// Stock is reserved: a cancellation must release it.
    reserved: bool,
}

impl SagaState for OrderProcess {
    const NAME: &'static str = "order";
}

#[tchu::event(topic = "order.placed")]
struct OrderPlaced {
    order_id: String,
    cents: i64,
}

#[tchu::event(topic = "stock.reserve")]
struct ReserveStock {
    order_id: String,
}

#[tchu::event(topic = "stock.reserved")]
struct StockReserved {
    order_id: String,
}

#[tchu::event(topic = "payment.charge")]
struct ChargePayment {
    order_id: String,
    cents: i64,
}

#[tchu::event(topic = "payment.charged")]
struct PaymentCharged {
    order_id: String,
}

#[tchu::event(topic = "payment.failed")]
struct PaymentFailed {
    order_id: String,
    reason: String,
}

/// The saga's timeout: no payment in time.
#[tchu::event(topic = "order.payment_due")]
struct PaymentDue {
    order_id: String,
}

#[tchu::event(topic = "stock.release")]
struct ReleaseStock {
    order_id: String,
}

#[tchu::event(topic = "order.confirmed")]
struct OrderConfirmed {
    order_id: String,
}

#[tchu::event(topic = "order.cancelled")]
struct OrderCancelled {
    order_id: String,
    reason: String,
}

/// How long a placed order waits for its payment.
struct PaymentWindow {
    after: Duration,
}

#[tchu::subscribe(saga(key = "order_id", start))]
async fn placed(
    e: OrderPlaced,
    mut order: Saga<OrderProcess>,
    tx: Tx,
    outbox: State<Outbox>,
    window: State<PaymentWindow>,
) -> tchu::Result<()> {
    order.cents = e.cents;
    let reserve = ReserveStock {
        order_id: e.order_id.clone(),
    };
    outbox.publish(&mut *tx.lock().await?, &reserve).await?;
    let due = PaymentDue {
        order_id: e.order_id,
    };
    order.timeout_in(window.after, &due).await
}

#[tchu::subscribe(saga(key = "order_id"))]
async fn stock_reserved(
    e: StockReserved,
    mut order: Saga<OrderProcess>,
    tx: Tx,
    outbox: State<Outbox>,
) -> tchu::Result<()> {
    order.reserved = true;
    let charge = ChargePayment {
        order_id: e.order_id,
        cents: order.cents,
    };
    outbox.publish(&mut *tx.lock().await?, &charge).await?;
    Ok(())
}

#[tchu::subscribe(saga(key = "order_id"))]
async fn payment_charged(
    e: PaymentCharged,
    mut order: Saga<OrderProcess>,
    tx: Tx,
    outbox: State<Outbox>,
) -> tchu::Result<()> {
    let confirmed = OrderConfirmed {
        order_id: e.order_id,
    };
    outbox.publish(&mut *tx.lock().await?, &confirmed).await?;
    order.complete();
    println!("confirmed {}", order.key());
    Ok(())
}

#[tchu::subscribe(saga(key = "order_id"))]
async fn payment_failed(
    e: PaymentFailed,
    order: Saga<OrderProcess>,
    tx: Tx,
    outbox: State<Outbox>,
) -> tchu::Result<()> {
    cancel(order, &tx, &outbox, &e.reason).await
}

/// The deadline passed: unless the order was confirmed or cancelled meanwhile (then the
/// timeout is ignored), it is cancelled.
#[tchu::subscribe(saga(key = "order_id", unknown = "ignore"))]
async fn payment_due(
    _: PaymentDue,
    order: Saga<OrderProcess>,
    tx: Tx,
    outbox: State<Outbox>,
) -> tchu::Result<()> {
    cancel(order, &tx, &outbox, "no payment in time").await
}

/// The compensation: releases what was reserved and cancels the order, in the step's
/// transaction.
async fn cancel(
    mut order: Saga<OrderProcess>,
    tx: &Tx,
    outbox: &Outbox,
    reason: &str,
) -> tchu::Result<()> {
    let order_id = order.key().to_owned();
    let mut conn = tx.lock().await?;
    if order.reserved {
        let release = ReleaseStock {
            order_id: order_id.clone(),
        };
        outbox.publish(&mut conn, &release).await?;
    }
    let cancelled = OrderCancelled {
        order_id: order_id.clone(),
        reason: reason.to_owned(),
    };
    outbox.publish(&mut conn, &cancelled).await?;
    order.complete();
    println!("cancelled {order_id}: {reason}");
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
    let outbox = Outbox::new(pool.clone()).await?;
    let window_ms = std::env::var("ORDER_PAYMENT_WINDOW_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(15 * 60 * 1000);
    let relayed = outbox.clone();
    let window = PaymentWindow {
        after: Duration::from_millis(window_ms),
    };
    tchu::run!(
        queue = "orders_saga",
        inbox = Inbox::postgres(pool),
        outbox = relayed,
        state = outbox,
        state = window,
    )
}
