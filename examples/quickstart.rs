//! Two services and a publisher exchanging events.
//!
//! Run with: `cargo run --example quickstart`
//! - without `TCHU_BROKER_URL`: on the in-memory broker, no RabbitMQ needed;
//! - with `TCHU_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2f`: on RabbitMQ.
//!
//! The `billing` service takes `order.placed`; the `emails` service takes `order.placed` too
//! (fan-out: one publish reaches both queues) and every `user.*` event through a pattern.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tchu::prelude::*;

#[tchu::event(topic = "order.placed")]
struct OrderPlaced {
    order_id: u64,
    amount_cents: i64,
}

#[tchu::event(topic = "user.created")]
struct UserCreated {
    user_id: u64,
    email: String,
}

#[tchu::event(topic = "user.deleted")]
struct UserDeleted {
    user_id: u64,
}

/// Counts handled events, so the demo knows when everything arrived.
#[derive(Default)]
struct Received {
    count: AtomicUsize,
}

mod billing {
    use super::*;

    #[tchu::subscribe]
    async fn charge(order: OrderPlaced, seen: State<Received>) {
        println!(
            "[billing] charging order {} ({} cents)",
            order.order_id, order.amount_cents
        );
        seen.count.fetch_add(1, Ordering::SeqCst);
    }
}

mod emails {
    use super::*;

    #[tchu::subscribe]
    async fn receipt(order: OrderPlaced, seen: State<Received>) {
        println!("[emails]  sending a receipt for order {}", order.order_id);
        seen.count.fetch_add(1, Ordering::SeqCst);
    }

    #[tchu::subscribe("user.*")]
    async fn users(msg: Message, ctx: Context, seen: State<Received>) {
        println!(
            "[emails]  {} {} (authorized: {})",
            msg.topic(),
            msg.payload(),
            ctx.is_authorized()
        );
        seen.count.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tchu::init_tracing();
    let memory = std::env::var(tchu::BROKER_URL_ENV).is_err();
    let broker = tchu::MemoryBroker::new();
    let client = if memory {
        println!("transport: in-memory (set TCHU_BROKER_URL to use RabbitMQ)");
        tchu::Client::memory(&broker)
    } else {
        println!("transport: RabbitMQ");
        tchu::Client::from_env().await?
    };

    let seen = Arc::new(Received::default());
    let billing = tchu::Service::new("quickstart_billing")
        .handlers_in(module_path!().to_owned() + "::billing")
        .state_arc(seen.clone())
        .start(&client)
        .await?;
    let emails = tchu::Service::new("quickstart_emails")
        .handlers_in(module_path!().to_owned() + "::emails")
        .state_arc(seen.clone())
        .start(&client)
        .await?;

    client
        .publish(&OrderPlaced {
            order_id: 42,
            amount_cents: 1999,
        })
        .await?;
    client
        .publish(&UserCreated {
            user_id: 7,
            email: "ada@example.com".into(),
        })
        .await?;
    client.publish(&UserDeleted { user_id: 7 }).await?;
    // order.placed reaches both services; each user.* event reaches `emails`.
    let expected = 4;

    if memory {
        broker.settled().await;
    } else {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while seen.count.load(Ordering::SeqCst) < expected && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    billing.shutdown().await?;
    emails.shutdown().await?;
    client.close().await;

    let got = seen.count.load(Ordering::SeqCst);
    // On RabbitMQ the queues are durable: events other programs published to these topics while
    // the demo was not running are delivered too, so more than this run's four may show up.
    println!("handled {got} deliveries ({expected} from this run)");
    if got < expected {
        return Err(format!("only {got} of {expected} deliveries were handled").into());
    }
    Ok(())
}
