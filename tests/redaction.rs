//! No error, log line, `Debug` output or CLI message ever holds a broker password, whatever the
//! URL's shape; a password with `,` works. Through `Client::connect`, a `run!()` service and
//! the `tchu` tool, against the real RabbitMQ.
#![cfg(feature = "service")]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Every password below holds it, raw or percent-encoded (`s3cret%2C...` holds it too).
const SECRET: &str = "s3cret";

/// Unusual and malformed broker URLs; none of them can log in.
const HOSTILE: &[&str] = &[
    "bob:s3cretpw@127.0.0.1:5672",
    "amqp://bob:s3cretpw@127.0.0.1:5672/%2f",
    "amqp://bob:s3cret,pw@127.0.0.1:5672/%2f",
    "amqp://bob:s3cretpw@x@127.0.0.1:5672/%2f",
    "amqp://bob:s3cret%2Cpw@127.0.0.1:5672/%2f",
    "amqp://bob:s3cret%pw@127.0.0.1:5672/%2f",
    "amqp://bob:s3cret:pw@127.0.0.1:5672/%2f",
    "amqp://bob:s3cretpw@[::1]:5672/%2f",
    "amqp://bob:s3cretpw@127.0.0.1:1/%2f",
    "amqp://bob:s3cretpw@127.0.0.1:notaport/%2f",
    "amqp://bob:s3cretpw@127.0.0.1:5672/%2f?heartbeat=soon",
    "http://bob:s3cretpw@127.0.0.1:5672/",
    "amqp://bob:s3cretpw@127.0.0.1:1/%2f,amqp://bob:s3cret,pw@127.0.0.1:5672/%2f",
];

/// A user whose password has a comma, created for the test.
const COMMA_USER: &str = "tchu_redaction_bob";
const COMMA_PASSWORD: &str = "s3cret,pw";

fn comma_url() -> String {
    format!("amqp://{COMMA_USER}:{COMMA_PASSWORD}@127.0.0.1:5672/%2f")
}

fn ensure_comma_user() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", COMMA_USER])
            .output();
        common::rabbitmqctl(&["add_user", COMMA_USER, COMMA_PASSWORD]);
        common::rabbitmqctl(&["set_permissions", "-p", "/", COMMA_USER, ".*", ".*", ".*"]);
    });
}

/// Everything the test process logs, through one global subscriber.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
            .with_ansi(false)
            .with_writer(move || SharedWriter(writer.clone()))
            .init();
        buf
    })
    .clone()
}

struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for SharedWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_clean(what: &str, url: &str, text: &str) {
    assert!(
        !text.contains(SECRET),
        "{what} for {url} shows the password:\n{text}"
    );
}

#[tokio::test]
async fn client_errors_logs_and_debug_never_hold_the_password() {
    let logs = logs();
    for url in HOSTILE {
        let res = tokio::time::timeout(Duration::from_secs(20), tchu::Client::connect(url))
            .await
            .unwrap_or_else(|_| panic!("connecting to {url} hung"));
        let err = res.expect_err(url);
        assert_clean("the error", url, &err.to_string());
        assert_clean("the error's Debug", url, &format!("{err:?}"));
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            assert_clean("a source error", url, &s.to_string());
            source = s.source();
        }
    }
    // A password with a comma works, and nothing shows it.
    ensure_comma_user();
    let client = tchu::Client::connect(&comma_url()).await.unwrap();
    assert_clean("the client's Debug", &comma_url(), &format!("{client:?}"));
    client.close().await;
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(text.contains("connected to the broker"), "{text}");
    assert_clean("the logs", "every URL", &text);
}

/// Runs a program for at most `limit`, then kills it; returns its stdout and stderr.
fn output_within(mut cmd: Command, limit: Duration) -> String {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn a_service_never_prints_the_password() {
    ensure_comma_user();
    let queue = common::unique("it_redaction");
    let mut urls: Vec<String> = HOSTILE.iter().map(|u| (*u).to_owned()).collect();
    urls.push(comma_url());
    for url in &urls {
        let mut cmd = Command::new(common::example("subscriber"));
        cmd.env(tchu::BROKER_URL_ENV, url)
            .env("TCHU_QUEUE", &queue)
            .env("RUST_LOG", "debug");
        let out = output_within(cmd, Duration::from_secs(4));
        assert!(
            !out.trim().is_empty(),
            "the service printed nothing for {url}"
        );
        assert_clean("the service's output", url, &out);
        if *url == comma_url() {
            assert!(out.contains("connected to the broker"), "{out}");
        }
    }
    common::delete_service_queues(&queue).await;
}

#[test]
fn the_tchu_tool_never_prints_the_password() {
    ensure_comma_user();
    let mut urls: Vec<String> = HOSTILE.iter().map(|u| (*u).to_owned()).collect();
    urls.push(comma_url());
    for url in &urls {
        for args in [
            vec!["--url", url, "publish", "it.redaction.nobody", "{}"],
            vec!["--url", url, "dlq", "list", "it_redaction_none"],
            vec![
                "--url",
                url,
                "--json",
                "publish",
                "it.redaction.nobody",
                "{}",
            ],
        ] {
            let mut cmd = Command::new(common::tchu_bin());
            cmd.args(&args).env_remove("RUST_LOG");
            let out = output_within(cmd, Duration::from_secs(30));
            assert_clean(&format!("`tchu {}`", args[2..].join(" ")), url, &out);
        }
    }
    // With the comma password the tool connects: the topic is unroutable, not unreachable.
    let out = Command::new(common::tchu_bin())
        .args([
            "--url",
            &comma_url(),
            "publish",
            "it.redaction.nobody",
            "{}",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
