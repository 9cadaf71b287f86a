//! Version 1 of a service's contract, for the schema gate (README, "Contracts"): it consumes
//! `contract.order.placed` with a numeric `id`. `contract_v2` changes `id` to a string (a
//! breaking change); `contract_v2_compatible` only adds an optional `note`.
//!
//! Run with: `cargo run --example contract_v1` (consumes), or `cargo run --example contract_v1
//! -- publish 7` (publishes one order). `schema --out DIR` and `schema --check-against DIR` work
//! as for any `run!()` service.

/// An order was placed: version 1.
#[tchu::event(topic = "contract.order.placed")]
#[derive(Debug)]
struct OrderPlaced {
    id: u64,
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
        let id = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
        let client = tchu::Client::from_env().await?;
        client.publish(&OrderPlaced { id, cents: 500 }).await?;
        client.close().await;
        return Ok(());
    }
    tchu::run!(queue = "contract_orders")
}
