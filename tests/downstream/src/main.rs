//! A user's service, written from tchu's README: the first example (an event, a handler bound
//! to it, a pattern handler with extractors, one of them the user's own, `run!` with state),
//! the RPC example, and a publisher. `tchu-downstream` runs the service; `tchu-downstream
//! publish N` publishes `user.created` number N and calls the payment responder;
//! `tchu-downstream unreachable` shows how a failure reads through `anyhow`; `tchu-downstream
//! saga` runs a saga built at run time on the in-memory broker, as a user's unit test would;
//! `tchu-downstream schedule` runs a schedule built at run time there for a few seconds.

use std::time::Duration;
use tchu::prelude::*;
use tchu::{CallError, FromMessage, HandlerError, Incoming, NoReply};
use tracing::Instrument;

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

/// The tenant of a message: an extractor of the user's own, from the `tenant` header.
pub struct Tenant(String);

impl FromMessage for Tenant {
    type Rpc = NoReply;

    fn from_message(incoming: &Incoming) -> Result<Self, HandlerError> {
        let header = incoming.message().headers().get("tenant");
        let tenant = header.and_then(|v| v.as_str()).unwrap_or("default");
        Ok(Tenant(tenant.to_owned()))
    }
}

#[tchu::subscribe]
async fn welcome(ev: UserCreated) -> tchu::Result<()> {
    // The user's own span, as a database query would have: exported under the handler's.
    let lookup = tracing::info_span!("welcome.lookup", user_id = ev.user_id);
    async { println!("welcome {} <{}>", ev.user_id, ev.email) }
        .instrument(lookup)
        .await;
    Ok(())
}

/// Each user's events in publish order, whatever replica runs them.
#[tchu::subscribe(ordered(key = "user_id"), retry(max = 2, backoff = "10ms"))]
async fn per_user(ev: UserCreated) {
    println!("in order {}", ev.user_id);
}

#[tchu::subscribe("user.*")]
async fn audit(msg: Message, ctx: Context, db: State<Db>, tenant: Tenant) {
    let who = ctx.user.as_ref().map(|u| u.to_string()).unwrap_or_default();
    println!(
        "audit {} in {} for {} {who}",
        msg.topic(),
        db.name,
        tenant.0
    );
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
        Some("unreachable") => {
            unreachable_broker().await;
            Ok(())
        }
        Some("saga") => signup_saga().await,
        Some("schedule") => every_second().await,
        _ => tchu::run!(queue = "users_queue", state = Db::connect()),
    }
}

/// A schedule built at run time (as from configuration) on the in-memory broker for 2.5
/// seconds, as a unit test would; prints each run and how many there were. (An attribute
/// schedule would join the `run!()` service above, which has no PostgreSQL inbox to keep it.)
async fn every_second() -> tchu::Result<()> {
    use std::sync::atomic::{AtomicU32, Ordering};
    use tchu::{Handler, Missed, Occurrence, ScheduleSpec};
    static TICKS: AtomicU32 = AtomicU32::new(0);
    let spec = ScheduleSpec::cron("tick", "* * * * * *")
        .tz("Europe/Amsterdam")
        .missed(Missed::Skip);
    let tick = Handler::every(spec, |run: Occurrence| async move {
        TICKS.fetch_add(1, Ordering::SeqCst);
        println!("tick {} missed {}", run.schedule(), run.missed());
    });
    let broker = tchu::MemoryBroker::new();
    let service = tchu::Service::new("ticks")
        .handlers_in("no::attribute::handlers")
        .handler(tick)
        .start(&tchu::Client::memory(&broker))
        .await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    service.shutdown().await?;
    println!("ticked {}", TICKS.load(Ordering::SeqCst));
    Ok(())
}

/// A signup process: begun by `user.created`, ended by `user.welcomed`.
#[tchu::payload]
#[derive(Debug, Default)]
pub struct Signup {
    pub emails: u32,
}

#[tchu::event(topic = "user.welcomed")]
pub struct UserWelcomed {
    pub user_id: u64,
}

impl tchu::SagaState for Signup {
    const NAME: &'static str = "signup";
}

/// A saga's handlers built at run time and driven on the in-memory broker, as a unit test of
/// the user's would; prints what the saga saw.
async fn signup_saga() -> tchu::Result<()> {
    use tchu::{Handler, Saga, SagaSpec, UnknownSaga};
    let broker = tchu::MemoryBroker::new();
    let client = tchu::Client::memory(&broker);
    let begin = Handler::on_pattern("user.created", |mut s: Saga<Signup>| async move {
        s.emails += 1;
    })
    .with_name("signup_begins")
    .with_saga(SagaSpec::of::<Signup>("user_id").start());
    let end = Handler::on_pattern("user.welcomed", |mut s: Saga<Signup>| async move {
        println!("saga {} ends after {} email(s)", s.key(), s.emails);
        s.complete();
    })
    .with_name("signup_ends")
    .with_saga(SagaSpec::of::<Signup>("user_id").unknown(UnknownSaga::Park));
    let service = tchu::Service::new("signup")
        .handlers_in("no::attribute::handlers")
        .handler(begin)
        .handler(end)
        .start(&client)
        .await?;
    let created = UserCreated {
        user_id: 7,
        email: "a@b.c".into(),
    };
    client.publish(&created).await?;
    client.publish(&UserWelcomed { user_id: 7 }).await?;
    client.publish(&UserWelcomed { user_id: 7 }).await?;
    broker.settled().await;
    println!("parked {}", broker.peek("signup.dlq").len());
    service.shutdown().await
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

/// A broker that is not there, as a user's code sees it: the kind to match on, the help
/// entry, and the chain through `anyhow`, each cause once.
async fn unreachable_broker() {
    let Err(err) = tchu::Client::connect("amqp://guest:guest@127.0.0.1:1/%2f").await else {
        panic!("nothing listens on port 1");
    };
    println!("kind {:?} help {}", err.kind(), err.help());
    println!("anyhow {:#}", anyhow::Error::from(err));
}
