//! A serverless-style function publishing events with the publish-only `tchu::Producer`: no cloud
//! SDK, just a plain async handler and a small driver calling it the way a function runtime would.
//!
//! Run with: `cargo run --example lambda` (RabbitMQ on 127.0.0.1, or `TCHU_BROKER_URL`). Each
//! invocation connects, publishes with a broker confirm, and closes. With no service bound to
//! `order.placed` the function answers 503: the broker returned the event instead of losing it.

use std::error::Error;

/// What a function runtime hands the function.
struct Request {
    body: String,
}

/// What the function returns to it.
struct Response {
    status: u16,
    body: String,
}

#[tchu::payload]
struct NewOrder {
    order_id: u64,
    amount_cents: i64,
}

#[tchu::event(topic = "order.placed")]
struct OrderPlaced {
    order_id: u64,
    amount_cents: i64,
}

/// The function: validate, publish, answer. Connecting per invocation keeps it stateless.
async fn handler(req: Request) -> Result<Response, Box<dyn Error + Send + Sync>> {
    let order: NewOrder = match serde_json::from_str(&req.body) {
        Ok(o) => o,
        Err(e) => {
            return Ok(Response {
                status: 400,
                body: format!("bad request: {e}"),
            });
        }
    };
    let producer = tchu::Producer::from_env().await?;
    let sent = producer
        .publish(&OrderPlaced {
            order_id: order.order_id,
            amount_cents: order.amount_cents,
        })
        .await;
    producer.close().await;
    match sent {
        Ok(id) => Ok(Response {
            status: 202,
            body: format!("accepted order {} as message {id}", order.order_id),
        }),
        Err(tchu::Error::Unroutable { topic }) => Ok(Response {
            status: 503,
            body: format!("no service subscribes to {topic}"),
        }),
        Err(e) => Err(e.into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let bodies = std::env::args().skip(1).collect::<Vec<_>>();
    let bodies = if bodies.is_empty() {
        vec![
            r#"{"order_id": 1, "amount_cents": 1999}"#.to_owned(),
            "not json".to_owned(),
        ]
    } else {
        bodies
    };
    for body in bodies {
        let res = handler(Request { body }).await?;
        println!("{} {}", res.status, res.body);
    }
    Ok(())
}
