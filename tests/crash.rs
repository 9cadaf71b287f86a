//! A worker killed with SIGKILL in the middle of a handler loses no message: acknowledgement
//! happens after handling, so the broker hands the message to the next worker.
#![cfg(feature = "service")]

mod common;

use std::sync::mpsc;
use std::time::Duration;

fn wait_for(rx: &mpsc::Receiver<String>, what: &str, timeout: Duration) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(what) => return line,
            Ok(_) => {}
            Err(_) => panic!("no line containing {what:?} within {timeout:?}"),
        }
    }
}

#[tokio::test]
async fn a_worker_killed_mid_handler_loses_no_message() {
    let queue = common::unique("it_crash");
    let id: u64 = rand_id();
    let (mut first, rx1) = common::spawn_worker(&queue, 60_000, None);
    wait_for(&rx1, "<consuming>", Duration::from_secs(20));

    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    client
        .publish_raw("demo.work", &serde_json::json!({ "id": id }))
        .await
        .unwrap();
    wait_for(&rx1, &format!("started {id} "), Duration::from_secs(20));
    first.kill().unwrap(); // SIGKILL on Unix: no shutdown, no acknowledgement
    first.wait().unwrap();

    let (mut second, rx2) = common::spawn_worker(&queue, 0, Some(1));
    let line = wait_for(&rx2, &format!("started {id} "), Duration::from_secs(20));
    assert!(line.contains("redelivered: true"), "{line}");
    wait_for(&rx2, &format!("done {id}"), Duration::from_secs(20));
    let status = second.wait().unwrap();
    assert!(status.success());

    let (_c, ch) = common::channel().await;
    common::delete_queues(&ch, &[&queue, &format!("{queue}.dlq")]).await;
}

fn rand_id() -> u64 {
    u64::from_str_radix(&uuid::Uuid::new_v4().simple().to_string()[..12], 16).unwrap()
}
