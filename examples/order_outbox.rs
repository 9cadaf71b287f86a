//! Exactly-once on the producer side: an order row and its `order.placed` event are committed
//! in one PostgreSQL transaction, through the outbox. A rollback publishes nothing; a commit
//! publishes the event even if the broker is down at that moment (it waits in the table).
//!
//! Run with: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/tchu_test cargo run --example
//! order_outbox --features postgres -- 3` (places 3 orders, then relays them and exits). In a
//! service, run the relay beside it instead: `tchu::run!(outbox = outbox, ...)`, or alone with
//! `tchu outbox relay`.

use tchu::sqlx;

/// An order was placed (the same event in both examples: by topic and shape).
#[tchu::event(topic = "order.placed")]
#[derive(Debug)]
struct OrderPlaced {
    order_id: String,
    cents: i64,
}

#[tokio::main]
async fn main() -> tchu::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tchu_test".into());
    let pool = sqlx::PgPool::connect(&url).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS orders (id text PRIMARY KEY, cents bigint NOT NULL)")
        .execute(&pool)
        .await?;
    let outbox = tchu::Outbox::new(pool.clone()).await?;
    let count: u32 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    for i in 0..count {
        let order_id = format!("ord-{}", uuid::Uuid::new_v4().simple());
        let cents = 1_000 + i64::from(i);
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO orders (id, cents) VALUES ($1, $2)")
            .bind(&order_id)
            .bind(cents)
            .execute(&mut *tx)
            .await?;
        outbox
            .publish(
                &mut tx,
                &OrderPlaced {
                    order_id: order_id.clone(),
                    cents,
                },
            )
            .await?;
        tx.commit().await?; // the row and the event exist from here on, together
        println!("placed {order_id}");
    }
    let client = tchu::Client::from_env().await?;
    while outbox.pending().await? > 0 {
        outbox.relay_once(&client).await?;
    }
    println!("relayed {count} orders");
    client.close().await;
    Ok(())
}
