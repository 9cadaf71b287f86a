//! A user's service, written from tchu's README: the first example (an event, a handler bound
//! to it, a pattern handler with extractors, `run!` with state), the RPC example, and a
//! publisher. `tchu-downstream` runs the service; `tchu-downstream publish N` publishes
//! `user.created` number N and calls the payment responder.

use std::time::Duration;
use tchu::CallError;
use tchu::prelude::*;

#[tchu::event(topic = "user.created")]
pub struct UserCreated {
    pub user_id: u64,
    pub email: String,
}

#[tchu::payload]
pub struct Receipt {
    pub receipt_id: String,
}

#[tchu::payload]
#[derive(Debug)]
pub enum PaymentError {
    InsufficientFunds { missing_cents: i64 },
    CardBlocked,
}

#[tchu::event(topic = "rpc.payments.process", response = Receipt, error = PaymentError)]
pub struct ProcessPayment {
    pub user_id: u64,
    pub amount_cents: i64,
}

/// The application's state, as a database pool would be.
pub struct Db {
    name: &'static str,
}

impl Db {
    fn connect() -> Db {
        Db { name: "users" }
    }
}

#[tchu::subscribe]
async fn welcome(ev: UserCreated) -> tchu::Result<()> {
    println!("welcome {} <{}>", ev.user_id, ev.email);
    Ok(())
}

#[tchu::subscribe("user.*")]
async fn audit(msg: Message, ctx: Context, db: State<Db>) {
    let who = ctx.user.as_ref().map(|u| u.to_string()).unwrap_or_default();
    println!("audit {} in {} {who}", msg.topic(), db.name);
}

#[tchu::subscribe]
async fn process(req: ProcessPayment) -> Result<Receipt, PaymentError> {
    match req.amount_cents {
        n if n < 0 => Err(PaymentError::InsufficientFunds { missing_cents: -n }),
        _ => Ok(Receipt {
            receipt_id: format!("r-{}", req.user_id),
        }),
    }
}

#[tokio::main]
async fn main() -> tchu::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("publish") => publish(std::env::args().nth(2).and_then(|n| n.parse().ok())).await,
        _ => tchu::run!(queue = "users_queue", state = Db::connect()),
    }
}

/// Publishes `user.created` and calls the payment responder, as the README's examples do.
async fn publish(n: Option<u64>) -> tchu::Result<()> {
    let user_id = n.unwrap_or(1);
    let client = tchu::Client::from_env().await?;
    client
        .publish(&UserCreated {
            user_id,
            email: "a@b.c".into(),
        })
        .await?;
    println!("published user.created {user_id}");
    let payment = ProcessPayment {
        user_id,
        amount_cents: 500,
    };
    match client.call(&payment).timeout(Duration::from_secs(5)).await {
        Ok(receipt) => println!("receipt {}", receipt.receipt_id),
        Err(CallError::Business(e)) => println!("refused {e:?}"),
        // What a user matches on instead of every variant, and the chain printed once.
        Err(CallError::Connection(e)) if e.kind() == tchu::ErrorKind::Connection => {
            println!(
                "broker trouble: {} (see {})",
                tchu::error_chain(&e),
                e.help()
            );
        }
        Err(other) => println!("call failed: {}", tchu::error_chain(&other)),
    }
    client.close().await;
    Ok(())
}
