//! Fault test: SIGTERM during a burst. The worker stops taking deliveries, finishes the one in
//! flight, acknowledges it and exits 0 within the grace period; what it had not started goes to
//! the next worker; nothing handled is handled again.
#![cfg(feature = "service")]

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

fn done_ids(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("done "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

#[tokio::test]
async fn sigterm_during_a_burst_drains_and_exits_zero() {
    const N: u64 = 40;
    let queue = common::unique("fault_sigterm");
    let (mut first, rx1) = common::spawn_worker(&queue, 100, None);
    assert_eq!(
        rx1.recv_timeout(Duration::from_secs(20)).unwrap(),
        "<consuming>"
    );
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    for id in 0..N {
        client
            .publish_raw("demo.work", &serde_json::json!({ "id": 1_000_000 + id }))
            .await
            .unwrap();
    }
    let mut lines1 = Vec::new();
    while done_ids(&lines1).len() < 5 {
        lines1.push(
            rx1.recv_timeout(Duration::from_secs(20))
                .expect("the worker stalled"),
        );
    }
    let signalled = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &first.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = loop {
        if let Some(s) = first.try_wait().unwrap() {
            break s;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(30),
            "no exit within the grace period"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}");
    lines1.extend(rx1.try_iter());
    let started1: Vec<&String> = lines1.iter().filter(|l| l.starts_with("started")).collect();
    let done1 = done_ids(&lines1);
    assert_eq!(
        started1.len(),
        done1.len(),
        "every handler that started finished before the exit: {lines1:?}"
    );

    // The rest goes to the next worker; nothing the first one handled comes back.
    let (mut second, rx2) = common::spawn_worker(&queue, 0, None);
    let mut lines2 = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while done1.len() + done_ids(&lines2).len() < N as usize && Instant::now() < deadline {
        if let Ok(l) = rx2.recv_timeout(Duration::from_millis(200)) {
            lines2.push(l);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    lines2.extend(rx2.try_iter());
    let _ = second.kill();
    let _ = second.wait();
    let mut counts: HashMap<u64, u32> = HashMap::new();
    for id in done1.iter().chain(done_ids(&lines2).iter()) {
        *counts.entry(*id).or_default() += 1;
    }
    assert_eq!(counts.len(), N as usize, "every event handled: {counts:?}");
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "handled twice: {twice:?}");
    let (_c, ch) = common::channel().await;
    common::delete_queues(&ch, &[&queue, &format!("{queue}.dlq")]).await;
}
