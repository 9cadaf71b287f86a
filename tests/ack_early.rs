//! `ack = "early"` (Celery's default) acknowledges a delivery before its handler runs, so the
//! broker's prefetch no longer bounds the work in progress: tchu does, to the same number.
#![cfg(feature = "service")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[tchu::event(topic = "it.ack_early.job")]
struct Job {
    n: u64,
}

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MOST: AtomicUsize = AtomicUsize::new(0);
static DONE: AtomicUsize = AtomicUsize::new(0);

mod svc {
    use super::*;

    #[tchu::subscribe(ack = "early")]
    async fn job(j: Job) {
        let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        MOST.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100 + j.n % 3)).await;
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        DONE.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn early_acknowledged_work_in_progress_stays_within_the_prefetch() {
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let queue = common::unique("it_ack_early");
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::svc"))
        .prefetch(2)
        .start(&client)
        .await
        .unwrap();
    for n in 0..12 {
        client.publish(&Job { n }).await.unwrap();
    }
    assert!(
        common::wait_until(Duration::from_secs(20), || DONE.load(Ordering::SeqCst)
            == 12)
        .await
    );
    let most = MOST.load(Ordering::SeqCst);
    assert!(most <= 2, "{most} handlers ran at once with prefetch 2");
    assert_eq!(most, 2, "and the prefetch is used");
    service.shutdown().await.unwrap();
    common::delete_service_queues(&queue).await;
}

#[tchu::event(topic = "it.budget.job")]
struct BigJob {
    data: String,
}

static BIG_RUNNING: AtomicUsize = AtomicUsize::new(0);
static BIG_MOST: AtomicUsize = AtomicUsize::new(0);
static BIG_DONE: AtomicUsize = AtomicUsize::new(0);

mod big {
    use super::*;

    #[tchu::subscribe]
    async fn big_job(j: BigJob) {
        let now = BIG_RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        BIG_MOST.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150 + (j.data.len() % 2) as u64)).await;
        BIG_RUNNING.fetch_sub(1, Ordering::SeqCst);
        BIG_DONE.fetch_add(1, Ordering::SeqCst);
    }
}

/// Large bodies: the prefetch (10) would let them all in at once; the byte budget (1 MiB)
/// takes a second 600 KB delivery only while the first is under it, and no third.
#[tokio::test]
async fn large_bodies_in_progress_stay_within_the_byte_budget() {
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let queue = common::unique("it_budget");
    let service = || {
        tchu::Service::new(&queue)
            .handlers_in(concat!(module_path!(), "::big"))
            .prefetch(10)
            .max_in_flight_bytes(1024 * 1024)
    };
    // Declared, then stopped: the backlog waits in the queue before the service consumes.
    let declared = service().start(&client).await.unwrap();
    declared.shutdown().await.unwrap();
    for _ in 0..6 {
        let data = "x".repeat(600 * 1024);
        client.publish(&BigJob { data }).await.unwrap();
    }
    let service = service().start(&client).await.unwrap();
    let all_done = || BIG_DONE.load(Ordering::SeqCst) == 6;
    assert!(common::wait_until(Duration::from_secs(30), all_done).await);
    let most = BIG_MOST.load(Ordering::SeqCst);
    assert!(most <= 2, "{most} large bodies in progress at once");
    service.shutdown().await.unwrap();
    common::delete_service_queues(&queue).await;
}
