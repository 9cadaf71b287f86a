//! The examples run to completion: the quickstart on the in-memory broker and on RabbitMQ, and
//! the two-process subscriber/publisher pair on RabbitMQ.
#![cfg(feature = "service")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run_quickstart(broker: Option<&str>) -> String {
    let mut cmd = Command::new(common::example("quickstart"));
    cmd.env_remove(tchu::BROKER_URL_ENV).env("RUST_LOG", "warn");
    if let Some(url) = broker {
        cmd.env(tchu::BROKER_URL_ENV, url);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "quickstart failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn quickstart_runs_in_memory() {
    let out = run_quickstart(None);
    assert!(out.contains("transport: in-memory"), "{out}");
    for line in [
        "[billing] charging order 42 (1999 cents)",
        "[emails]  sending a receipt for order 42",
        "[emails]  user.created",
        "[emails]  user.deleted",
        "handled 4 deliveries (4 from this run)",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

#[test]
fn quickstart_runs_on_rabbitmq() {
    let out = run_quickstart(Some(&common::broker_url()));
    assert!(out.contains("transport: RabbitMQ"), "{out}");
    assert!(out.contains("[billing] charging order 42"), "{out}");
    // Durable queues may also hold events other tests published to these topics earlier.
    let handled: u32 = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("handled ")
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no count in {out}"));
    assert!(handled >= 4, "{out}");
    for line in [
        "[emails]  sending a receipt for order 42",
        "[emails]  user.created",
        "[emails]  user.deleted",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

#[tokio::test]
async fn subscriber_and_publisher_processes_exchange_events() {
    let queue = common::unique("demo_subscriber_test");
    let mut sub = Command::new(common::example("subscriber"))
        .env(tchu::BROKER_URL_ENV, common::broker_url())
        .env("TCHU_QUEUE", &queue)
        .env("TCHU_EXIT_AFTER", "3")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the subscriber's "consuming" log line: from then on its bindings exist.
    let stderr = sub.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("consuming") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("subscriber did not start consuming");

    let out = Command::new(common::example("publisher"))
        .arg("3")
        .env(tchu::BROKER_URL_ENV, common::broker_url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "publisher failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("published greeting")
            .count(),
        3
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = sub.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = sub.kill();
            panic!("subscriber did not exit after 3 greetings");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut sub.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "{stdout}");
    for n in 1..=3 {
        assert!(
            stdout.contains(&format!("received greeting #{n}: hello #{n} from Rust")),
            "{stdout}"
        );
    }
    let (_c, ch) = common::channel().await;
    common::delete_queues(&ch, &[&queue, &format!("{queue}.dlq")]).await;
}

#[test]
fn payments_example_handles_every_outcome() {
    for broker in [None, Some(common::broker_url())] {
        let mut cmd = Command::new(common::example("payments"));
        cmd.env_remove(tchu::BROKER_URL_ENV)
            .env("RUST_BACKTRACE", "0");
        if let Some(url) = &broker {
            cmd.env(tchu::BROKER_URL_ENV, url);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in [
            "user 1: paid, receipt rcpt-1-2500 for 2500 cents",
            "user 2: declined, 15000 cents short",
            "user 13: card blocked (reported stolen)",
            "user 4: responder payments::payments_service::process failed: handler panicked: the card reader caught fire",
            "user 5: no answer within 500ms",
            "refund: no responder for `rpc.payments.refund`",
        ] {
            assert!(
                stdout.contains(line),
                "{broker:?}: missing {line:?} in\n{stdout}"
            );
        }
    }
}
