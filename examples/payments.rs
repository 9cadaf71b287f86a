//! Typed RPC: a payments service answering `ProcessPayment` with a receipt or a typed business
//! error, and a caller handling every outcome.
//!
//! Run with: `cargo run --example payments` (in-memory broker), or with
//! `TCHU_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2f` on RabbitMQ.

use std::time::Duration;
use tchu::prelude::*;

#[tchu::payload]
#[derive(Debug)]
struct Receipt {
    receipt_id: String,
    amount_cents: i64,
}

/// The business error: part of the contract, decoded into this type on the caller's side.
#[tchu::payload]
#[derive(Debug)]
enum PaymentError {
    InsufficientFunds { missing_cents: i64 },
    CardBlocked { reason: String },
}

#[tchu::event(topic = "rpc.payments.process", response = Receipt, error = PaymentError)]
struct ProcessPayment {
    user_id: u64,
    amount_cents: i64,
}

mod payments_service {
    use super::*;

    /// The responder: rustc checks that it returns `Result<Receipt, PaymentError>`.
    #[tchu::subscribe]
    async fn process(req: ProcessPayment) -> Result<Receipt, PaymentError> {
        match req {
            ProcessPayment { user_id: 13, .. } => Err(PaymentError::CardBlocked {
                reason: "reported stolen".into(),
            }),
            ProcessPayment { amount_cents, .. } if amount_cents > 10_000 => {
                Err(PaymentError::InsufficientFunds {
                    missing_cents: amount_cents - 10_000,
                })
            }
            ProcessPayment {
                amount_cents: 666, ..
            } => {
                panic!("the card reader caught fire")
            }
            ProcessPayment {
                user_id,
                amount_cents: 777,
            } => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok(Receipt {
                    receipt_id: format!("slow-{user_id}"),
                    amount_cents: 777,
                })
            }
            ProcessPayment {
                user_id,
                amount_cents,
            } => Ok(Receipt {
                receipt_id: format!("rcpt-{user_id}-{amount_cents}"),
                amount_cents,
            }),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = tchu::MemoryBroker::new();
    let client = match std::env::var(tchu::BROKER_URL_ENV) {
        Ok(_) => tchu::Client::from_env().await?,
        Err(_) => tchu::Client::memory(&broker),
    };
    let service = tchu::Service::new("payments_queue")
        .handlers_in(concat!(module_path!(), "::payments_service"))
        .start(&client)
        .await?;

    let requests = [(1, 2_500), (2, 25_000), (13, 100), (4, 666), (5, 777)];
    let mut outcomes = 0;
    for (user_id, amount_cents) in requests {
        let request = ProcessPayment {
            user_id,
            amount_cents,
        };
        match client
            .call(&request)
            .timeout(Duration::from_millis(500))
            .await
        {
            Ok(receipt) => println!(
                "user {user_id}: paid, receipt {} for {} cents",
                receipt.receipt_id, receipt.amount_cents
            ),
            Err(CallError::Business(PaymentError::InsufficientFunds { missing_cents })) => {
                println!("user {user_id}: declined, {missing_cents} cents short")
            }
            Err(CallError::Business(PaymentError::CardBlocked { reason })) => {
                println!("user {user_id}: card blocked ({reason})")
            }
            Err(CallError::HandlerFailed { handler, message }) => {
                println!("user {user_id}: responder {handler} failed: {message}")
            }
            Err(CallError::Timeout { after, .. }) => {
                println!("user {user_id}: no answer within {after:?}")
            }
            Err(other) => println!("user {user_id}: {other}"),
        }
        outcomes += 1;
    }

    // A topic nobody answers fails at once instead of waiting for the deadline.
    match client
        .call_raw(
            "rpc.payments.refund",
            &serde_json::json!({"user_id": 1}),
            Duration::from_secs(30),
        )
        .await
    {
        Err(CallError::NoResponder { topic }) => println!("refund: no responder for `{topic}`"),
        other => println!("refund: unexpected {other:?}"),
    }

    service.shutdown().await?;
    client.close().await;
    println!("{outcomes} calls made");
    Ok(())
}
