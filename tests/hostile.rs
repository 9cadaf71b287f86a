//! Every publisher is a stranger: messages published with a generic AMQP client (lapin, with
//! whatever headers a stranger likes) to a running service. For each case: the service stays
//! up and connected, the next ordinary event is handled, and the offending message ends in
//! `<queue>.dlq` exactly once with an `x-tchu-error-kind` naming the reason.
#![cfg(feature = "service")]

mod common;
mod python;

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tchu::prelude::*;

#[tchu::event(topic = "hostile.order")]
struct Order {
    n: u64,
}

/// What the handlers saw: (handler, n or -1 for a raw message).
#[derive(Default)]
struct Seen(Mutex<Vec<(&'static str, i64)>>);

impl Seen {
    fn push(&self, h: &'static str, n: i64) {
        self.0.lock().unwrap().push((h, n));
    }
    fn count(&self, h: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|s| s.0 == h).count()
    }
    fn has(&self, h: &str, n: i64) -> bool {
        self.0.lock().unwrap().iter().any(|s| s.0 == h && s.1 == n)
    }
}

mod svc {
    use super::*;

    #[tchu::subscribe(name = "hostile::order")]
    async fn order(o: Order, seen: State<Seen>) {
        seen.push("order", o.n as i64);
    }

    /// An audit log: runs for every message on the topic, whatever its shape.
    #[tchu::subscribe("hostile.#", name = "hostile::audit")]
    async fn audit(_m: Message, seen: State<Seen>) {
        seen.push("audit", -1);
    }

    /// Never bound to what the tests publish: a stranger would like to run it.
    #[tchu::subscribe("hostile.admin.reset", name = "hostile::admin")]
    async fn admin(_m: Message, seen: State<Seen>) {
        seen.push("admin", -1);
    }
}

struct Running {
    queue: String,
    client: tchu::Client,
    service: tchu::ServiceHandle,
    seen: Arc<Seen>,
    states: Arc<Mutex<Vec<tchu::ServiceState>>>,
    next: AtomicU64,
}

impl Running {
    async fn start(prefix: &str, prefetch: u16) -> Self {
        let queue = common::unique(prefix);
        let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
        let seen = Arc::new(Seen::default());
        let service = tchu::Service::new(&queue)
            .handlers_in(concat!(module_path!(), "::svc"))
            .state_arc(seen.clone())
            .prefetch(prefetch)
            .start(&client)
            .await
            .unwrap();
        let states = common::record_states(&service);
        Self {
            queue,
            client,
            service,
            seen,
            states,
            next: AtomicU64::new(1_000_000),
        }
    }

    /// An ordinary event published after the hostile one is handled, and the service never
    /// lost its connection or consumer.
    async fn still_serves(&self) {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        self.client.publish(&Order { n }).await.unwrap();
        assert!(
            common::wait_until(Duration::from_secs(10), || self.seen.has("order", n as i64)).await,
            "the next event was not handled"
        );
        let states = self.states.lock().unwrap().clone();
        assert_eq!(
            states,
            [tchu::ServiceState::Consuming],
            "the service must stay connected"
        );
    }

    /// The dead letters, once they stopped coming: waits for the first, then long enough to
    /// see a second one (a copy loop makes thousands a second).
    async fn parked(&self) -> Vec<lapin::message::BasicGetMessage> {
        let (_c, ch) = common::channel().await;
        let dlq = format!("{}.dlq", self.queue);
        let mut got = common::drain_at_least(&ch, &dlq, 1, Duration::from_secs(15)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        got.extend(common::drain_at_least(&ch, &dlq, 0, Duration::ZERO).await);
        got
    }

    /// The dead letters there are now.
    async fn parked_now(&self) -> Vec<lapin::message::BasicGetMessage> {
        let (_c, ch) = common::channel().await;
        common::drain_at_least(&ch, &format!("{}.dlq", self.queue), 0, Duration::ZERO).await
    }

    async fn stop(self) {
        self.service.shutdown().await.unwrap();
        common::delete_service_queues(&self.queue).await;
        self.client.close().await;
    }
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.to_owned()))
}

/// The service tests take turns: every service here binds `hostile.#`, so the ordinary
/// events one test publishes would reach the others' handlers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Publishes as a stranger would: raw body, any headers, straight into the service's queue
/// (the default exchange), so no other test's service sees it.
async fn stranger(queue: &str, body: &[u8], headers: Vec<(&str, AMQPValue)>) {
    let (_c, ch) = common::channel().await;
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(k.into(), v);
    }
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default()
            .with_headers(table)
            .with_content_type("application/json".into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// A Celery v2 `tchu_tchu.dispatch_event` body for `topic`, as tchu-tchu's publisher writes it.
fn celery_body(topic: &str, payload: &str) -> Vec<u8> {
    let inner = serde_json::to_string(payload).unwrap();
    format!(r#"[[{inner}], {{"routing_key": "{topic}"}}, {{"callbacks": null, "errbacks": null, "chain": null, "chord": null}}]"#)
        .into_bytes()
}

fn celery_headers(id: &str) -> Vec<(&'static str, AMQPValue)> {
    vec![("task", long("tchu_tchu.dispatch_event")), ("id", long(id))]
}

fn kind(m: &lapin::message::BasicGetMessage) -> Option<String> {
    common::header(m, "x-tchu-error-kind")
}

/// 1. A `CC` header naming the service's own queue: every copy tchu publishes used to keep it,
///    so each dead letter was routed back to the queue too, thousands a second.
#[tokio::test]
async fn a_cc_header_is_not_copied_into_dead_letters() {
    let _turn = SERIAL.lock().await;
    let s = Running::start("hostile_cc", 1).await;
    let cc = AMQPValue::FieldArray(FieldArray::from(vec![long(&s.queue)]));
    stranger(&s.queue, b"{not json", vec![("CC", cc)]).await;
    let parked = s.parked().await;
    assert_eq!(parked.len(), 1, "exactly one dead letter");
    assert_eq!(kind(&parked[0]).as_deref(), Some("undecodable"));
    let headers = parked[0]
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    assert!(!headers.inner().contains_key("CC"), "{headers:?}");
    s.still_serves().await;
    s.stop().await;
}

/// 4. A retry delay set by a stranger on an event for a service without retries: it used to
///    be requeued every second, forever, blocking everything behind it (prefetch 1).
#[tokio::test]
async fn a_strangers_delay_is_not_honoured() {
    let _turn = SERIAL.lock().await;
    let s = Running::start("hostile_delay", 1).await;
    let mut headers = celery_headers("delay-1");
    headers.push(("x-tchu-delay-remaining", AMQPValue::LongLongInt(60_000)));
    stranger(
        &s.queue,
        &celery_body("hostile.order", r#"{"n": 1}"#),
        headers,
    )
    .await;
    let parked = s.parked().await;
    assert_eq!(parked.len(), 1);
    assert_eq!(kind(&parked[0]).as_deref(), Some("untrusted"));
    assert!(!s.seen.has("order", 1), "the handler must not run it");
    for _ in 0..3 {
        s.still_serves().await;
    }
    s.stop().await;
}

/// 5. Control headers set by a stranger: choosing the handler, rewriting the topic past the
///    broker's routing, resetting the attempt count. None is honoured; nothing runs.
#[tokio::test]
async fn a_strangers_control_headers_choose_nothing() {
    let _turn = SERIAL.lock().await;
    let s = Running::start("hostile_control", 1).await;
    let cases: Vec<(&str, AMQPValue)> = vec![
        ("x-tchu-handler", long("hostile::admin")),
        ("x-tchu-original-routing-key", long("hostile.admin.reset")),
        ("x-tchu-attempt", AMQPValue::LongLongInt(1)),
        ("x-tchu-signature", long(&"ab".repeat(32))),
    ];
    for (i, (name, value)) in cases.into_iter().enumerate() {
        let mut headers = celery_headers(&format!("control-{i}"));
        headers.push((name, value));
        if name == "x-tchu-signature" {
            headers.push(("x-tchu-handler", long("hostile::admin")));
        }
        let n = 10 + i as u64;
        let body = celery_body("hostile.order", &format!(r#"{{"n": {n}}}"#));
        stranger(&s.queue, &body, headers).await;
        let parked = s.parked().await;
        assert_eq!(parked.len(), 1, "{name}");
        assert_eq!(kind(&parked[0]).as_deref(), Some("untrusted"), "{name}");
        assert!(!s.seen.has("order", n as i64), "{name}: nothing runs");
    }
    assert_eq!(
        s.seen.count("admin"),
        0,
        "the stranger never ran the admin handler"
    );
    assert_eq!(s.seen.count("audit"), 0, "nor any other");
    s.still_serves().await;
    s.stop().await;
}

/// 5b. The same control headers on a message that comes back redelivered: it is moved to the
///    quarantine before it runs, and tchu's copy would carry tchu's signature over them. It is
///    parked as `untrusted` instead, and the admin handler never runs.
#[tokio::test]
async fn a_strangers_control_headers_are_not_signed_on_the_way_to_the_quarantine() {
    let _turn = SERIAL.lock().await;
    let Running {
        queue,
        client,
        service,
        seen,
        ..
    } = Running::start("hostile_redelivered", 1).await;
    service.shutdown().await.unwrap();
    let mut headers = celery_headers("control-redelivered");
    headers.push(("x-tchu-handler", long("hostile::admin")));
    headers.push(("x-tchu-original-routing-key", long("hostile.admin.reset")));
    let body = celery_body("hostile.order", r#"{"n": 77}"#);
    stranger(&queue, &body, headers).await;
    // Taken and never acknowledged: the broker gives it back marked redelivered.
    let (conn, ch) = common::channel().await;
    let got = ch
        .basic_get(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    assert!(got.is_some());
    conn.close(200, "gone".into()).await.unwrap();
    let service = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::svc"))
        .state_arc(seen.clone())
        .start(&client)
        .await
        .unwrap();
    let (_c, ch) = common::channel().await;
    let dlq = format!("{queue}.dlq");
    let mut parked = common::drain_at_least(&ch, &dlq, 1, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    parked.extend(common::drain_at_least(&ch, &dlq, 0, Duration::ZERO).await);
    assert_eq!(parked.len(), 1);
    assert_eq!(kind(&parked[0]).as_deref(), Some("untrusted"));
    assert_eq!(
        seen.count("admin"),
        0,
        "the stranger never ran the admin handler"
    );
    assert!(!seen.has("order", 77), "nothing ran");
    service.shutdown().await.unwrap();
    common::delete_service_queues(&queue).await;
    client.close().await;
}

/// 6. The dead-letter queue deleted, then a message one handler rejects while another (the
///    audit log) succeeds: parking used to fail, the message came back every second, and the
///    audit ran again each time.
#[tokio::test]
async fn a_missing_dead_letter_queue_is_declared_again_and_nothing_reruns() {
    let _turn = SERIAL.lock().await;
    let s = Running::start("hostile_nodlq", 1).await;
    {
        let (_c, ch) = common::channel().await;
        common::delete_queues(&ch, &[&format!("{}.dlq", s.queue)]).await;
    }
    let body = celery_body("hostile.order", r#"{"not_n": true}"#);
    stranger(&s.queue, &body, celery_headers("nodlq-1")).await;
    let parked = s.parked().await;
    assert_eq!(parked.len(), 1);
    assert_eq!(kind(&parked[0]).as_deref(), Some("rejected"));
    assert_eq!(
        common::header(&parked[0], "x-tchu-handler").as_deref(),
        Some("hostile::order")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.seen.count("audit"),
        1,
        "the audit ran once, and only once"
    );
    s.still_serves().await;
    s.stop().await;
}

/// 7. A message whose handler kills the process: under a supervisor that restarts the worker,
///    it used to come back after every restart, forever. Past the redelivery limit it is
///    parked as `crashed`, and the worker goes on with the next event.
#[tokio::test]
async fn a_message_that_kills_the_worker_is_parked_after_the_redelivery_limit() {
    let queue = common::unique("hostile_crash");
    let client = tchu::Client::connect(&common::broker_url()).await.unwrap();
    let limit = 2;
    let mut runs = 0;
    let mut parked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for restart in 0..(limit + 4) {
        assert!(Instant::now() < deadline, "the crash loop did not end");
        let (mut worker, lines) = spawn_worker(&queue, limit);
        wait_line(&lines, "<consuming>", Duration::from_secs(20)).unwrap();
        if restart == 0 {
            client
                .publish_raw("demo.work", &serde_json::json!({"id": 7, "poison": true}))
                .await
                .unwrap();
        }
        let started = wait_line(&lines, "started 7 ", Duration::from_secs(3));
        if started.is_some() {
            runs += 1;
            let status = worker.wait().unwrap();
            assert!(!status.success(), "the poison aborts the worker");
            continue;
        }
        // The worker got past it: the message must be parked, and the next event handled.
        let (_c, ch) = common::channel().await;
        parked =
            common::drain_at_least(&ch, &format!("{queue}.dlq"), 1, Duration::from_secs(10)).await;
        client
            .publish_raw("demo.work", &serde_json::json!({"id": 8}))
            .await
            .unwrap();
        assert!(wait_line(&lines, "done 8", Duration::from_secs(20)).is_some());
        let _ = worker.kill();
        let _ = worker.wait();
        break;
    }
    assert_eq!(
        runs, limit,
        "run once, then alone in the quarantine until it ran `limit` times"
    );
    assert_eq!(parked.len(), 1, "parked once");
    assert_eq!(kind(&parked[0]).as_deref(), Some("crashed"));
    // Parked with its own topic (not the queue's name it was counted through), and without the
    // crash count: replayed, it starts afresh.
    assert_eq!(
        common::header(&parked[0], "x-tchu-original-routing-key").as_deref(),
        Some("demo.work")
    );
    assert_eq!(common::header(&parked[0], "x-tchu-redeliveries"), None);
    common::delete_service_queues(&queue).await;
    client.close().await;
}

fn spawn_worker(
    queue: &str,
    limit: u32,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(common::example("worker"))
        .env(tchu::BROKER_URL_ENV, common::broker_url())
        .env("TCHU_QUEUE", queue)
        .env("TCHU_WORK_MS", "0")
        .env("TCHU_REDELIVERY_LIMIT", limit.to_string())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("consuming") {
                let _ = tx2.send("<consuming>".into());
            }
        }
    });
    (child, rx)
}

fn wait_line(
    rx: &std::sync::mpsc::Receiver<String>,
    what: &str,
    within: Duration,
) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(what) => return Some(line),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

async fn pika_async(case: &'static str, queue: &str) -> bool {
    let queue = queue.to_owned();
    let url = common::broker_url();
    tokio::task::spawn_blocking(move || python::stranger(case, &queue, &url, "hostile"))
        .await
        .unwrap()
}

/// 2 and 3. Frames lapin's parser refuses (text that is not UTF-8 in a property, a header
/// name or the routing key; headers nested 2,500 levels deep; an unknown field type): the
/// connection closed (or the I/O thread overflowed its stack and the process aborted), and
/// the message came back on the next connection, again and again. tchu's frame guard hands
/// lapin a repaired frame instead, and dispatch parks the message once. RabbitMQ 3.10 refuses
/// an unknown field type at publish (541, the publisher's connection closed): whichever holds
/// is asserted and printed.
#[tokio::test]
async fn frames_the_parser_cannot_read_as_sent_are_parked_as_malformed() {
    let _turn = SERIAL.lock().await;
    let s = Running::start("hostile_frames", 1).await;
    for (case, reason) in python::MALFORMED_CASES {
        if !pika_async(case, &s.queue).await {
            assert_eq!(case, "unknown_type", "the broker refused {case}");
            eprintln!("{case}: refused by the broker at publish; nothing reached the service");
            s.still_serves().await;
            assert!(s.parked_now().await.is_empty(), "{case}");
            continue;
        }
        let parked = s.parked().await;
        assert_eq!(parked.len(), 1, "{case}");
        assert_eq!(kind(&parked[0]).as_deref(), Some("malformed"), "{case}");
        let why = common::header(&parked[0], "x-tchu-error").unwrap_or_default();
        assert!(why.contains(reason), "{case}: {why}");
        assert_eq!(parked[0].data, br#"{"n": 1}"#, "{case}: the body is kept");
        s.still_serves().await;
    }
    s.stop().await;
}

/// Deliveries in flight beside a malformed one (prefetch 20, published before and after it,
/// so that they arrive in the same reads) are each handled once, and only the malformed one
/// is parked: the guard repairs one frame, the connection never notices.
#[tokio::test]
async fn deliveries_in_flight_beside_a_malformed_one_are_handled_once() {
    let _turn = SERIAL.lock().await;
    let s = Running::start("hostile_neighbours", 20).await;
    let publish = |from: u64| {
        let client = s.client.clone();
        async move {
            for n in from..from + 15 {
                client.publish(&Order { n }).await.unwrap();
            }
        }
    };
    let before = tokio::spawn(publish(1));
    assert!(pika_async("deep_headers", &s.queue).await);
    assert!(pika_async("utf8_header_key", &s.queue).await);
    publish(16).await;
    before.await.unwrap();
    let all_seen = || (1..=30).all(|n| s.seen.has("order", n));
    assert!(common::wait_until(Duration::from_secs(15), all_seen).await);
    let parked = s.parked().await;
    assert_eq!(parked.len(), 2, "only the two malformed ones are parked");
    assert!(
        parked
            .iter()
            .all(|m| kind(m).as_deref() == Some("malformed"))
    );
    assert_eq!(s.seen.count("order"), 30, "each neighbour handled once");
    s.still_serves().await;
    s.stop().await;
}

/// A stranger's headers that just fit the broker's frame (131,072 bytes): the dead letter,
/// with the headers tchu adds, would not, and a frame over the limit makes the broker close
/// the connection, after which the message came back, again and again. The copy is trimmed
/// instead, and says so.
#[tokio::test]
async fn a_copy_that_would_overflow_the_frame_is_trimmed() {
    let _turn = SERIAL.lock().await;
    let s = Running::start("hostile_frame", 1).await;
    let junk = "j".repeat(130_700);
    let mut headers = celery_headers("frame-1");
    headers.push(("x-junk", long(&junk)));
    let body = celery_body("hostile.order", r#"{"not_n": true}"#);
    stranger(&s.queue, &body, headers).await;
    let parked = s.parked().await;
    assert_eq!(parked.len(), 1);
    assert_eq!(kind(&parked[0]).as_deref(), Some("rejected"));
    let trimmed = common::header(&parked[0], "x-tchu-trimmed").unwrap_or_default();
    assert!(trimmed.contains("x-junk"), "{trimmed:?}");
    s.still_serves().await;
    s.stop().await;
}
