//! `tchu dlq replay` and the inbox: a replayed message whose effect already happened is
//! skipped; `--force` runs it again (signed, so the service honours it); a stranger setting the
//! force header itself is parked as `untrusted`, never run.
#![cfg(all(feature = "service", feature = "postgres", feature = "cli"))]

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
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tchu"));
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

#[tokio::test]
async fn replay_skips_what_happened_unless_forced_and_strangers_cannot_force() {
    let (_, pool) = common::scoped_database("replay").await;
    sqlx::query("CREATE TABLE effects (order_id text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let queue = common::unique("inbox_replay");
    let dlq = format!("{queue}.dlq");
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::svc"))
        .inbox(Inbox::postgres(pool.clone()))
        .start(&client)
        .await
        .unwrap();
    let (_conn, ch) = common::channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    let (_q, mut caught) = common::temp_queue(&ch, Some("inbox.replay.charge")).await;
    let order_id = common::unique("ord");
    client
        .publish(&Charge {
            order_id: order_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(wait_effects(&pool, &order_id, 1).await, 1);
    let original = tokio::time::timeout(Duration::from_secs(10), caught.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (body, props) = (original.data.clone(), original.properties.clone());

    // Parked by hand, replayed without --force: skipped. Then with --force: run again.
    put(&ch, &dlq, &body, props.clone()).await;
    replay(&queue, false);
    put(&ch, &dlq, &body, props.clone()).await;
    replay(&queue, true);
    assert_eq!(
        wait_effects(&pool, &order_id, 2).await,
        2,
        "the forced replay ran"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        effects(&pool, &order_id).await,
        2,
        "the plain replay was skipped"
    );

    // A stranger's copy with the force header and no signature: parked, not run.
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        tchu::headers::INBOX_FORCE_HEADER.into(),
        AMQPValue::LongString("true".into()),
    );
    put(&ch, &queue, &body, props.clone().with_headers(headers)).await;
    let parked = common::drain_at_least(&ch, &dlq, 1, Duration::from_secs(10)).await;
    let kinds: Vec<Option<String>> = parked
        .iter()
        .map(|m| common::header(m, tchu::headers::ERROR_KIND_HEADER))
        .collect();
    assert_eq!(kinds, vec![Some("untrusted".to_owned())]);
    assert_eq!(effects(&pool, &order_id).await, 2);
    service.shutdown().await.unwrap();
    common::delete_service_queues(&queue).await;
}
