//! `Context<T>` and `AuthContext::is_authorized` at run time: request context published in the
//! payload (`user`, `company`, `user_company`, as tchu-tchu's `TchuEvent` carries it) reaches
//! handlers on a real RabbitMQ. (The Python publisher's side is in `interop.rs`.)
#![cfg(feature = "service")]

mod common;

use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tchu::prelude::*;

/// An application's own context shape.
#[derive(Debug, Clone, serde::Deserialize)]
struct Tenant {
    company: TenantCompany,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct TenantCompany {
    id: u64,
}

/// What the handlers saw, per case: (case, authorized, user, tenant id or the rejection).
#[derive(Default)]
struct Seen {
    auth: Mutex<Vec<(String, bool, Option<Value>)>>,
    tenants: Mutex<Vec<(String, Option<u64>)>>,
}

mod svc {
    use super::*;

    #[tchu::subscribe("it.context.order")]
    async fn auth(m: Message, ctx: Context, seen: State<Seen>) {
        let case = m.payload()["case"].as_str().unwrap_or_default().to_owned();
        seen.auth
            .lock()
            .unwrap()
            .push((case, ctx.is_authorized(), ctx.user.clone()));
    }

    #[tchu::subscribe("it.context.order")]
    async fn tenant(m: Message, ctx: Context<Tenant>, seen: State<Seen>) {
        let case = m.payload()["case"].as_str().unwrap_or_default().to_owned();
        seen.tenants
            .lock()
            .unwrap()
            .push((case, Some(ctx.company.id)));
    }
}

#[tokio::test]
async fn request_context_in_the_payload_reaches_handlers() {
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let queue = common::unique("it_context");
    let seen = Arc::new(Seen::default());
    let svc = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::svc"))
        .state_arc(seen.clone())
        .start(&client)
        .await
        .unwrap();
    let user = json!({"id": 7, "email": "a@b.c"});
    let company = json!({"id": 42, "name": "Acme"});
    let cases = [
        (
            "all",
            json!({"user": user, "company": company, "user_company": {"id": 3}}),
            true,
        ),
        (
            "no_membership",
            json!({"user": user, "company": company}),
            false,
        ),
        (
            "null_user",
            json!({"user": null, "company": company, "user_company": 3}),
            false,
        ),
        (
            "ints",
            json!({"user": 7, "company": {"id": 42}, "user_company": 3}),
            true,
        ),
        ("none", json!({}), false),
    ];
    for (case, ctx, _) in &cases {
        let mut payload = ctx.clone();
        payload["case"] = json!(case);
        client
            .publish_raw("it.context.order", &payload)
            .await
            .unwrap();
    }
    assert!(
        common::wait_until(Duration::from_secs(10), || seen.auth.lock().unwrap().len()
            == cases.len())
        .await,
        "every case handled"
    );
    let auth = seen.auth.lock().unwrap().clone();
    for (case, ctx, authorized) in &cases {
        let got = auth.iter().find(|s| s.0 == *case).unwrap();
        assert_eq!(got.1, *authorized, "{case}: is_authorized");
        assert_eq!(
            got.2,
            ctx.get("user").filter(|u| !u.is_null()).cloned(),
            "{case}: user"
        );
    }
    // A user-defined context: present where the payload has a company with an id; where it has
    // none, the handler cannot run and the message is parked as `rejected`.
    let tenants = seen.tenants.lock().unwrap().clone();
    for case in ["all", "no_membership", "null_user", "ints"] {
        assert_eq!(
            tenants.iter().find(|s| s.0 == case).map(|s| s.1),
            Some(Some(42)),
            "{case}: {tenants:?}"
        );
    }
    let (_c, ch) = common::channel().await;
    let parked =
        common::drain_at_least(&ch, &format!("{queue}.dlq"), 1, Duration::from_secs(10)).await;
    assert_eq!(parked.len(), 1, "only `none` lacks the tenant");
    assert_eq!(
        common::header(&parked[0], "x-tchu-error-kind").as_deref(),
        Some("rejected")
    );
    assert!(String::from_utf8_lossy(&parked[0].delivery.data).contains(r#"\"case\": \"none\""#));
    svc.shutdown().await.unwrap();
    common::delete_service_queues(&queue).await;
}
