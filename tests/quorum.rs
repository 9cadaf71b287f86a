//! A service on quorum queues (its queue, dead-letter queue and delay tiers) passes the
//! broadcast and retry behaviour tests.
#![cfg(feature = "service")]
#![allow(
    clippy::too_many_lines,
    reason = "a scenario test reads top to bottom, one step after the other"
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tchu::prelude::*;

#[tchu::event(topic = "quorum.job")]
struct Job {
    seq: u64,
    fail_times: u32,
}

#[derive(Default)]
struct Runs {
    runs: Mutex<Vec<(&'static str, u64, u32)>>,
}

impl Runs {
    fn count(&self, handler: &str, seq: u64) -> usize {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 == handler && r.1 == seq)
            .count()
    }
}

mod svc {
    use super::*;

    #[tchu::subscribe(retry(max_attempts = 3, backoff = "30ms"))]
    async fn worker(job: Job, attempt: Attempt, runs: State<Runs>) -> Result<(), String> {
        runs.runs
            .lock()
            .unwrap()
            .push(("worker", job.seq, attempt.0));
        if attempt.0 <= job.fail_times {
            Err(format!("failure {}", attempt.0))
        } else {
            Ok(())
        }
    }

    #[tchu::subscribe("quorum.#")]
    async fn audit(msg: Message, runs: State<Runs>) {
        let seq = msg.payload()["seq"].as_u64().unwrap_or_default();
        runs.runs.lock().unwrap().push(("audit", seq, 1));
    }
}

fn queue_type(name: &str) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "type"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}\t")).map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test]
async fn broadcast_and_retries_work_on_quorum_queues() {
    let queue = common::unique("quorum_svc");
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let runs = Arc::new(Runs::default());
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::svc"))
        .state_arc(runs.clone())
        .quorum(true)
        .start(&client)
        .await
        .unwrap();
    for q in [
        queue.clone(),
        format!("{queue}.dlq"),
        format!("{queue}.delay.30ms"),
    ] {
        assert_eq!(queue_type(&q), "quorum", "{q}");
    }
    // Broadcast: both handlers, once each.
    client
        .publish(&Job {
            seq: 1,
            fail_times: 0,
        })
        .await
        .unwrap();
    // Retry: fails twice, succeeds on the third attempt; the audit handler runs once.
    client
        .publish(&Job {
            seq: 2,
            fail_times: 2,
        })
        .await
        .unwrap();
    // Always fails: dead-lettered after 3 attempts.
    client
        .publish(&Job {
            seq: 3,
            fail_times: 99,
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(runs.count("worker", 1) == 1
        && runs.count("worker", 2) == 3
        && runs.count("worker", 3) == 3)
    {
        assert!(
            Instant::now() < deadline,
            "runs so far: {:?}",
            runs.runs.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_c, ch) = common::channel().await;
    let parked =
        common::drain_at_least(&ch, &format!("{queue}.dlq"), 1, Duration::from_secs(10)).await;
    assert_eq!(parked.len(), 1);
    assert_eq!(
        common::header(&parked[0], "x-tchu-attempts").as_deref(),
        Some("LongLongInt(3)")
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    for seq in 1..=3 {
        assert_eq!(
            runs.count("audit", seq),
            1,
            "the audit handler never re-runs for a retry"
        );
    }
    service.shutdown().await.unwrap();
    common::delete_service_queues(&queue).await;
}

/// RabbitMQ 4.x gives quorum queues a delivery limit (20 by default) and drops a message that
/// passes it unless the queue dead-letters somewhere. A policy's `delivery-limit` (2) stands in
/// for that default on 3.x: a message returned three times must end in the service's
/// `.dlq`, dead-lettered by the broker at least once, with its reason, never dropped. Then
/// `tchu dlq list` names the broker's reason.
#[tokio::test]
async fn past_the_delivery_limit_a_message_is_dead_lettered_not_dropped() {
    use futures_lite::StreamExt;
    use lapin::options::BasicConsumeOptions;
    use lapin::types::FieldTable;
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let queue = common::unique("it_quorum_limit");
    let service = || {
        tchu::Service::new(&queue)
            .handlers_in(concat!(module_path!(), "::svc"))
            .state(Runs::default())
            .quorum(true)
    };
    // The queue as tchu declares it; a policy adds the limit 4.x would impose.
    let declared = service().start(&client).await.unwrap();
    declared.shutdown().await.unwrap();
    /// Clears the test's policy however the test ends.
    struct Policy(String);
    impl Drop for Policy {
        fn drop(&mut self) {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["clear_policy", &self.0])
                .output();
        }
    }
    let policy = Policy(format!("tchu-test-{queue}"));
    common::rabbitmqctl(&[
        "set_policy",
        "--apply-to",
        "queues",
        &policy.0,
        &format!("^{queue}$"),
        r#"{"delivery-limit": 2}"#,
    ]);
    let (_c, ch) = common::channel().await;
    client
        .publish(&Job {
            seq: 77,
            fail_times: 0,
        })
        .await
        .unwrap();
    // Returned unacknowledged, again and again, as a crashing consumer would.
    for _ in 0..3 {
        let ch = common::channel().await.1;
        let mut c = ch
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), c.next()).await;
        assert!(matches!(got, Ok(Some(Ok(_)))), "delivered again");
        ch.close(200, "crash".into()).await.unwrap();
    }
    let parked =
        common::drain_at_least(&ch, &format!("{queue}.dlq"), 1, Duration::from_secs(10)).await;
    assert_eq!(parked.len(), 1, "dead-lettered, not dropped");
    assert_eq!(
        common::header(&parked[0], "x-first-death-reason").as_deref(),
        Some("delivery_limit")
    );
    // Back in the dead-letter queue for `tchu dlq list`.
    let d = &parked[0].delivery;
    ch.basic_publish(
        "".into(),
        format!("{queue}.dlq").as_str().into(),
        Default::default(),
        &d.data,
        d.properties.clone(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let out = std::process::Command::new(common::tchu_bin())
        .args([
            "--url",
            &common::broker_url(),
            "--json",
            "dlq",
            "list",
            &queue,
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains(r#""error_kind":"broker:delivery_limit""#),
        "{listed}"
    );
    drop(policy);
    common::delete_service_queues(&queue).await;
}
