//! Fault test: two RabbitMQ nodes clustered on this machine (own names and ports, started here).
//! Stopping the node a service is connected to moves it to the other node, and with quorum
//! queues no confirmed event is lost. Its own test binary: it starts and stops broker nodes.
#![cfg(feature = "service")]

mod common;
mod nodes;

use nodes::Node;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tchu::prelude::*;

#[tchu::event(topic = "cluster.tick")]
struct Tick {
    seq: u64,
}

#[derive(Default)]
struct Seen {
    seqs: Mutex<BTreeSet<u64>>,
}

mod svc {
    use super::*;
    #[tchu::subscribe]
    async fn tick(t: Tick, seen: State<Seen>) {
        seen.seqs.lock().unwrap().insert(t.seq);
    }
}

async fn wait_all(seen: &Seen, want: &BTreeSet<u64>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let missing = want.difference(&seen.seqs.lock().unwrap()).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} confirmed events not handled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_other_node_loses_no_confirmed_event() {
    let (a, b) = tokio::task::spawn_blocking(|| {
        let a = Node::start("tchu_cluster_a", 5681, "");
        let b = Node::start("tchu_cluster_b", 5682, "");
        b.join(&a);
        (a, b)
    })
    .await
    .unwrap();
    let urls = format!("{},{}", a.url(), b.url());
    let client = tchu::Client::connect(&urls).await.unwrap();
    assert!(
        format!("{client:?}").contains(":5681"),
        "connected to the first address: {client:?}"
    );
    let seen = Arc::new(Seen::default());
    let service = tchu::Service::new("cluster_svc")
        .handlers_in(concat!(module_path!(), "::svc"))
        .with_state_arc(seen.clone())
        .quorum(true)
        .start(&client)
        .await
        .unwrap();

    let mut confirmed = BTreeSet::new();
    for seq in 0..200 {
        client.publish(&Tick { seq }).await.unwrap();
        confirmed.insert(seq);
    }
    wait_all(&seen, &confirmed, Duration::from_secs(30)).await;

    // Stop the node everything is connected to: the client moves to the other one.
    tokio::task::spawn_blocking({
        let name = a.name.clone();
        move || {
            let out = std::process::Command::new("rabbitmqctl")
                .args(["-n", &name, "stop_app"])
                .output()
                .unwrap();
            assert!(out.status.success());
        }
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !format!("{client:?}").contains(":5682") {
        assert!(
            Instant::now() < deadline,
            "the client did not move to the other node: {client:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Events confirmed while one of two nodes is down would need a majority the cluster lacks:
    // publish them once the node is back, through the connection on the other node.
    tokio::task::spawn_blocking({
        let name = a.name.clone();
        move || {
            let out = std::process::Command::new("rabbitmqctl")
                .args(["-n", &name, "start_app"])
                .output()
                .unwrap();
            assert!(out.status.success());
        }
    })
    .await
    .unwrap();
    for seq in 200..400 {
        client.publish(&Tick { seq }).await.unwrap();
        confirmed.insert(seq);
    }
    wait_all(&seen, &confirmed, Duration::from_secs(60)).await;
    assert!(
        format!("{client:?}").contains(":5682"),
        "still on the node it failed over to"
    );
    service.shutdown().await.unwrap();
    client.close().await;
    drop(b);
    drop(a);
}
