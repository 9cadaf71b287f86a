//! The subscriber half of the two-process example: a service on RabbitMQ.
//!
//! Run with: `cargo run --example subscriber` (RabbitMQ on 127.0.0.1, or `TCHU_BROKER_URL`),
//! then, in another terminal, `cargo run --example publisher`. Stop it with Ctrl-C.
//!
//! Set `TCHU_EXIT_AFTER=N` to exit by itself after N events (used by the test suite).

use std::sync::atomic::{AtomicUsize, Ordering};
use tchu::prelude::*;

/// The event the publisher sends (each process declares the same type; only the topic and the
/// JSON shape travel).
#[tchu::event(topic = "demo.greeting")]
struct Greeting {
    seq: u64,
    text: String,
}

static SEEN: AtomicUsize = AtomicUsize::new(0);

#[tchu::subscribe]
async fn greet(g: Greeting) {
    println!("received greeting #{}: {}", g.seq, g.text);
    let n = SEEN.fetch_add(1, Ordering::SeqCst) + 1;
    let exit_after = std::env::var("TCHU_EXIT_AFTER")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    if exit_after.is_some_and(|limit| n >= limit) {
        println!("received {n} greetings, exiting");
        // The delivery is acknowledged after this handler returns; give the ack a moment.
        tokio::spawn(async {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            std::process::exit(0);
        });
    }
}

#[tchu::subscribe("demo.#")]
async fn everything(msg: Message) {
    println!("audit: {} ({:?} format)", msg.topic(), msg.format());
}

#[tokio::main]
async fn main() -> tchu::Result<()> {
    tchu::run!(queue = "demo_subscriber", prefetch = 8)
}
