//! An extractor of the user's own, next to the built-in ones, clean under `deny(warnings)`.
#![deny(warnings)]

use tchu::{FromMessage, HandlerError, Incoming, NoReply, State};

#[tchu::event(topic = "order.paid")]
pub struct OrderPaid {
    pub order: u64,
}

/// The tenant of a message, from its `tenant` header.
pub struct Tenant(pub String);

impl FromMessage for Tenant {
    type Rpc = NoReply;

    fn from_message(incoming: &Incoming) -> Result<Self, HandlerError> {
        let header = incoming.message().headers().get("tenant");
        let tenant = header.and_then(|v| v.as_str());
        let tenant = tenant.ok_or_else(|| HandlerError::rejected("no tenant header"))?;
        Ok(Tenant(tenant.to_owned()))
    }
}

pub struct Db;

#[tchu::subscribe]
async fn paid(_ev: OrderPaid, _tenant: Tenant, _db: State<Db>) {}

#[tchu::subscribe(retry(max = 3))]
async fn paid_with_retries(_tenant: Tenant, _ev: OrderPaid) -> tchu::Result<()> {
    Ok(())
}

fn main() {}
