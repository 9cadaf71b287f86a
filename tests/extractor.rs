//! An extractor of the user's own (`impl tchu::FromMessage`): a tenant read from a header and a
//! repository built from the service's state reach the handler on a real RabbitMQ; a message
//! the extractor refuses is parked once as `rejected`, with the extractor's text.
#![cfg(feature = "service")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tchu::{FromMessage, HandlerError, Incoming, NoReply, PublishOptions, Resources};

#[tchu::event(topic = "it.extractor.order_paid")]
struct OrderPaid {
    order: u64,
}

/// The tenant of a message, from its `tenant` header.
struct Tenant(String);

impl FromMessage for Tenant {
    type Rpc = NoReply;

    fn from_message(incoming: &Incoming) -> Result<Self, HandlerError> {
        let header = incoming.message().headers().get("tenant");
        let tenant = header.and_then(|v| v.as_str());
        let tenant = tenant.ok_or_else(|| HandlerError::rejected("no tenant header"))?;
        Ok(Tenant(tenant.to_owned()))
    }
}

/// Where paid orders are written, per tenant: built from the service's state.
#[derive(Default)]
struct Ledger {
    rows: Mutex<Vec<(String, u64)>>,
}

struct TenantLedger {
    ledger: Arc<Ledger>,
    tenant: String,
}

impl FromMessage for TenantLedger {
    type Rpc = NoReply;

    fn from_message(incoming: &Incoming) -> Result<Self, HandlerError> {
        let Tenant(tenant) = Tenant::from_message(incoming)?;
        let ledger = incoming.state::<Ledger>();
        let ledger = ledger.ok_or_else(|| HandlerError::rejected("no Ledger state"))?;
        Ok(TenantLedger { ledger, tenant })
    }

    fn check(resources: &Resources) -> Result<(), String> {
        if resources.has_state::<Ledger>() {
            Ok(())
        } else {
            Err("`TenantLedger` needs a `Ledger` state".into())
        }
    }
}

mod svc {
    use super::*;

    #[tchu::subscribe]
    async fn paid(ev: OrderPaid, ledger: TenantLedger) {
        let row = (ledger.tenant.clone(), ev.order);
        ledger.ledger.rows.lock().unwrap().push(row);
    }
}

#[tokio::test]
async fn a_users_own_extractor_reaches_the_handler_and_can_refuse() {
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let queue = common::unique("it_extractor");
    let ledger = Arc::new(Ledger::default());
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::svc"))
        .state_arc(ledger.clone())
        .start(&client)
        .await
        .unwrap();
    let acme = PublishOptions::new().header("tenant", "acme");
    client
        .publish_with(&OrderPaid { order: 1 }, &acme)
        .await
        .unwrap();
    client.publish(&OrderPaid { order: 2 }).await.unwrap();
    let handled = common::wait_until(Duration::from_secs(10), || {
        !ledger.rows.lock().unwrap().is_empty()
    });
    assert!(handled.await, "the handler ran");
    let (_c, ch) = common::channel().await;
    let dlq = format!("{queue}.dlq");
    let parked = common::drain_at_least(&ch, &dlq, 1, Duration::from_secs(10)).await;
    assert_eq!(
        parked.len(),
        1,
        "only the message without a tenant is parked"
    );
    let kind = common::header(&parked[0], "x-tchu-error-kind");
    assert_eq!(kind.as_deref(), Some("rejected"));
    let reason = common::header(&parked[0], "x-tchu-error").unwrap_or_default();
    assert!(reason.contains("no tenant header"), "{reason}");
    assert_eq!(*ledger.rows.lock().unwrap(), vec![("acme".to_owned(), 1)]);
    service.shutdown().await.unwrap();
    common::delete_service_queues(&queue).await;
}

#[tokio::test]
async fn a_service_whose_extractor_can_never_work_does_not_start() {
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let queue = common::unique("it_extractor_check");
    let started = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::svc"))
        .start(&client)
        .await;
    let Err(error) = started else {
        panic!("no Ledger: the service must not start");
    };
    assert_eq!(error.kind(), tchu::ErrorKind::Configuration);
    assert!(
        error.to_string().contains("needs a `Ledger` state"),
        "{error}"
    );
}
