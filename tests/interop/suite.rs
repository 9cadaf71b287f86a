// The interoperability suite, included by `tests/interop.rs` (tchu-tchu 3.0.4) and
// `tests/interop_2x.rs` (2.4.0), each of which names its release as `PY`. Where the two releases behave
// differently, the test says which does what. Each binary also defines `mod foreign`: a
// handler bound to its Python service's queue name, where tchu-tchu 3.x publishes its handler
// tasks (B13).

use common::{channel, delete_queues, unique};
use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tchu::prelude::*;

/// What the Rust handlers saw: (kind, payload, format, is_rpc).
#[derive(Default)]
struct Rec(Mutex<Vec<(&'static str, Value, tchu::Format, bool)>>);

impl Rec {
    fn push(&self, kind: &'static str, m: &Message) {
        self.0
            .lock()
            .unwrap()
            .push((kind, m.payload().clone(), m.format(), m.is_rpc()));
    }
    fn find(&self, kind: &str, marker: &str) -> Vec<(Value, tchu::Format, bool)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 == kind && r.1["marker"] == marker)
            .map(|r| (r.1.clone(), r.2, r.3))
            .collect()
    }
    async fn wait(
        &self,
        kind: &str,
        marker: &str,
        timeout: Duration,
    ) -> Option<(Value, tchu::Format, bool)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.find(kind, marker).into_iter().next() {
                return Some(r);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tchu::payload]
#[derive(Debug)]
struct EchoReply {
    echo: Value,
}

#[tchu::event(topic = "interop.rpc.rs.echo", response = EchoReply)]
struct RsEcho {
    marker: String,
    #[serde(default)]
    n: i64,
}

#[tchu::event(topic = "interop.rpc.rs.fail", response = EchoReply)]
struct RsFail {
    marker: String,
}

#[tchu::event(topic = "interop.rpc.rs.slow", response = EchoReply)]
struct RsSlow {
    sleep_ms: u64,
}

#[tchu::payload]
#[derive(Debug)]
struct Charged {
    charged: i64,
}

#[tchu::event(topic = "interop.rpc.rs.charge", response = Charged)]
struct RsCharge {
    amount: i64,
}

#[tchu::payload]
struct BothReply {
    from: String,
    n: i64,
}

#[tchu::event(topic = "interop.rpc.both", response = BothReply)]
struct Both {
    marker: String,
    n: i64,
}

#[tchu::event(topic = "interop.rpc.rs.nothing", response = Option<EchoReply>)]
struct RsNothing {
    marker: String,
}

#[tchu::event(topic = "interop.rswatch.echo", response = EchoReply)]
struct RsWatched {
    marker: String,
    n: i64,
}

#[tchu::event(topic = "interop.pywatch.rs", response = EchoReply)]
struct RsPyWatched {
    marker: String,
    n: i64,
}

/// Routed to the Python service by its `interop.pyhash.#` binding, where tchu-tchu answers
/// `no_handlers` (B3), and answered by a Rust responder.
#[tchu::event(topic = "interop.pyhash.rs", response = EchoReply)]
struct RsPyHashed {
    n: i64,
}

/// Answered by the Python service, whose observer on `interop.pywatch.*` answers too.
#[tchu::event(topic = "interop.pywatch.echo", response = Value)]
struct PyWatchedEcho {
    marker: String,
    n: i64,
}

/// Only the Python observer sees it. (A response type that accepts `null`, like `Value` or an
/// `Option`, would take the observer's `None` as the answer.)
#[tchu::event(topic = "interop.pywatch.silent", response = EchoReply)]
struct PyWatchedSilent {
    marker: String,
}

#[tchu::event(topic = "interop.rpc.py.charge", response = Charged)]
struct PyCharge {
    amount: i64,
}

#[tchu::event(topic = "interop.rpc.py.echo", response = Value)]
struct PyEcho {
    marker: String,
    n: i64,
}

mod rs {
    use super::*;

    #[tchu::subscribe("interop.rs.event")]
    async fn event(m: Message, r: State<Rec>) {
        r.push("rs.event", &m);
    }

    #[tchu::subscribe("interop.fanout")]
    async fn fanout(m: Message, r: State<Rec>) {
        r.push("rs.fanout", &m);
    }

    #[tchu::subscribe("interop.wild.*")]
    async fn wild(m: Message, r: State<Rec>) {
        r.push("rs.wild", &m);
    }

    #[tchu::subscribe("interop.deep.#")]
    async fn deep(m: Message, r: State<Rec>) {
        r.push("rs.deep", &m);
    }

    #[tchu::subscribe("interop.types")]
    async fn types(m: Message, r: State<Rec>) {
        r.push("rs.types", &m);
    }

    #[tchu::subscribe]
    async fn rs_echo(req: RsEcho, m: Message) -> EchoReply {
        let _ = req.n;
        EchoReply {
            echo: m.payload().clone(),
        }
    }

    #[tchu::subscribe]
    async fn rs_fail(req: RsFail) -> EchoReply {
        panic!("rust responder exploded for {}", req.marker)
    }

    #[tchu::subscribe]
    async fn rs_slow(req: RsSlow) -> EchoReply {
        tokio::time::sleep(Duration::from_millis(req.sleep_ms)).await;
        EchoReply {
            echo: json!({"slept": req.sleep_ms}),
        }
    }

    /// Request context from a Python publisher.
    #[tchu::subscribe("interop.rs.ctx")]
    async fn ctx(m: Message, ctx: Context, r: State<Rec>) {
        r.push(
            if ctx.is_authorized() {
                "rs.ctx.yes"
            } else {
                "rs.ctx.no"
            },
            &m,
        );
    }

    /// An observer on an RPC topic: it runs, and its service sends no reply.
    #[tchu::subscribe("interop.rpc.rs.none")]
    async fn rs_none(m: Message, r: State<Rec>) {
        r.push("rs.none", &m);
    }

    /// A responder whose answer is `None`: a Python caller gets `None`.
    #[tchu::subscribe]
    async fn rs_nothing(_req: RsNothing) -> Option<EchoReply> {
        None
    }

    /// A responder next to a Python service that answers `no_handlers`.
    #[tchu::subscribe]
    async fn rs_py_hashed(req: RsPyHashed) -> EchoReply {
        EchoReply {
            echo: json!({"n": req.n}),
        }
    }

    /// A responder next to Rust observers (`rswatch`) on another service.
    #[tchu::subscribe]
    async fn rs_watched(req: RsWatched, m: Message) -> EchoReply {
        let _ = req.n;
        EchoReply {
            echo: m.payload().clone(),
        }
    }

    /// A responder next to the Python service's observer on `interop.pywatch.*`.
    #[tchu::subscribe]
    async fn rs_py_watched(req: RsPyWatched) -> EchoReply {
        EchoReply {
            echo: json!({"n": req.n, "from": "rust"}),
        }
    }

    #[tchu::subscribe]
    async fn rs_charge(req: RsCharge) -> Result<Charged, RpcError> {
        if req.amount < 0 {
            return Err(RpcError::new("NEGATIVE_AMOUNT", "negative amount")
                .with_detail("amount", req.amount));
        }
        Ok(Charged {
            charged: req.amount,
        })
    }

    #[tchu::subscribe]
    async fn both(req: Both, m: Message, r: State<Rec>) -> BothReply {
        r.push("rs.both", &m);
        BothReply {
            from: "rust".into(),
            n: req.n,
        }
    }
}

/// Observers only: an audit log on every RPC topic of the `rswatch` family.
mod rswatch {
    use super::*;

    #[tchu::subscribe("interop.rswatch.#")]
    async fn audit(m: Message, r: State<Rec>) {
        r.push("rs.observer", &m);
    }
}

struct Rust {
    client: tchu::Client,
    service: tchu::ServiceHandle,
    rec: Arc<Rec>,
    queue: String,
}

/// A client writing for this binary's tchu-tchu release, as a user with such a fleet sets it.
async fn rust_client() -> tchu::Client {
    tchu::Client::builder()
        .url(common::broker_url())
        .tchu_tchu(PY.tchu_tchu)
        .connect()
        .await
        .unwrap()
}

/// This binary's shared Python service.
async fn started() -> &'static python::Python {
    python::started_of(PY).await
}

/// A tchu-tchu client command against this binary's Python service.
async fn pyclient(cmd: &str, topic: &str, data: Value, timeout_s: Option<f64>) -> Value {
    python::client_of(PY, cmd, topic, data, timeout_s).await
}

impl Rust {
    async fn start(module: &str) -> Self {
        let client = rust_client().await;
        let rec = Arc::new(Rec::default());
        let queue = unique("tchu_interop_rs");
        let service = tchu::Service::new(&queue)
            .handlers_in(module)
            .state_arc(rec.clone())
            .prefetch(32)
            .start(&client)
            .await
            .unwrap();
        Self {
            client,
            service,
            rec,
            queue,
        }
    }

    async fn stop(self) {
        self.service.shutdown().await.unwrap();
        let (_c, ch) = channel().await;
        delete_queues(&ch, &[&self.queue, &format!("{}.dlq", self.queue)]).await;
    }
}

const RS: &str = concat!(module_path!(), "::rs");
const WAIT: Duration = Duration::from_secs(20);

fn marker() -> String {
    unique("m")
}

#[tokio::test]
async fn item01_topology_declared_by_either_side_without_406() {
    let py = started().await; // Python declared tchu_events and its queue first
    let rust = Rust::start(RS).await; // Rust declares the exchange again, and its own queue
    let (_c, ch) = channel().await;
    // Rust re-declaring the Python queue with tchu's flags is accepted: same shape.
    ch.queue_declare(
        py.queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("the Python service queue has tchu's shape (durable, no arguments)");
    // And a fresh Python publisher declares the exchange after Rust did.
    let out = pyclient(
        "publish",
        "interop.py.event",
        json!({"marker": marker()}),
        None,
    )
    .await;
    assert_eq!(out, json!({"ok": null}), "{out}");
    py.assert_alive();
    rust.stop().await;
}

#[tokio::test]
async fn item02_bindings_one_per_key_plus_the_queue_name_on_both_sides() {
    let py = started().await;
    let rust = Rust::start(RS).await;
    let mut got = common::bindings_of(&rust.queue);
    got.sort();
    let mut want: Vec<String> = tchu::Service::new(&rust.queue).handlers_in(RS).bindings();
    want.sort();
    assert_eq!(got, want);
    assert!(got.contains(&rust.queue) && got.contains(&"interop.deep.#".to_owned()));
    let py_bindings = common::bindings_of(&py.queue);
    for key in [
        py.queue.as_str(),
        "interop.py.event",
        "interop.wild.*",
        "interop.deep.#",
        "interop.rpc.py.echo",
    ] {
        assert!(
            py_bindings.iter().any(|b| b == key),
            "Python queue lacks {key}: {py_bindings:?}"
        );
    }
    rust.stop().await;
}

#[tokio::test]
async fn item03_rust_publish_reaches_a_python_subscribe_handler_as_exactly_the_dict() {
    let py = started().await;
    let client = rust_client().await;
    let m = marker();
    let payload = json!({"marker": m, "text": "héllo wörld 😀", "n": 42, "nested": {"a": [1, 2.5, null, true]}});
    client
        .publish_raw("interop.py.event", &payload)
        .await
        .unwrap();
    let got = py
        .wait_record("py.event", &m, WAIT)
        .await
        .expect("the Python handler did not run");
    assert_eq!(
        got, payload,
        "exactly the dict: types and unicode preserved, no `_tchu_meta`"
    );
    py.assert_alive();
}

/// A delayed event reaches a Python `@subscribe` handler when it is due, not before, exactly
/// as an immediate one: the delay levels end in `tchu_events` with the topic kept.
#[tokio::test]
async fn item03c_a_delayed_rust_event_reaches_a_python_handler_when_due() {
    let py = started().await;
    let client = rust_client().await;
    let m = marker();
    let payload = json!({"marker": m, "n": 3});
    let options = tchu::PublishOptions::new()
        .delay(Duration::from_millis(2500))
        .header("tenant", "acme");
    let sent = Instant::now();
    client
        .publish_raw_with("interop.py.event", &payload, &options)
        .await
        .unwrap();
    let early = py
        .wait_record("py.event", &m, Duration::from_millis(2000))
        .await;
    assert!(
        early.is_none(),
        "the Python handler ran before the event was due"
    );
    let got = py
        .wait_record("py.event", &m, WAIT)
        .await
        .expect("the delayed event never reached the Python handler");
    assert!(sent.elapsed() >= Duration::from_millis(2500));
    assert_eq!(
        got, payload,
        "exactly the dict, as an immediate publish delivers it"
    );
    py.assert_alive();
}

/// An event stored through the outbox and published by its relay reaches a Python
/// `@subscribe` handler exactly as `Client::publish` would deliver it.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn item03b_an_outbox_event_reaches_a_python_subscribe_handler_as_exactly_the_dict() {
    let py = started().await;
    let client = rust_client().await;
    let (_, pool) = common::scoped_database("interop_outbox").await;
    let outbox = tchu::Outbox::new(pool.clone())
        .await
        .unwrap()
        .tchu_tchu(PY.tchu_tchu);
    let m = marker();
    let payload =
        json!({"marker": m, "text": "héllo wörld 😀", "n": 7, "nested": {"a": [1, 2.5, null]}});
    let mut tx = pool.begin().await.unwrap();
    outbox
        .publish_raw(&mut tx, "interop.py.event", &payload)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    while outbox.pending().await.unwrap() > 0 {
        outbox.relay_once(&client).await.unwrap();
    }
    let got = py
        .wait_record("py.event", &m, WAIT)
        .await
        .expect("the Python handler did not run");
    assert_eq!(got, payload, "exactly the dict, as from Client::publish");
    py.assert_alive();
}

#[tokio::test]
async fn item04_rust_publish_reaches_a_python_tchuevent_handler() {
    let py = started().await;
    let client = rust_client().await;
    let (m1, m2) = (marker(), marker());
    client
        .publish_raw("interop.py.tchuevent", &json!({"marker": m1, "amount": 5}))
        .await
        .unwrap();
    let auth = json!({"marker": m2, "amount": 6, "user": {"id": 1, "email": "a@b.c"}, "company": {"id": 2}, "user_company": {"id": 3}});
    client
        .publish_raw("interop.py.tchuevent", &auth)
        .await
        .unwrap();
    let anon = py
        .wait_record("py.tchuevent", &m1, WAIT)
        .await
        .expect("TchuEvent handler did not run");
    assert_eq!(anon["validated"], json!({"marker": m1, "amount": 5}));
    assert_eq!(anon["authorized"], false);
    let authed = py
        .wait_record("py.tchuevent", &m2, WAIT)
        .await
        .expect("TchuEvent handler did not run");
    assert_eq!(authed["validated"], auth);
    assert_eq!(
        authed["authorized"], true,
        "user, company and user_company all present"
    );
}

#[tokio::test]
async fn item05_rust_publish_is_a_three_element_v2_message_and_the_worker_survives() {
    let py = started().await;
    let (_c, ch) = channel().await;
    let (_q, mut consumer) = common::temp_queue(&ch, Some("interop.py.event")).await;
    let client = rust_client().await;
    let m = marker();
    let id = client
        .publish_raw("interop.py.event", &json!({"marker": m}))
        .await
        .unwrap();
    let d = loop {
        let d = tokio::time::timeout(WAIT, consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if String::from_utf8_lossy(&d.data).contains(&m) {
            break d;
        }
    };
    let headers = d.properties.headers().clone().unwrap();
    let h = |k: &str| match headers.inner().get(k) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => format!("{other:?}"),
    };
    assert_eq!(h("task"), "tchu_tchu.dispatch_event");
    assert_eq!(h("id"), id);
    let body: Value = serde_json::from_slice(&d.data).unwrap();
    assert_eq!(
        body.as_array().map(Vec::len),
        Some(3),
        "Celery v2 bodies have 3 elements (B11)"
    );
    assert!(
        body[0][0].is_string(),
        "args[0] is a JSON string, as tchu-tchu sends it"
    );
    assert_eq!(body[1], json!({"routing_key": "interop.py.event"}));
    let args0: Value = serde_json::from_str(body[0][0].as_str().unwrap()).unwrap();
    assert_eq!(
        args0.get("_tchu_meta").is_some(),
        !PY.is_2x(),
        "`_tchu_meta` in the 3.x form only: {args0}"
    );
    assert_eq!(
        d.properties.reply_to().is_some(),
        !PY.is_2x(),
        "an event in the 2.x form carries no reply_to"
    );
    py.wait_record("py.event", &m, WAIT)
        .await
        .expect("the Python handler did not run");
    py.assert_alive();
}

/// The dispatcher's log line for one message: what it did with it.
fn dispatched(py: &python::Python, id: &str) -> Option<String> {
    py.log_text()
        .lines()
        .find(|l| l.contains(&format!("dispatch_event[{id}] succeeded")))
        .map(str::to_owned)
}

/// Both forms tchu writes, published to this release's `@subscribe` handler: what each
/// release does with each, as `docs/wire.md` ("tchu-tchu 2.x and 3.x side by side") reports.
#[tokio::test]
async fn both_forms_reach_python_handlers_as_each_release_reads_them() {
    let py = started().await;
    let base = rust_client().await;
    let mut seen = Vec::new();
    for form in [tchu::TchuTchu::V3, tchu::TchuTchu::V2] {
        let m = marker();
        let id = base
            .with_tchu_tchu(form)
            .publish_raw("interop.py.event", &json!({"marker": m}))
            .await
            .unwrap();
        let data = py
            .wait_record("py.event", &m, WAIT)
            .await
            .expect("the Python handler did not run");
        let deadline = Instant::now() + WAIT;
        let line = loop {
            if let Some(line) = dispatched(py, &id) {
                break line;
            }
            assert!(Instant::now() < deadline, "no dispatch logged for {id}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        seen.push((form, data, m, line));
    }
    for (form, data, m, line) in seen {
        let inline = line.contains("'status': 'success'");
        let as_task = line.contains("'status': 'dispatched'");
        match (PY.is_2x(), form) {
            // 2.4.0 does not know `_tchu_meta`: its handler gets it as data.
            (true, tchu::TchuTchu::V3) => {
                assert_eq!(data, json!({"marker": m, "_tchu_meta": {"is_rpc": false}}));
                assert!(inline, "{line}");
            }
            (true, _) => {
                assert_eq!(data, json!({"marker": m}));
                assert!(inline, "{line}");
            }
            // 3.0.4 strips it; the handler runs as its own Celery task.
            (false, tchu::TchuTchu::V3) => {
                assert_eq!(data, json!({"marker": m}));
                assert!(as_task && line.contains("'is_rpc': False"), "{line}");
            }
            // Without it, 3.0.4 takes the message for a call: the handler runs inside the
            // dispatcher (so Celery retries of handler tasks do not apply).
            (false, _) => {
                assert_eq!(data, json!({"marker": m}));
                assert!(inline && line.contains("'is_rpc': True"), "{line}");
            }
        }
    }
    py.assert_alive();
}

/// A Rust call in each form to this release's responder: the 3.x form's `_tchu_meta` reaches
/// a 2.4.0 handler as data; the 2.x form is answered alike by both releases.
#[tokio::test]
async fn both_forms_of_a_call_are_answered_as_each_release_reads_them() {
    let _py = started().await;
    let base = rust_client().await;
    for form in [tchu::TchuTchu::V3, tchu::TchuTchu::V2] {
        let m = marker();
        let answer = base
            .with_tchu_tchu(form)
            .call_raw(
                "interop.rpc.py.echo",
                &json!({"marker": m}),
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        let want = if PY.is_2x() && form == tchu::TchuTchu::V3 {
            json!({"echo": {"marker": m, "_tchu_meta": {"is_rpc": true}}})
        } else {
            json!({"echo": {"marker": m}})
        };
        assert_eq!(answer, want, "{form:?}");
    }
}

#[tokio::test]
async fn item06_python_accepts_args0_as_a_string_and_as_an_object() {
    let py = started().await;
    let (_c, ch) = channel().await;
    let m = marker();
    let mut headers = FieldTable::default();
    headers.insert(
        "task".into(),
        AMQPValue::LongString(LongString::from("tchu_tchu.dispatch_event")),
    );
    headers.insert(
        "id".into(),
        AMQPValue::LongString(LongString::from(uuid::Uuid::new_v4().to_string())),
    );
    // The object form as each release's publisher would write it (2.4.0 hands `_tchu_meta`
    // to its handlers: see `both_forms_reach_python_handlers_as_each_release_reads_them`).
    let meta = if PY.is_2x() {
        ""
    } else {
        r#", "_tchu_meta": {"is_rpc": false}"#
    };
    let body = format!(
        r#"[[{{"marker": "{m}"{meta}}}], {{"routing_key": "interop.py.event"}}, {{}}]"#
    );
    ch.basic_publish(
        "tchu_events".into(),
        "interop.py.event".into(),
        BasicPublishOptions::default(),
        body.as_bytes(),
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_headers(headers),
    )
    .await
    .unwrap();
    assert_eq!(
        py.wait_record("py.event", &m, WAIT).await,
        Some(json!({"marker": m})),
        "object args[0]"
    );
    // The string form is what tchu sends (item 03 and the golden wire tests).
    let client = rust_client().await;
    let m2 = marker();
    client
        .publish_raw("interop.py.event", &json!({"marker": m2}))
        .await
        .unwrap();
    assert_eq!(
        py.wait_record("py.event", &m2, WAIT).await,
        Some(json!({"marker": m2})),
        "string args[0]"
    );
    py.assert_alive();
}

#[tokio::test]
async fn item07_python_tchuclient_publish_reaches_a_rust_handler_without_a_reply() {
    let _py = started().await;
    let rust = Rust::start(RS).await;
    let m = marker();
    let out = pyclient(
        "publish",
        "interop.rs.event",
        json!({"marker": m, "n": 1}),
        None,
    )
    .await;
    assert_eq!(out, json!({"ok": null}));
    let (payload, format, is_rpc) = rust
        .rec
        .wait("rs.event", &m, WAIT)
        .await
        .expect("the Rust handler did not run");
    assert_eq!(
        payload,
        json!({"marker": m, "n": 1}),
        "`_tchu_meta` stripped, args[0] decoded"
    );
    assert_eq!(format, tchu::Format::CeleryV2);
    if PY.is_2x() {
        // tchu-tchu 2.4.0 sends no `_tchu_meta` and its reply queue on every publish, which
        // tchu (as tchu-tchu 3.x) reads as a call: a handler without a response answers none.
        assert!(is_rpc, "a 2.x publish reads as a call");
    } else {
        assert!(!is_rpc, "a publish is not a call: no reply");
    }
    rust.stop().await;
}

#[tokio::test]
async fn item08_python_serverless_publish_reaches_a_rust_handler() {
    let _py = started().await;
    let rust = Rust::start(RS).await;
    let m = marker();
    let out = pyclient(
        "serverless",
        "interop.rs.event",
        json!({"marker": m, "name": "Zoë"}),
        None,
    )
    .await;
    assert_eq!(out, json!({"ok": null}));
    let (payload, format, _) = rust
        .rec
        .wait("rs.event", &m, WAIT)
        .await
        .expect("the Rust handler did not run");
    assert_eq!(payload, json!({"marker": m, "name": "Zoë"}));
    assert_eq!(format, tchu::Format::CeleryV1);
    rust.stop().await;
}

#[tokio::test]
async fn item10_python_handler_tasks_on_the_exchange_are_ignored_by_rust() {
    let py = started().await;
    let rust = Rust::start(concat!(module_path!(), "::foreign")).await;
    // An observer on the same key proves the handler tasks really reach a queue bound so.
    let (_oc, och) = channel().await;
    let (_oq, mut observer) = common::temp_queue(&och, Some(&py.queue)).await;
    let client = rust_client().await;
    let m = marker();
    client
        .publish_raw("interop.py.event", &json!({"marker": m}))
        .await
        .unwrap();
    py.wait_record("py.event", &m, WAIT)
        .await
        .expect("the Python handler did not run");
    if PY.is_2x() {
        // tchu-tchu 2.4.0 runs `@subscribe` handlers inside its dispatcher: no handler task
        // goes out at all.
        let seen = tokio::time::timeout(Duration::from_secs(2), observer.next()).await;
        assert!(seen.is_err(), "2.4.0 published a handler task: {seen:?}");
        assert!(rust.rec.0.lock().unwrap().is_empty());
        rust.stop().await;
        return;
    }
    let task = loop {
        let d = tokio::time::timeout(WAIT, observer.next())
            .await
            .expect("no handler task seen")
            .unwrap()
            .unwrap();
        if String::from_utf8_lossy(&d.data).contains(&m) {
            break d;
        }
    };
    let task_name = match task
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("task"))
    {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => format!("{other:?}"),
    };
    assert_eq!(task_name, "tchu_tchu.handler.pysvc.on_event");
    // The Python handler task went out with routing key `tchu_interop_py`, reaching the Rust
    // queue bound to that key: acknowledged and ignored, neither dispatched nor dead-lettered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        rust.rec.0.lock().unwrap().is_empty(),
        "a Celery handler task was dispatched to a Rust handler"
    );
    let (_c, ch) = channel().await;
    let parked = common::drain_at_least(
        &ch,
        &format!("{}.dlq", rust.queue),
        1,
        Duration::from_millis(200),
    )
    .await;
    assert!(parked.is_empty(), "Celery tasks must not be dead-lettered");
    rust.stop().await;
}

#[tokio::test]
async fn item11_one_publish_fans_out_to_a_python_and_a_rust_service() {
    let py = started().await;
    let rust = Rust::start(RS).await;
    let m = marker();
    rust.client
        .publish_raw("interop.fanout", &json!({"marker": m}))
        .await
        .unwrap();
    py.wait_record("py.fanout", &m, WAIT)
        .await
        .expect("Python missed the fan-out");
    rust.rec
        .wait("rs.fanout", &m, WAIT)
        .await
        .expect("Rust missed the fan-out");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        py.records("py.fanout")
            .iter()
            .filter(|d| d["marker"] == m)
            .count(),
        1
    );
    assert_eq!(rust.rec.find("rs.fanout", &m).len(), 1);
    rust.stop().await;
}

#[tokio::test]
async fn item12_wildcards_follow_amqp_in_rust_and_python_misses_hash_patterns() {
    let py = started().await;
    let rust = Rust::start(RS).await;
    let (one, two, deep) = (marker(), marker(), marker());
    rust.client
        .publish_raw("interop.wild.a", &json!({"marker": one}))
        .await
        .unwrap();
    // `*` is exactly one word: nobody is bound for two words.
    let err = rust
        .client
        .publish_raw("interop.wild.a.b", &json!({"marker": two}))
        .await;
    assert!(
        matches!(err, Err(tchu::Error::Unroutable { .. })),
        "{err:?}"
    );
    rust.client
        .publish_raw("interop.deep.a.b", &json!({"marker": deep}))
        .await
        .unwrap();
    py.wait_record("py.wild", &one, WAIT)
        .await
        .expect("Python `interop.wild.*` missed one word");
    rust.rec
        .wait("rs.wild", &one, WAIT)
        .await
        .expect("Rust `interop.wild.*` missed one word");
    rust.rec
        .wait("rs.deep", &deep, WAIT)
        .await
        .expect("Rust `interop.deep.#` missed two words");
    // Documented difference (B3): the broker delivers `interop.deep.a.b` to the Python queue too,
    // but tchu-tchu's local matcher treats `#` literally, so its handler never runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        py.wait_record("py.deep", &deep, Duration::from_millis(10))
            .await
            .is_none(),
        "tchu-tchu B3 fixed upstream?"
    );
    assert!(
        py.log_text().contains("interop.deep.a.b"),
        "the worker saw the message"
    );
    rust.stop().await;
}

#[tokio::test]
async fn item13_an_unroutable_publish_is_detected() {
    let client = rust_client().await;
    let err = client
        .publish_raw(&unique("interop.nobody"), &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, tchu::Error::Unroutable { .. }), "{err:?}");
}

#[tokio::test]
async fn item14_python_call_gets_the_rust_responder_value() {
    let _py = started().await;
    let rust = Rust::start(RS).await;
    let m = marker();
    let out = pyclient(
        "call",
        "interop.rpc.rs.echo",
        json!({"marker": m, "n": 7}),
        Some(10.0),
    )
    .await;
    assert_eq!(out, json!({"ok": {"echo": {"marker": m, "n": 7}}}));
    rust.stop().await;
}

#[tokio::test]
async fn item15_python_call_maps_rust_outcomes_to_tchu_tchu_errors() {
    let _py = started().await;
    let rust = Rust::start(RS).await;
    // A responder answering `None`: Python's call returns None.
    let none = pyclient(
        "call",
        "interop.rpc.rs.nothing",
        json!({"marker": marker()}),
        Some(10.0),
    )
    .await;
    assert_eq!(none, json!({"ok": null}));
    // Only an observer matches: it runs, nobody answers, Python's call times out.
    let m = marker();
    let silent = pyclient(
        "call",
        "interop.rpc.rs.none",
        json!({"marker": m}),
        Some(2.0),
    )
    .await;
    assert_eq!(silent["error"], "TimeoutError", "{silent}");
    assert!(rust.rec.wait("rs.none", &m, WAIT).await.is_some());
    // A failing responder: an `error` entry.
    let m = marker();
    let failed = pyclient(
        "call",
        "interop.rpc.rs.fail",
        json!({"marker": m}),
        Some(10.0),
    )
    .await;
    assert_eq!(failed["error"], "PublishError", "{failed}");
    let text = failed["message"].as_str().unwrap();
    assert!(
        text.contains(&format!(
            "RPC call failed: Handler '{}::rs::rs_fail' failed: handler panicked: rust responder exploded",
            module_path!()
        )),
        "{text}"
    );
    // A bound topic with no handler: `no_handlers`.
    let (_c, ch) = channel().await;
    ch.queue_bind(
        rust.queue.as_str().into(),
        "tchu_events".into(),
        "interop.rpc.rs.orphan".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let orphan = pyclient("call", "interop.rpc.rs.orphan", json!({}), Some(10.0)).await;
    assert_eq!(orphan["error"], "PublishError", "{orphan}");
    assert!(
        orphan["message"]
            .as_str()
            .unwrap()
            .contains("No handlers found for routing key 'interop.rpc.rs.orphan'"),
        "{orphan}"
    );
    rust.stop().await;
}

#[tokio::test]
async fn item16_python_tchuevent_call_gets_the_rust_business_error_as_data() {
    let _py = started().await;
    let rust = Rust::start(RS).await;
    let err = pyclient(
        "event_call",
        "interop.rpc.rs.charge",
        json!({"amount": -5}),
        Some(10.0),
    )
    .await;
    assert_eq!(
        err,
        json!({"ok": {"success": false, "error_message": "negative amount", "error_code": "NEGATIVE_AMOUNT", "error_details": {"amount": -5}}})
    );
    let ok = pyclient(
        "event_call",
        "interop.rpc.rs.charge",
        json!({"amount": 5}),
        Some(10.0),
    )
    .await;
    assert_eq!(ok, json!({"ok": {"charged": 5}}));
    rust.stop().await;
}

#[tokio::test]
async fn item17_rust_call_to_python_responders() {
    let _py = started().await;
    let client = rust_client().await;
    let m = marker();
    let v = client
        .call_raw(
            "interop.rpc.py.echo",
            &json!({"marker": m}),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(v, json!({"echo": {"marker": m}}));
    match client
        .call_raw(
            "interop.rpc.py.fail",
            &json!({"n": 3}),
            Duration::from_secs(20),
        )
        .await
    {
        Err(CallError::HandlerFailed { handler, message }) => {
            assert_eq!(handler, "rpc_fail");
            assert!(message.contains("python handler failed on 3"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // `no_handlers` does not end a call (another service bound to the topic may answer);
    // at the deadline, a call that saw only `no_handlers` is `NoResponder`.
    match client
        .call_raw("interop.rpc.py.orphan", &json!({}), Duration::from_secs(2))
        .await
    {
        Err(CallError::NoResponder { topic }) => assert_eq!(topic, "interop.rpc.py.orphan"),
        other => panic!("`no_handlers` should be NoResponder: {other:?}"),
    }
    let started = Instant::now();
    let err = client
        .call_raw(
            &unique("interop.rpc.py.unbound"),
            &json!({}),
            Duration::from_secs(20),
        )
        .await;
    assert!(matches!(err, Err(CallError::NoResponder { .. })), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn item18_rust_call_to_a_python_tchuevent_raising_tchurpcexception() {
    let _py = started().await;
    let client = rust_client().await;
    match client
        .call(&PyCharge { amount: -2 })
        .timeout(Duration::from_secs(20))
        .await
    {
        Err(CallError::Business(e)) => {
            assert_eq!(
                (e.error_code.as_str(), e.error_message.as_str(), e.success),
                ("NEGATIVE_AMOUNT", "negative amount", false)
            );
            assert_eq!(e.error_details["amount"], -2);
        }
        other => panic!("{other:?}"),
    }
    let ok = client
        .call(&PyCharge { amount: 3 })
        .timeout(Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(ok.charged, 3);
}

#[tokio::test]
async fn item19_rust_calls_ignore_started_metas_and_match_replies_by_correlation_id() {
    let _py = started().await;
    // A raw caller sees what a Python responder sends: a STARTED meta, then the result.
    let (_c, ch) = channel().await;
    let (rq, mut replies) = common::temp_queue(&ch, None).await;
    let id = uuid::Uuid::new_v4().to_string();
    let req = tchu::wire::encode(
        "interop.rpc.py.echo",
        &json!({"marker": "raw"}),
        &tchu::wire::EncodeOptions {
            id: &id,
            is_rpc: true,
            reply_to: Some(rq.as_str()),
            ..Default::default()
        },
    )
    .unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        "task".into(),
        AMQPValue::LongString(LongString::from("tchu_tchu.dispatch_event")),
    );
    headers.insert(
        "id".into(),
        AMQPValue::LongString(LongString::from(id.as_str())),
    );
    ch.basic_publish(
        "tchu_events".into(),
        "interop.rpc.py.echo".into(),
        BasicPublishOptions::default(),
        &req.body,
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_correlation_id(id.as_str().into())
            .with_reply_to(rq.as_str().into())
            .with_headers(headers),
    )
    .await
    .unwrap();
    let mut statuses = Vec::new();
    while statuses.last().map(String::as_str) != Some("SUCCESS") {
        let d = tokio::time::timeout(WAIT, replies.next())
            .await
            .expect("no reply")
            .unwrap()
            .unwrap();
        let meta: Value = serde_json::from_slice(&d.data).unwrap();
        statuses.push(meta["status"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        statuses,
        ["STARTED", "SUCCESS"],
        "the worker tracks started tasks"
    );
    // tchu's caller waits through the STARTED metas, also with many calls in flight.
    let client = rust_client().await;
    let mut set = tokio::task::JoinSet::new();
    for n in 0..10 {
        let client = client.clone();
        set.spawn(async move {
            let m = format!("c{n}");
            let v = client
                .call(&PyEcho {
                    marker: m.clone(),
                    n,
                })
                .timeout(Duration::from_secs(30))
                .await
                .unwrap();
            assert_eq!(v, json!({"echo": {"marker": m, "n": n}}));
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

#[tokio::test]
async fn item20_deadlines_on_both_sides() {
    let _py = started().await;
    let rust = Rust::start(RS).await;
    let started = Instant::now();
    let err = rust
        .client
        .call_raw(
            "interop.rpc.py.slow",
            &json!({"sleep": 2}),
            Duration::from_millis(500),
        )
        .await;
    assert!(matches!(err, Err(CallError::Timeout { .. })), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    // The late answer must not disturb the next call.
    let m = marker();
    let v = rust
        .client
        .call_raw(
            "interop.rpc.py.echo",
            &json!({"marker": m}),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(v, json!({"echo": {"marker": m}}));
    // A Python caller against a slow Rust responder raises its TimeoutError.
    let out = pyclient(
        "call",
        "interop.rpc.rs.slow",
        json!({"sleep_ms": 3000}),
        Some(1.0),
    )
    .await;
    assert_eq!(out["error"], "TimeoutError", "{out}");
    assert!(
        out["message"].as_str().unwrap().contains(
            "No response received within 1.0 seconds for routing key 'interop.rpc.rs.slow'"
        ),
        "{out}"
    );
    rust.stop().await;
}

#[tokio::test]
async fn item21_an_rpc_topic_bound_by_two_services_gives_one_answer() {
    let py = started().await;
    let rust = Rust::start(RS).await;
    let m = marker();
    let answer = rust
        .client
        .call(&Both {
            marker: m.clone(),
            n: 5,
        })
        .timeout(Duration::from_secs(20))
        .await
        .unwrap();
    assert!(
        answer.from == "rust" || answer.from == "python",
        "{}",
        answer.from
    );
    assert_eq!(answer.n, 5);
    // Both services executed the request (RPC is not point-to-point at the broker).
    py.wait_record("py.both", &m, WAIT)
        .await
        .expect("Python did not run");
    rust.rec
        .wait("rs.both", &m, WAIT)
        .await
        .expect("Rust did not run");
    rust.stop().await;
}

#[tokio::test]
async fn item24_python_types_arrive_as_python_encodes_them() {
    let _py = started().await;
    let rust = Rust::start(RS).await;
    let m = marker();
    let out = pyclient("publish_types", "interop.types", json!({"marker": m}), None).await;
    assert_eq!(out, json!({"ok": null}));
    let (payload, _, _) = rust
        .rec
        .wait("rs.types", &m, WAIT)
        .await
        .expect("the Rust handler did not run");
    assert_eq!(
        payload["name"], "Zoë 😀 ünïcode",
        "non-ASCII survives (escaped as \\u by json.dumps)"
    );
    assert_eq!(payload["amount"], json!(10.25), "Decimal becomes a float");
    assert_eq!(
        payload["when"], "2026-11-29T12:30:05.123456+00:00",
        "datetime becomes isoformat()"
    );
    assert_eq!(payload["day"], "2026-11-29");
    assert_eq!(
        payload["uid"], "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b",
        "UUID becomes its string"
    );
    rust.stop().await;
}

#[tokio::test]
async fn item09_a_2x_message_without_meta_is_rpc_capable_and_answered_only_with_reply_to() {
    let rust = Rust::start(RS).await;
    let (_c, ch) = channel().await;
    let (rq, mut replies) = common::temp_queue(&ch, None).await;
    let send = |m: String, reply_to: Option<String>| {
        let ch = ch.clone();
        async move {
            let id = uuid::Uuid::new_v4().to_string();
            // tchu-tchu 2.x: the same v2 message, without `_tchu_meta`.
            let body = format!(
                r#"[["{{\"marker\": \"{m}\", \"n\": 1}}"], {{"routing_key": "interop.rpc.rs.echo"}}, {{}}]"#
            );
            let mut headers = FieldTable::default();
            headers.insert(
                "task".into(),
                AMQPValue::LongString(LongString::from("tchu_tchu.dispatch_event")),
            );
            headers.insert(
                "id".into(),
                AMQPValue::LongString(LongString::from(id.as_str())),
            );
            let mut props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_headers(headers)
                .with_correlation_id(id.as_str().into());
            if let Some(r) = reply_to {
                props = props.with_reply_to(r.as_str().into());
            }
            ch.basic_publish(
                "tchu_events".into(),
                "interop.rpc.rs.echo".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            )
            .await
            .unwrap();
            id
        }
    };
    let m = marker();
    let id = send(m.clone(), Some(rq.as_str().to_owned())).await;
    let d = tokio::time::timeout(WAIT, replies.next())
        .await
        .expect("no reply")
        .unwrap()
        .unwrap();
    assert_eq!(
        d.properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some(id.as_str())
    );
    let meta: Value = serde_json::from_slice(&d.data).unwrap();
    assert_eq!(meta["status"], "SUCCESS");
    assert_eq!(meta["task_id"], id.as_str());
    assert_eq!(
        meta["result"]["results"][0]["result"],
        json!({"echo": {"marker": m, "n": 1}})
    );
    // Without reply_to there is nobody to answer: handled, no reply. (Other tests' services are
    // bound to the same topic and answer the first request too: those surplus replies carry the
    // first request's id.)
    let second = send(marker(), None).await;
    let until = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(Ok(d))) = tokio::time::timeout_at(until, replies.next()).await {
        let cid = d
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_owned());
        assert_ne!(
            cid.as_deref(),
            Some(second.as_str()),
            "a request without reply_to was answered"
        );
        assert_eq!(cid.as_deref(), Some(id.as_str()), "unexpected reply");
    }
    rust.stop().await;
}

/// A Python caller next to a Rust observer service and a Rust responder: every call gets the
/// responder's answer (the observer's service sends no reply).
#[tokio::test]
async fn observers_python_caller_next_to_rust_observers_gets_every_answer() {
    let _py = started().await;
    let rust = Rust::start(RS).await;
    let observer = Rust::start(concat!(module_path!(), "::rswatch")).await;
    let m = marker();
    let out = pyclient(
        "call_many",
        "interop.rswatch.echo",
        json!({"marker": m, "count": 20}),
        Some(10.0),
    )
    .await;
    let answers = out["ok"].as_array().unwrap_or_else(|| panic!("{out}"));
    assert_eq!(answers.len(), 20);
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a["echo"]["n"], i, "call {i}: {a}");
    }
    // The observer saw every request.
    assert!(
        common::wait_until(WAIT, || observer.rec.find("rs.observer", &m).len() == 20).await,
        "{}",
        observer.rec.find("rs.observer", &m).len()
    );
    observer.stop().await;
    rust.stop().await;
}

/// A Rust caller next to a Python observer: the Python service answers every request it sees
/// (a `null` entry for its observer, or `no_handlers` for a `#` binding). The Rust caller takes
/// the responder's answer, whether the responder is Python (same service as the observer) or
/// Rust (another service), and times out when the observer alone sees the request.
#[tokio::test]
async fn observers_rust_caller_next_to_python_observers_gets_every_answer() {
    let py = started().await;
    let rust = Rust::start(RS).await;
    let m = marker();
    for n in 0..20 {
        let got = rust
            .client
            .call(&PyWatchedEcho {
                marker: m.clone(),
                n,
            })
            .timeout(WAIT)
            .await
            .unwrap();
        assert_eq!(got["echo"]["n"], n, "{got}");
        let got = rust
            .client
            .call(&RsPyWatched {
                marker: m.clone(),
                n,
            })
            .timeout(WAIT)
            .await
            .unwrap();
        assert_eq!(got.echo, json!({"n": n, "from": "rust"}));
        let got = rust
            .client
            .call(&RsPyHashed { n })
            .timeout(WAIT)
            .await
            .unwrap();
        assert_eq!(got.echo, json!({"n": n}));
    }
    let silent = rust
        .client
        .call(&PyWatchedSilent { marker: m.clone() })
        .timeout(Duration::from_secs(3))
        .await;
    assert!(
        matches!(silent, Err(CallError::Timeout { .. })),
        "{silent:?}"
    );
    // The Python observer saw them all: 20 + 20 + 1.
    let deadline = Instant::now() + WAIT;
    while py
        .records("py.observer")
        .iter()
        .filter(|r| r["marker"] == m.as_str())
        .count()
        < 41
    {
        assert!(
            Instant::now() < deadline,
            "the Python observer did not see every request"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its `#` observer never ran (B3): that service answered `no_handlers` instead.
    assert!(py.records("py.hash").is_empty());
    rust.stop().await;
}

/// `user` / `company` / `user_company` published by Python reach a Rust `Context`:
/// `is_authorized()` holds with all three, not with one missing or null.
#[tokio::test]
async fn python_request_context_reaches_rust_context() {
    let _py = started().await;
    let rust = Rust::start(RS).await;
    let user = json!({"id": 7, "email": "a@b.c"});
    let cases = [
        (
            json!({"user": user, "company": {"id": 42}, "user_company": {"id": 3}}),
            "rs.ctx.yes",
        ),
        (json!({"user": user, "company": {"id": 42}}), "rs.ctx.no"),
        (
            json!({"user": user, "company": null, "user_company": 3}),
            "rs.ctx.no",
        ),
    ];
    for (ctx, kind) in cases {
        let m = marker();
        let mut data = ctx.clone();
        data["marker"] = json!(m);
        let out = pyclient("publish", "interop.rs.ctx", data, None).await;
        assert_eq!(out, json!({"ok": null}), "{out}");
        let (payload, _, _) = rust
            .rec
            .wait(kind, &m, WAIT)
            .await
            .unwrap_or_else(|| panic!("{ctx} did not arrive as {kind}"));
        assert_eq!(payload["user"], ctx["user"]);
    }
    rust.stop().await;
}
