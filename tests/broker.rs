//! End-to-end tests of services on a real RabbitMQ: fan-out across services, wildcards, a burst,
//! unroutable publishes, malformed input, failing and panicking handlers.
#![cfg(feature = "service")]
#![allow(
    clippy::too_many_lines,
    reason = "a scenario test reads top to bottom, one step after the other"
)]

mod common;

use common::{channel, delete_queues, drain, drain_at_least, header, unique, wait_until};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tchu::prelude::*;

/// What the handlers of one test saw: per handler, the sequence numbers handled (with repeats).
#[derive(Debug, Default)]
pub struct Seen(Mutex<HashMap<&'static str, Vec<u64>>>);

impl Seen {
    /// Records that `handler` handled `seq`.
    pub fn hit(&self, handler: &'static str, seq: u64) {
        self.0.lock().unwrap().entry(handler).or_default().push(seq);
    }
    /// How many times `handler` ran.
    pub fn count(&self, handler: &str) -> usize {
        self.0.lock().unwrap().get(handler).map_or(0, Vec::len)
    }
    /// The distinct sequence numbers `handler` saw.
    pub fn distinct(&self, handler: &str) -> BTreeSet<u64> {
        self.0
            .lock()
            .unwrap()
            .get(handler)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default()
    }
}

fn seq_of(msg: &Message) -> u64 {
    msg.payload()["seq"].as_u64().unwrap_or(u64::MAX)
}

async fn client() -> tchu::Client {
    tchu::Client::connect(&common::broker_url())
        .await
        .expect("RabbitMQ must be running (see README)")
}

mod fanout {
    use super::*;

    #[tchu::event(topic = "it.fanout.placed")]
    pub struct Placed {
        pub seq: u64,
    }

    pub mod svc_a {
        use super::*;
        #[tchu::subscribe]
        async fn typed(p: Placed, seen: State<Seen>) {
            seen.hit("a.typed", p.seq);
        }
        #[tchu::subscribe("it.fanout.*")]
        async fn star(msg: Message, seen: State<Seen>) {
            seen.hit("a.star", seq_of(&msg));
        }
    }

    pub mod svc_b {
        use super::*;
        #[tchu::subscribe("it.fanout.#")]
        async fn hash(msg: Message, key: RoutingKey, seen: State<Seen>) {
            assert_eq!(&*key, "it.fanout.placed");
            seen.hit("b.hash", seq_of(&msg));
        }
        #[tchu::subscribe("it.#.placed")]
        async fn typed_pattern(p: Placed, seen: State<Seen>) {
            seen.hit("b.typed_pattern", p.seq);
        }
    }
}

#[tokio::test]
async fn one_publish_reaches_two_services_and_each_handler_runs_once() {
    let client = client().await;
    let (qa, qb) = (unique("it_fanout_a"), unique("it_fanout_b"));
    let seen = Arc::new(Seen::default());
    let a = tchu::Service::new(&qa)
        .handlers_in(concat!(module_path!(), "::fanout::svc_a"))
        .state_arc(seen.clone())
        .start(&client)
        .await
        .unwrap();
    let b = tchu::Service::new(&qb)
        .handlers_in(concat!(module_path!(), "::fanout::svc_b"))
        .state_arc(seen.clone())
        .start(&client)
        .await
        .unwrap();
    assert_eq!(
        a.bindings(),
        [qa.as_str(), "it.fanout.*", "it.fanout.placed"]
    );
    assert_eq!(b.bindings(), [qb.as_str(), "it.fanout.#", "it.#.placed"]);

    client.publish(&fanout::Placed { seq: 7 }).await.unwrap();
    let handlers = ["a.typed", "a.star", "b.hash", "b.typed_pattern"];
    assert!(
        wait_until(Duration::from_secs(10), || handlers
            .iter()
            .all(|h| seen.count(h) >= 1))
        .await
    );
    // Give any duplicate time to show up before asserting "exactly once".
    tokio::time::sleep(Duration::from_millis(300)).await;
    for h in handlers {
        assert_eq!(seen.distinct(h), BTreeSet::from([7]), "{h}");
        assert_eq!(seen.count(h), 1, "{h} ran more than once");
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    let (_c, ch) = channel().await;
    delete_queues(&ch, &[&qa, &format!("{qa}.dlq"), &qb, &format!("{qb}.dlq")]).await;
}

mod burst {
    use super::*;

    #[tchu::event(topic = "it.burst.tick")]
    pub struct Tick {
        pub seq: u64,
    }

    pub mod svc_x {
        use super::*;
        #[tchu::subscribe]
        async fn typed(t: Tick, seen: State<Seen>) {
            seen.hit("x.typed", t.seq);
        }
    }

    pub mod svc_y {
        use super::*;
        #[tchu::subscribe("it.burst.*")]
        async fn star(msg: Message, seen: State<Seen>) {
            seen.hit("y.star", seq_of(&msg));
        }
    }
}

#[tokio::test]
async fn a_burst_of_1000_events_arrives_complete_at_both_services() {
    const N: u64 = 1000;
    let client = client().await;
    let (qx, qy) = (unique("it_burst_x"), unique("it_burst_y"));
    let seen = Arc::new(Seen::default());
    let x = tchu::Service::new(&qx)
        .handlers_in(concat!(module_path!(), "::burst::svc_x"))
        .state_arc(seen.clone())
        .prefetch(64)
        .start(&client)
        .await
        .unwrap();
    let y = tchu::Service::new(&qy)
        .handlers_in(concat!(module_path!(), "::burst::svc_y"))
        .state_arc(seen.clone())
        .start(&client)
        .await
        .unwrap();

    // Publish concurrently, 100 confirms in flight at a time.
    let mut set = tokio::task::JoinSet::new();
    for chunk in 0..N / 100 {
        let client = client.clone();
        set.spawn(async move {
            for seq in chunk * 100..(chunk + 1) * 100 {
                client.publish(&burst::Tick { seq }).await.unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let all: BTreeSet<u64> = (0..N).collect();
    assert!(
        wait_until(Duration::from_secs(60), || seen.distinct("x.typed").len()
            == N as usize
            && seen.distinct("y.star").len() == N as usize)
        .await,
        "x got {}, y got {}",
        seen.distinct("x.typed").len(),
        seen.distinct("y.star").len()
    );
    assert_eq!(seen.distinct("x.typed"), all);
    assert_eq!(seen.distinct("y.star"), all);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(seen.count("x.typed"), N as usize, "duplicates at x");
    assert_eq!(seen.count("y.star"), N as usize, "duplicates at y");
    x.shutdown().await.unwrap();
    y.shutdown().await.unwrap();
    let (_c, ch) = channel().await;
    delete_queues(&ch, &[&qx, &format!("{qx}.dlq"), &qy, &format!("{qy}.dlq")]).await;
}

#[tchu::event(topic = "it.unroutable.nobody")]
struct NobodyListens {
    n: u32,
}

#[tokio::test]
async fn an_unroutable_publish_returns_a_distinct_error() {
    let client = client().await;
    let err = client.publish(&NobodyListens { n: 1 }).await.unwrap_err();
    assert!(
        matches!(&err, tchu::Error::Unroutable { topic } if topic == "it.unroutable.nobody"),
        "{err:?}"
    );
    assert!(err.to_string().contains("no queue is bound"), "{err}");
    let topic = unique("it.unroutable");
    let err = client
        .publish_raw(&topic, &serde_json::json!({"a": 1}))
        .await
        .unwrap_err();
    assert!(matches!(err, tchu::Error::Unroutable { .. }), "{err:?}");
    let err = client
        .publish_raw("bad..topic", &serde_json::json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, tchu::Error::Topic(_)), "{err:?}");
}

#[tokio::test]
async fn a_nacked_publish_is_tried_again_until_the_broker_takes_it_or_the_deadline() {
    let topic = unique("it.nack");
    let client = tchu::Client::builder()
        .url(common::broker_url())
        .publish_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let (_conn, ch) = channel().await;
    let queue = common::reject_publish_queue(&ch, &topic).await;
    client
        .publish_raw(&topic, &serde_json::json!({"n": 1}))
        .await
        .unwrap();
    // The queue is full: the broker nacks until room is made, 1 s later.
    let started = std::time::Instant::now();
    let drain_later = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        drain(&ch, &queue).await.len()
    };
    let two = serde_json::json!({"n": 2});
    let (second, drained) = tokio::join!(client.publish_raw(&topic, &two), drain_later);
    second.unwrap();
    assert_eq!(drained, 1);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(drain(&ch, &queue).await.len(), 1, "the second one is there");
    // Still full at the deadline: a clear error, after the deadline and not before.
    let started = std::time::Instant::now();
    client
        .publish_raw(&topic, &serde_json::json!({"n": 3}))
        .await
        .unwrap();
    let err = client
        .publish_raw(&topic, &serde_json::json!({"n": 4}))
        .await
        .unwrap_err();
    assert!(matches!(err, tchu::Error::Nacked { .. }), "{err:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    delete_queues(&ch, &[&queue]).await;
}

mod bad {
    use super::*;

    #[tchu::event(topic = "it.bad.strict")]
    pub struct Strict {
        pub seq: u64,
        pub name: String,
    }

    pub mod svc {
        use super::*;
        #[tchu::subscribe]
        async fn strict(s: Strict, seen: State<Seen>) {
            assert!(!s.name.is_empty());
            seen.hit("strict", s.seq);
        }
    }
}

fn v2_headers(task: &str) -> FieldTable {
    let mut h = FieldTable::default();
    h.insert("task".into(), AMQPValue::LongString(LongString::from(task)));
    h.insert(
        "id".into(),
        AMQPValue::LongString(LongString::from(uuid::Uuid::new_v4().to_string())),
    );
    h
}

#[tokio::test]
async fn malformed_input_is_dead_lettered_with_a_reason_and_the_consumer_keeps_going() {
    let client = client().await;
    let q = unique("it_bad");
    let dlq = format!("{q}.dlq");
    let seen = Arc::new(Seen::default());
    let svc = tchu::Service::new(&q)
        .handlers_in(concat!(module_path!(), "::bad::svc"))
        .state_arc(seen.clone())
        .start(&client)
        .await
        .unwrap();
    let (_c, ch) = channel().await;
    let publish = |body: Vec<u8>, headers: Option<FieldTable>| {
        let ch = ch.clone();
        async move {
            let mut props = BasicProperties::default().with_content_type("application/json".into());
            if let Some(h) = headers {
                props = props.with_headers(h);
            }
            ch.basic_publish(
                "tchu_events".into(),
                "it.bad.strict".into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    };
    // 1. Not JSON at all.
    publish(b"\x00\x01 definitely not json".to_vec(), None).await;
    // 2. A Celery v2 body with 2 elements: the message that crash-loops a Celery worker (B11).
    publish(
        br#"[["{\"seq\": 1}"], {"routing_key": "it.bad.strict"}]"#.to_vec(),
        Some(v2_headers("tchu_tchu.dispatch_event")),
    )
    .await;
    // 3. Well-formed, but the payload does not fit the event type.
    publish(
        br#"[["{\"seq\": \"not a number\", \"_tchu_meta\": {\"is_rpc\": false}}"], {"routing_key": "it.bad.strict"}, {}]"#.to_vec(),
        Some(v2_headers("tchu_tchu.dispatch_event")),
    )
    .await;
    // 4. A Celery task that is not tchu's: ignored, not dead-lettered.
    publish(
        br#"[[{"x": 1}], {}, {}]"#.to_vec(),
        Some(v2_headers("tchu_tchu.handler.someone.else")),
    )
    .await;
    // 5. A good event after all that: still consumed.
    client
        .publish(&bad::Strict {
            seq: 5,
            name: "ok".into(),
        })
        .await
        .unwrap();

    assert!(
        wait_until(Duration::from_secs(10), || seen.count("strict") == 1).await,
        "consumer stopped"
    );
    let mut parked = drain_at_least(&ch, &dlq, 3, Duration::from_secs(10)).await;
    assert!(
        parked.len() >= 3,
        "expected 3 dead letters, got {}",
        parked.len()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    parked.extend(drain(&ch, &dlq).await);
    assert_eq!(
        parked.len(),
        3,
        "the foreign Celery task must not be dead-lettered"
    );
    let kinds: Vec<Option<String>> = parked
        .iter()
        .map(|m| header(m, "x-tchu-error-kind"))
        .collect();
    assert_eq!(
        kinds,
        [
            Some("undecodable".into()),
            Some("undecodable".into()),
            Some("rejected".into())
        ]
    );
    assert!(
        header(&parked[0], "x-tchu-error")
            .unwrap()
            .contains("not valid JSON")
    );
    assert!(
        header(&parked[1], "x-tchu-error")
            .unwrap()
            .contains("3-element array")
    );
    let shape = header(&parked[2], "x-tchu-error").unwrap();
    assert!(
        shape.contains("does not match") && shape.contains("Strict"),
        "{shape}"
    );
    assert_eq!(
        header(&parked[2], "x-tchu-handler").as_deref(),
        Some("broker::bad::svc::strict")
    );
    assert_eq!(
        header(&parked[0], "x-tchu-queue").as_deref(),
        Some(q.as_str())
    );
    assert!(
        header(&parked[0], "x-tchu-failed-at")
            .unwrap()
            .ends_with('Z')
    );
    // The original bytes are kept, for inspection or replay.
    assert_eq!(parked[0].delivery.data, b"\x00\x01 definitely not json");
    // Nothing was requeued: the service queue is empty.
    let state = ch
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(state.message_count(), 0);
    svc.shutdown().await.unwrap();
    delete_queues(&ch, &[&q, &dlq]).await;
}

mod iso {
    use super::*;

    #[tchu::event(topic = "it.iso.job")]
    pub struct Job {
        pub seq: u64,
    }

    pub mod svc {
        use super::*;
        #[tchu::subscribe]
        async fn ok(j: Job, seen: State<Seen>) {
            seen.hit("ok", j.seq);
        }
        #[tchu::subscribe(name = "iso.failing")]
        async fn failing(j: Job, seen: State<Seen>) -> Result<(), String> {
            seen.hit("failing", j.seq);
            Err(format!("job {} failed on purpose", j.seq))
        }
        #[tchu::subscribe(name = "iso.panicking")]
        async fn panicking(j: Job, seen: State<Seen>) {
            seen.hit("panicking", j.seq);
            panic!("job {} panicked on purpose", j.seq);
        }
    }
}

#[tokio::test]
async fn a_failing_handler_does_not_stop_the_others_and_a_replay_reruns_only_it() {
    let client = client().await;
    let q = unique("it_iso");
    let dlq = format!("{q}.dlq");
    let seen = Arc::new(Seen::default());
    let svc = tchu::Service::new(&q)
        .handlers_in(concat!(module_path!(), "::iso::svc"))
        .state_arc(seen.clone())
        .start(&client)
        .await
        .unwrap();
    client.publish(&iso::Job { seq: 1 }).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || ["ok", "failing", "panicking"]
            .iter()
            .all(|h| seen.count(h) == 1))
        .await
    );

    let (_c, ch) = channel().await;
    let mut parked = drain_at_least(&ch, &dlq, 2, Duration::from_secs(10)).await;
    assert_eq!(parked.len(), 2);
    parked.sort_by_key(|m| header(m, "x-tchu-handler"));
    assert_eq!(
        header(&parked[0], "x-tchu-handler").as_deref(),
        Some("iso.failing")
    );
    assert_eq!(
        header(&parked[0], "x-tchu-error-kind").as_deref(),
        Some("failed")
    );
    assert_eq!(
        header(&parked[0], "x-tchu-error").as_deref(),
        Some("job 1 failed on purpose")
    );
    assert_eq!(
        header(&parked[1], "x-tchu-handler").as_deref(),
        Some("iso.panicking")
    );
    assert_eq!(
        header(&parked[1], "x-tchu-error-kind").as_deref(),
        Some("panicked")
    );
    assert!(
        header(&parked[1], "x-tchu-error")
            .unwrap()
            .contains("job 1 panicked on purpose")
    );

    // Replay the failed handler's copy into the service queue: only that handler runs again.
    let m = &parked[0];
    ch.basic_publish(
        "".into(),
        q.as_str().into(),
        BasicPublishOptions::default(),
        &m.delivery.data,
        m.delivery.properties.clone(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || seen.count("failing") == 2).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        (seen.count("ok"), seen.count("panicking")),
        (1, 1),
        "a replay must not re-run handlers that succeeded"
    );

    // The consumer survived the panic: a new event is handled by all three again.
    client.publish(&iso::Job { seq: 2 }).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || seen.count("ok") == 2
            && seen.count("panicking") == 2)
        .await
    );
    svc.shutdown().await.unwrap();
    delete_queues(&ch, &[&q, &dlq]).await;
}

/// lapin does not keep the broker's `server_properties`; tchu reads the version itself, so
/// that what depends on the broker's version can know it.
#[tokio::test]
async fn the_broker_version_is_read_from_connection_start() {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "version"])
        .output()
        .unwrap();
    let want = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let url = tchu::BrokerUrl::parse(&common::broker_url()).unwrap();
    let info = tchu::broker_info(&url).await.expect("the broker answers");
    assert_eq!(info.product, "RabbitMQ");
    assert_eq!(info.version, want);
    let closed = tchu::BrokerUrl::parse("amqp://guest:guest@127.0.0.1:1/%2f").unwrap();
    assert_eq!(tchu::broker_info(&closed).await, None);
}

mod celery_headers {
    use super::*;

    /// The headers each handler saw, by handler.
    #[derive(Default)]
    pub struct SeenHeaders(
        pub Mutex<Vec<(&'static str, serde_json::Map<String, serde_json::Value>)>>,
    );

    #[tchu::subscribe("it.celery.headers")]
    async fn reads(m: Message, seen: State<SeenHeaders>) {
        let seen: &SeenHeaders = &seen;
        seen.0
            .lock()
            .unwrap()
            .push(("message", m.headers().clone()));
    }

    #[tchu::subscribe("it.celery.headers")]
    async fn extracts(h: tchu::Headers, seen: State<SeenHeaders>) {
        let seen: &SeenHeaders = &seen;
        seen.0.lock().unwrap().push(("extractor", h.0.clone()));
    }

    #[tchu::subscribe("it.celery.headers", retry(max_attempts = 1))]
    async fn fails(_m: Message) -> Result<(), std::io::Error> {
        Err(std::io::Error::other("parked on purpose"))
    }
}

/// tchu-tchu's Celery headers, which tchu reads in a typed form: handlers (`Message::headers`,
/// the `Headers` extractor) and dead letters still get every one of them, exactly as sent,
/// from a Python publisher (its origin and integer types) and from tchu.
#[tokio::test]
async fn handlers_and_dead_letters_keep_every_celery_header() {
    let queue = unique("it_celery_headers");
    let client = client().await;
    let seen = Arc::new(celery_headers::SeenHeaders::default());
    let svc = tchu::Service::new(&queue)
        .handlers_in(concat!(module_path!(), "::celery_headers"))
        .state_arc(seen.clone())
        .start(&client)
        .await
        .unwrap();
    let (_c, ch) = channel().await;
    // As tchu-tchu 3.0.4's TchuClient sends it (tests/fixtures/v2_publish.json).
    let python = serde_json::json!({"lang":"py","task":"tchu_tchu.dispatch_event","id":"py-1",
        "shadow":null,"eta":null,"expires":null,"group":null,"group_index":null,"retries":0,
        "timelimit":[null,null],"root_id":"py-1","parent_id":null,"argsrepr":"['{}']",
        "kwargsrepr":"{'routing_key': 'it.celery.headers'}","origin":"gen9319@vm",
        "ignore_result":null,"replaced_task_nesting":0,"stamped_headers":null,"stamps":{}});
    let mut table = FieldTable::default();
    for (k, v) in python.as_object().unwrap() {
        let v = match v {
            serde_json::Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            serde_json::Value::Number(_) => AMQPValue::LongInt(0),
            serde_json::Value::Array(_) => {
                AMQPValue::FieldArray(vec![AMQPValue::Void, AMQPValue::Void].into())
            }
            serde_json::Value::Object(_) => AMQPValue::FieldTable(FieldTable::default()),
            _ => AMQPValue::Void,
        };
        table.insert(k.as_str().into(), v);
    }
    let body = r#"[["{\"seq\": 1, \"_tchu_meta\": {\"is_rpc\": false}}"], {"routing_key": "it.celery.headers"}, {}]"#;
    ch.basic_publish(
        "tchu_events".into(),
        "it.celery.headers".into(),
        BasicPublishOptions::default(),
        body.as_bytes(),
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(table.clone()),
    )
    .await
    .unwrap();
    let ours = client
        .publish_raw("it.celery.headers", &serde_json::json!({"seq": 2}))
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || seen.0.lock().unwrap().len()
            == 4)
        .await
    );
    let parked = drain_at_least(&ch, &format!("{queue}.dlq"), 2, Duration::from_secs(20)).await;
    assert_eq!(parked.len(), 2);
    for (who, headers) in seen.0.lock().unwrap().iter() {
        let from_python = headers["id"] == "py-1";
        if from_python {
            for (k, v) in python.as_object().unwrap() {
                assert_eq!(&headers[k], v, "{who}: {k}");
            }
        } else {
            assert_eq!(headers["id"], ours.as_str(), "{who}");
            assert_eq!(headers["root_id"], ours.as_str(), "{who}");
            assert!(headers["origin"].as_str().unwrap().contains('@'), "{who}");
            assert_eq!(headers["task"], "tchu_tchu.dispatch_event", "{who}");
        }
        assert!(headers.contains_key("traceparent") != from_python, "{who}");
    }
    for d in &parked {
        let kept = d.properties.headers().as_ref().unwrap().inner();
        for name in tchu::wire::CELERY_HEADERS {
            assert!(kept.contains_key(name), "the dead letter lost {name}");
        }
        if kept.get("id") == Some(&AMQPValue::LongString(LongString::from("py-1"))) {
            assert_eq!(
                kept.get("origin"),
                Some(&AMQPValue::LongString(LongString::from("gen9319@vm")))
            );
        }
    }
    svc.shutdown().await.unwrap();
    delete_queues(&ch, &[&queue, &format!("{queue}.dlq")]).await;
}
