//! A compatible version 2 of the contract of `contract_v1`: an optional `note` is added. The
//! schema gate accepts it against version 1's schemas, and a version 1 consumer handles its
//! events (its fingerprint differs, which is logged and counted, and nothing else).
//!
//! Run with: `cargo run --example contract_v2_compatible -- publish 7`, or as a service.

/// An order was placed: version 2, compatible (an optional field more).
#[tchu::event(topic = "contract.order.placed")]
#[derive(Debug)]
struct OrderPlaced {
    id: u64,
    cents: i64,
    #[serde(default)]
    note: Option<String>,
}

#[tchu::subscribe]
async fn placed(order: OrderPlaced) {
    println!(
        "placed {} ({} cents, {:?})",
        order.id, order.cents, order.note
    );
}

#[tokio::main]
async fn main() -> tchu::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("publish") {
        let id = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
        let client = tchu::Client::from_env().await?;
        let note = Some("gift wrap".to_owned());
        client
            .publish(&OrderPlaced {
                id,
                cents: 500,
                note,
            })
            .await?;
        client.close().await;
        return Ok(());
    }
    tchu::run!(queue = "contract_orders")
}
