//! Version 2 of the contract of `contract_v1`, with a breaking change: the order `id` became a
//! string. The schema gate refuses it against version 1's schemas, and a version 1 consumer
//! dead-letters its events as `schema_mismatch`, naming both schema fingerprints.
//!
//! Run with: `cargo run --example contract_v2 -- publish ord-7`, or as a service.

/// An order was placed: version 2 (breaking: `id` is a string now).
#[tchu::event(topic = "contract.order.placed")]
#[derive(Debug)]
struct OrderPlaced {
    id: String,
    cents: i64,
}

#[tchu::subscribe]
async fn placed(order: OrderPlaced) {
    println!("placed {} ({} cents)", order.id, order.cents);
}

#[tokio::main]
async fn main() -> tchu::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("publish") {
        let id = args.get(2).cloned().unwrap_or_else(|| "ord-1".into());
        let client = tchu::Client::from_env().await?;
        client.publish(&OrderPlaced { id, cents: 500 }).await?;
        client.close().await;
        return Ok(());
    }
    tchu::run!(queue = "contract_orders")
}
