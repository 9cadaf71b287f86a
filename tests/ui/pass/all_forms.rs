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

#[tchu::subscribe(pattern = "#", name = "audit.everything")]
async fn raw(_msg: Message, _key: RoutingKey, _headers: Headers) -> Result<(), std::io::Error> {
    Ok(())
}

#[tchu::subscribe]
async fn extractors(_db: State<Db>, _ctx: Context, _tenant: Context<Tenant>, client: Client, ev: UserCreated) -> Result<(), tchu::Error> {
    client.publish(&ev).await?;
    Ok(())
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
    let names: Vec<&str> = tchu::Service::new("q").handlers().iter().map(|h| h.pattern).collect();
    assert!(names.contains(&"user.created") && names.contains(&"#") && names.contains(&"local.#"), "{names:?}");
}
