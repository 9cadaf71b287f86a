//! Every accepted form compiles, with the generated code clean under `deny(warnings)`.
#![deny(warnings)]

use tchu::prelude::*;

#[tchu::event(topic = "user.created")]
pub struct UserCreated {
    pub id: u64,
    #[serde(default)]
    pub email: Option<String>,
}

pub struct Db;

#[derive(serde::Deserialize)]
pub struct Tenant {
    pub company: u64,
}

#[tchu::subscribe]
async fn typed(_ev: UserCreated) {}

#[tchu::subscribe("user.*")]
async fn typed_with_pattern(_ev: UserCreated) -> tchu::Result<()> {
    Ok(())
}

#[tchu::subscribe(pattern = "#", name = "audit.everything", metadata(owner = "audit", "runbook.url" = "https://x"))]
async fn raw(_msg: Message, _key: RoutingKey, _headers: Headers) -> Result<(), std::io::Error> {
    Ok(())
}

#[tchu::subscribe]
async fn extractors(_db: State<Db>, _ctx: Context, _tenant: Context<Tenant>, client: Client, ev: UserCreated) -> Result<(), tchu::Error> {
    client.publish(&ev).await?;
    Ok(())
}

#[tchu::subscribe(dedup)]
async fn once_per_message(_ev: UserCreated) {}

#[tchu::subscribe("user.*", dedup(key = "id"), retry(max = 3))]
async fn once_per_user(_msg: Message) {}

#[tchu::subscribe(ordered(key = "id"), retry(max = 3, backoff = "10ms..1s"))]
async fn in_order_per_user(_ev: UserCreated) {}

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Signup {
    pub welcomed: bool,
}

impl tchu::SagaState for Signup {
    const NAME: &'static str = "signup";
    const KEEP_COMPLETED: bool = true;
}

#[tchu::subscribe(saga(key = "id", start))]
async fn signup_begins(_ev: UserCreated, mut signup: tchu::Saga<Signup>) {
    signup.welcomed = false;
}

#[tchu::subscribe("user.welcomed", saga(key = "id", unknown = "ignore"), dedup(key = "id"))]
async fn signup_ends(mut signup: tchu::Saga<Signup>) {
    signup.welcomed = true;
    signup.complete();
}

#[tchu::schedule(cron = "0 */15 * * * *", tz = "Europe/Amsterdam")]
async fn every_quarter(_run: tchu::Occurrence) {}

#[tchu::schedule(
    "0 30 2 * * Mon-Fri",
    missed = "skip",
    name = "weekday-report",
    retry(max = 3, backoff = "1s"),
    metadata(owner = "reports")
)]
async fn weekday_report(run: tchu::Occurrence, client: Client) -> tchu::Result<()> {
    let _ = (run.due(), run.missed(), client);
    Ok(())
}

#[allow(dead_code)]
async fn service_with_inbox() -> tchu::Result<()> {
    tchu::run!(queue = "inbox_queue", inbox = tchu::Inbox::connect("redis://127.0.0.1")?)
}

fn handlers_in_a_function_body() {
    #[tchu::subscribe("local.#")]
    async fn local(_m: Message) {}
}

#[allow(dead_code)]
async fn service() -> tchu::Result<()> {
    tchu::run!(queue = "users_queue", prefetch = 4, state = Db)
}

#[allow(dead_code)]
async fn default_service() -> tchu::Result<()> {
    tchu::run!()
}

fn main() {
    handlers_in_a_function_body();
    let handlers = tchu::Service::new("q")
        .on::<(UserCreated, tchu::State<Db>, tchu::Attempt)>(|(_ev, _db, _n)| async {})
        .on_pattern::<tchu::Message>("runtime.#", |_msg| async { Ok::<(), tchu::Error>(()) })
        .handlers();
    let names: Vec<&str> = handlers.iter().map(|h| h.pattern()).collect();
    assert!(names.contains(&"user.created") && names.contains(&"#") && names.contains(&"local.#"), "{names:?}");
    assert!(names.contains(&"runtime.#"), "{names:?}");
}

#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Receipt {
    pub id: u64,
}

#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Declined {
    pub reason: String,
}

#[tchu::event(topic = "rpc.pay", response = Receipt, error = Declined)]
pub struct Pay {
    pub cents: i64,
}

#[tchu::event(topic = "rpc.lookup", response = Receipt)]
pub struct Lookup {
    pub id: u64,
}

#[tchu::subscribe]
async fn pay(req: Pay, _db: State<Db>) -> Result<Receipt, Declined> {
    if req.cents < 0 { Err(Declined { reason: "negative".into() }) } else { Ok(Receipt { id: 1 }) }
}

#[tchu::subscribe]
async fn lookup_plain(req: Lookup) -> Receipt {
    Receipt { id: req.id }
}

#[tchu::subscribe(name = "lookup.fallible")]
async fn lookup_fallible(req: Lookup) -> Result<Receipt, RpcError> {
    Err(RpcError::new("NOT_FOUND", format!("no receipt {}", req.id)))
}

#[allow(dead_code)]
async fn caller(client: Client) -> Result<(), Box<dyn std::error::Error>> {
    let _receipt: Receipt = client.call(&Lookup { id: 1 }).timeout(std::time::Duration::from_secs(1)).await?;
    match client.call(&Pay { cents: 5 }).await {
        Ok(Receipt { id }) => assert!(id > 0),
        Err(CallError::Business(Declined { reason })) => assert!(!reason.is_empty()),
        Err(other) => return Err(other.to_string().into()),
    }
    Ok(())
}

#[tchu::event(topic = "job.run")]
pub struct Job {
    pub id: u64,
}

#[tchu::subscribe(retry(max_attempts = 5, backoff = "100ms..10m", jitter, on(std::io::Error, std::fmt::Error)), ack = "late")]
async fn retried(_job: Job, attempt: Attempt) -> Result<(), std::io::Error> {
    if attempt.0 < 3 { Err(std::io::Error::other("later")) } else { Ok(()) }
}

#[tchu::subscribe(name = "job.fixed", retry(max = 2, backoff = "2s", jitter = false), ack = "early")]
async fn fixed(_job: Job) {}

#[allow(dead_code)]
async fn service_with_default_retry() -> tchu::Result<()> {
    tchu::run!(queue = "jobs", retry(max_attempts = 3, backoff = "1s..1m", jitter))
}

#[allow(dead_code)]
async fn service_catching_up() -> tchu::Result<()> {
    tchu::run!(queue = "index", replay_from = "2026-12-06T10:00:00Z")
}

#[allow(dead_code)]
async fn service_catching_up_a_day() -> tchu::Result<()> {
    tchu::run!(queue = "index", replay_from = "2d")
}
