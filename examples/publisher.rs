//! The publisher half of the two-process example: publishes greetings and exits.
//!
//! Run with: `cargo run --example publisher -- [COUNT]` after starting
//! `cargo run --example subscriber` (RabbitMQ on 127.0.0.1, or `TCHU_BROKER_URL`).

#[tchu::event(topic = "demo.greeting")]
struct Greeting {
    seq: u64,
    text: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: u64 = std::env::args()
        .nth(1)
        .map(|c| c.parse())
        .transpose()?
        .unwrap_or(3);
    let client = tchu::Client::from_env().await?;
    for seq in 1..=count {
        // Returns once RabbitMQ confirmed; fails with `Error::Unroutable` if no service is bound.
        match client
            .publish(&Greeting {
                seq,
                text: format!("hello #{seq} from Rust"),
            })
            .await
        {
            Ok(id) => println!("published greeting #{seq} (id {id})"),
            Err(tchu::Error::Unroutable { topic }) => {
                eprintln!(
                    "nobody subscribes to `{topic}`: start `cargo run --example subscriber` first"
                );
                std::process::exit(2);
            }
            Err(e) => return Err(e.into()),
        }
    }
    client.close().await;
    Ok(())
}
