//! `tchu dlq replay` and the inbox: a replayed message whose effect already happened is
//! skipped; `--force` runs it again (signed, so the service honours it); a stranger setting the
//! force header itself is parked as `untrusted`, never run.
#![cfg(all(feature = "service", feature = "postgres"))]

mod common;

use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::AMQPValue;
use std::process::Command;
use std::time::{Duration, Instant};
use tchu::sqlx::{self, PgPool};
use tchu::{Inbox, Tx};

#[tchu::event(topic = "inbox.replay.charge")]
struct Charge {
    order_id: String,
}

mod svc {
    use super::*;

    #[tchu::subscribe(dedup(key = "order_id"))]
    async fn charge(c: Charge, tx: Tx) -> tchu::Result<()> {
        sqlx::query("INSERT INTO effects (order_id) VALUES ($1)")
            .bind(&c.order_id)
            .execute(&mut *tx.lock().await?)
            .await?;
        Ok(())
    }
}

async fn effects(pool: &PgPool, order_id: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM effects WHERE order_id = $1")
        .bind(order_id)
        .fetch_one(pool)
        .await
        .unwrap();
    n
}

async fn wait_effects(pool: &PgPool, order_id: &str, want: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = effects(pool, order_id).await;
        if n == want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes `body`/`props` by hand to a queue on the default exchange, confirmed.
async fn put(ch: &lapin::Channel, queue: &str, body: &[u8], props: BasicProperties) {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

fn replay(queue: &str, force: bool) {
    let mut cmd = Command::new(common::tchu_bin());
    cmd.args(["--url", &common::broker_url(), "dlq", "replay", queue]);
    if force {
        cmd.arg("--force");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn replay_fails(queue: &str) -> String {
    let out = Command::new(common::tchu_bin())
        .args([
            "--url",
            &common::broker_url(),
            "dlq",
            "replay",
            queue,
            "--force",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the replay should refuse");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn start(client: &tchu::Client, queue: &str, pool: &PgPool) -> tchu::ServiceHandle {
    tchu::Service::new(queue)
        .handlers_in(concat!(module_path!(), "::svc"))
        .inbox(Inbox::postgres(pool.clone()))
        .start(client)
        .await
        .unwrap()
}

/// Publishes a charge and returns its exact bytes and properties, caught on the side.
async fn charge_once(
    client: &tchu::Client,
    ch: &lapin::Channel,
    order_id: &str,
) -> (Vec<u8>, BasicProperties) {
    let (_q, mut caught) = common::temp_queue(ch, Some("inbox.replay.charge")).await;
    let charge = Charge {
        order_id: order_id.to_owned(),
    };
    client.publish(&charge).await.unwrap();
    let original = tokio::time::timeout(Duration::from_secs(10), caught.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    (original.data.clone(), original.properties.clone())
}

#[tokio::test]
async fn replay_skips_what_happened_unless_forced_once_and_strangers_cannot_force() {
    let (_, pool) = common::scoped_database("replay").await;
    sqlx::query("CREATE TABLE effects (order_id text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let queue = common::unique("inbox_replay");
    let dlq = format!("{queue}.dlq");
    let service = start(&client, &queue, &pool).await;
    let (_conn, ch) = common::channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    let order_id = common::unique("ord");
    let (body, props) = charge_once(&client, &ch, &order_id).await;
    assert_eq!(wait_effects(&pool, &order_id, 1).await, 1);

    // Parked by hand and replayed: its effect happened, so it is skipped.
    put(&ch, &dlq, &body, props.clone()).await;
    replay(&queue, false);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        effects(&pool, &order_id).await,
        1,
        "the plain replay was skipped"
    );

    // Forced: it runs once, however often the forced copy is delivered.
    service.shutdown().await.unwrap();
    put(&ch, &dlq, &body, props.clone()).await;
    replay(&queue, true);
    let forced = common::drain_at_least(&ch, &queue, 1, Duration::from_secs(10)).await;
    assert_eq!(forced.len(), 1);
    let f = &forced[0];
    assert!(common::header(f, tchu::headers::INBOX_FORCE_HEADER).is_some());
    for _ in 0..2 {
        put(&ch, &queue, &f.delivery.data, f.delivery.properties.clone()).await;
    }
    let service = start(&client, &queue, &pool).await;
    assert_eq!(
        wait_effects(&pool, &order_id, 2).await,
        2,
        "the forced replay ran"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        effects(&pool, &order_id).await,
        2,
        "its second delivery was a duplicate"
    );

    // A stranger's copy with the force header and no signature: parked, not run; the parked
    // copy does not keep the header, so replaying it plainly forces nothing.
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        tchu::headers::INBOX_FORCE_HEADER.into(),
        AMQPValue::LongString("mine".into()),
    );
    put(
        &ch,
        &queue,
        &body,
        props.clone().with_headers(headers.clone()),
    )
    .await;
    let parked = common::drain_at_least(&ch, &dlq, 1, Duration::from_secs(10)).await;
    let why: Vec<_> = (parked.iter())
        .map(|p| common::header(p, tchu::headers::ERROR_HEADER))
        .collect();
    assert_eq!(parked.len(), 1, "parked: {why:?}");
    let p = &parked[0];
    let kind = common::header(p, tchu::headers::ERROR_KIND_HEADER);
    assert_eq!(kind.as_deref(), Some("untrusted"));
    assert_eq!(common::header(p, tchu::headers::INBOX_FORCE_HEADER), None);
    put(&ch, &dlq, &p.delivery.data, p.delivery.properties.clone()).await;
    replay(&queue, false);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(effects(&pool, &order_id).await, 2, "nothing forced it");

    // `--force` refuses to sign a stranger's control headers.
    headers.insert(
        tchu::headers::HANDLER_HEADER.into(),
        AMQPValue::LongString("svc::charge".into()),
    );
    put(&ch, &dlq, &body, props.clone().with_headers(headers)).await;
    let stderr = replay_fails(&queue);
    assert!(stderr.contains("not forced"), "{stderr}");
    assert_eq!(effects(&pool, &order_id).await, 2);
    service.shutdown().await.unwrap();
    common::delete_service_queues(&queue).await;
}
