//! An orders service that shows what a `tchu::run!()` binary can tell about itself: a typed
//! handler with retries, a raw audit handler on a pattern, and an RPC responder.
//!
//! ```text
//! cargo run --example orders                 # consume (RabbitMQ on 127.0.0.1 or TCHU_BROKER_URL)
//! cargo run --example orders -- topology     # exchange, queues, retry tiers, bindings, handlers
//! cargo run --example orders -- check --fix  # compare with the live broker, repair drift
//! cargo run --example orders -- schema       # JSON Schema of every event, response and error
//! cargo run --example orders -- asyncapi     # AsyncAPI 3.0 document
//! ```

use tchu::prelude::*;

/// A customer placed an order.
#[tchu::event(topic = "orders.placed")]
#[derive(Debug)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: u64,
    /// Its lines.
    pub lines: Vec<OrderLine>,
    /// Optional delivery note.
    #[serde(default)]
    pub note: Option<String>,
}

/// One line of an order.
#[tchu::payload]
#[derive(Debug)]
pub struct OrderLine {
    /// Stock keeping unit.
    pub sku: String,
    /// How many.
    pub quantity: u32,
}

/// The warehouse shipped an order.
#[tchu::event(topic = "orders.shipped")]
#[derive(Debug)]
pub struct OrderShipped {
    /// The order.
    pub order_id: u64,
    /// The carrier's tracking code.
    pub tracking: String,
}

/// A price quote for an order, answered over RPC.
#[tchu::payload]
#[derive(Debug)]
pub struct Quote {
    /// Total in cents.
    pub total_cents: i64,
}

/// Why no quote can be given.
#[tchu::payload]
#[derive(Debug)]
pub enum QuoteError {
    /// The SKU is not sold.
    UnknownSku {
        /// The SKU asked for.
        sku: String,
    },
}

/// Asks for the price of some lines.
#[tchu::event(topic = "orders.quote", response = Quote, error = QuoteError)]
#[derive(Debug)]
pub struct QuoteRequest {
    /// The lines to price.
    pub lines: Vec<OrderLine>,
}

#[tchu::subscribe(retry(max_attempts = 5, backoff = "1s..1m", jitter))]
async fn reserve_stock(order: OrderPlaced, client: Client) -> tchu::Result<()> {
    println!("reserving stock for order {}", order.order_id);
    client
        .publish(&OrderShipped {
            order_id: order.order_id,
            tracking: format!("TRK{}", order.order_id),
        })
        .await?;
    Ok(())
}

#[tchu::subscribe("orders.#")]
async fn audit(msg: Message) {
    println!("audit: {} {}", msg.topic(), msg.payload());
}

#[tchu::subscribe]
async fn quote(req: QuoteRequest) -> Result<Quote, QuoteError> {
    let mut total = 0;
    for line in &req.lines {
        let unit = match line.sku.as_str() {
            "apple" => 40,
            "pear" => 55,
            other => {
                return Err(QuoteError::UnknownSku {
                    sku: other.to_owned(),
                });
            }
        };
        total += unit * i64::from(line.quantity);
    }
    Ok(Quote { total_cents: total })
}

#[tokio::main]
async fn main() -> tchu::Result<()> {
    tchu::run!(queue = "orders_queue", prefetch = 8)
}
