//! Fault test: three RabbitMQ nodes clustered on this machine (own names and ports, started
//! here). Events wait in a service's queue while the node the service is connected to stops:
//! - a quorum queue (members on all three nodes) keeps serving through the loss of one node:
//!   every queued event is handled while that node is still down, and new events are
//!   confirmed and handled too;
//! - a classic queue lives on one node: while that node is down its events are out of reach
//!   (the service keeps trying), and once it is back every one of them is handled.
//!
//! In both cases the client moves to another node, and no confirmed event is lost. Its own
//! test binary: it starts and stops broker nodes.
#![cfg(feature = "service")]

mod common;
mod nodes;

use nodes::Node;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tchu::prelude::*;
use tokio::sync::watch;

#[tchu::event(topic = "cluster.tick")]
struct Tick {
    seq: u64,
}

/// What the handler saw; it holds every event until the gate opens.
struct Seen {
    seqs: Mutex<BTreeSet<u64>>,
    gate: watch::Receiver<bool>,
}

mod svc {
    use super::*;

    #[tchu::subscribe]
    async fn tick(t: Tick, seen: State<Seen>) {
        let mut gate = seen.gate.clone();
        let _ = gate.wait_for(|open| *open).await;
        seen.seqs.lock().unwrap().insert(t.seq);
    }
}

async fn wait_all(seen: &Seen, want: &BTreeSet<u64>, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let missing = want.difference(&seen.seqs.lock().unwrap()).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {missing} confirmed events not handled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_connected_to(client: &tchu::Client, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !format!("{client:?}").contains(&format!(":{port}")) {
        assert!(
            Instant::now() < deadline,
            "the client did not move to the node on {port}: {client:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `rabbitmqctl` on one node without stalling the runtime's other tasks.
fn on_node(node: &Node, args: &[&str]) {
    tokio::task::block_in_place(|| node.ctl_ok(args));
}

/// A service on `queue` whose handler holds events until the gate opens; returns it with its
/// records and the gate.
async fn gated_service(
    client: &tchu::Client,
    queue: &str,
    quorum: bool,
) -> (tchu::ServiceHandle, Arc<Seen>, watch::Sender<bool>) {
    let (open, gate) = watch::channel(false);
    let seen = Arc::new(Seen {
        seqs: Mutex::new(BTreeSet::new()),
        gate,
    });
    let service = tchu::Service::new(queue)
        .handlers_in(concat!(module_path!(), "::svc"))
        .state_arc(seen.clone())
        .quorum(quorum)
        .prefetch(16)
        .start(client)
        .await
        .unwrap();
    (service, seen, open)
}

async fn publish_range(client: &tchu::Client, seqs: std::ops::Range<u64>) -> BTreeSet<u64> {
    let mut confirmed = BTreeSet::new();
    for seq in seqs {
        client.publish(&Tick { seq }).await.unwrap();
        confirmed.insert(seq);
    }
    confirmed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_events_survive_the_loss_of_their_node() {
    let (a, b, c) = tokio::task::spawn_blocking(|| {
        let a = Node::start("tchu_cluster_a", 5681, "");
        let b = Node::start("tchu_cluster_b", 5682, "");
        let c = Node::start("tchu_cluster_c", 5683, "");
        b.join(&a);
        c.join(&a);
        (a, b, c)
    })
    .await
    .unwrap();
    let urls = format!("{},{},{}", a.url(), b.url(), c.url());
    let client = tchu::Client::connect(&urls).await.unwrap();
    wait_connected_to(&client, a.port).await;

    // Quorum: 200 events wait in the queue (16 of them held by the handler) when node A stops.
    let (quorum, seen, open) = gated_service(&client, "cluster_quorum", true).await;
    let mut confirmed = publish_range(&client, 0..200).await;
    on_node(&a, &["stop_app"]);
    wait_connected_to(&client, b.port).await;
    open.send_replace(true);
    // B and C are a majority: the queue serves on, A still down.
    wait_all(&seen, &confirmed, Duration::from_secs(60), "quorum, A down").await;
    confirmed.extend(publish_range(&client, 200..300).await);
    wait_all(
        &seen,
        &confirmed,
        Duration::from_secs(60),
        "quorum, published while A down",
    )
    .await;
    quorum.shutdown().await.unwrap();
    on_node(&a, &["start_app"]);

    // Classic: the queue lives on B, where the client now is; 200 events wait there when B stops.
    let (classic, seen, open) = gated_service(&client, "cluster_classic", false).await;
    let confirmed = publish_range(&client, 0..200).await;
    on_node(&b, &["stop_app"]);
    wait_connected_to(&client, c.port).await;
    open.send_replace(true);
    // Out of reach while B is down: at most the 16 the handler held before B stopped finish.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let handled_while_down = seen.seqs.lock().unwrap().len();
    assert!(
        handled_while_down <= 16,
        "{handled_while_down} events handled from a queue whose node is down"
    );
    on_node(&b, &["start_app"]);
    wait_all(
        &seen,
        &confirmed,
        Duration::from_secs(90),
        "classic, B back",
    )
    .await;
    classic.shutdown().await.unwrap();
    client.close().await;
    drop(c);
    drop(b);
    drop(a);
}
