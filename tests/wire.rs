//! Golden wire-format tests: what tchu writes must be byte-identical to what Python tchu-tchu
//! writes, and everything tchu-tchu (or a broken producer) sends must decode or fail cleanly.

use serde_json::{Value, json};
use tchu::TchuTchu;
use tchu::wire::{
    DecodeError, Decoded, EncodeError, EncodeOptions, Format, Properties, WireMessage, decode,
    encode,
};

#[tchu::event(topic = "user.created")]
struct UserCreated {
    user_id: u64,
}

#[tchu::event(topic = "wire.ordered")]
struct Ordered {
    zebra: u32,
    apple: String,
    mango: Option<bool>,
}

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/v2_publish.json")).unwrap()
}

const ID: &str = "04a1c845-5020-45d5-b503-ccfa5234a0bc";
const REPLY_TO: &str = "ddd3d739-7a1a-32ee-b47e-ba683968f242";

fn v2(payload: &impl serde::Serialize, topic: &str) -> WireMessage {
    encode(
        topic,
        payload,
        &EncodeOptions {
            format: Format::CeleryV2,
            id: ID,
            is_rpc: false,
            reply_to: Some(REPLY_TO),
            ..Default::default()
        },
    )
    .unwrap()
}

fn fixture_2x() -> Value {
    serde_json::from_str(include_str!("fixtures/v2_publish_tchu_tchu_2.json")).unwrap()
}

/// The 2.x form, as `Client::publish` asks for it: an event, with the client's reply queue.
fn v2_for_tchu_tchu_2(format: Format) -> WireMessage {
    encode(
        "user.created",
        &UserCreated { user_id: 1 },
        &EncodeOptions {
            format,
            id: ID,
            is_rpc: false,
            reply_to: Some(REPLY_TO),
            tchu_tchu: TchuTchu::V2,
        },
    )
    .unwrap()
}

#[test]
fn the_2x_form_is_byte_identical_to_tchu_tchu_2_4_0_but_for_reply_to() {
    let golden = fixture_2x();
    let msg = v2_for_tchu_tchu_2(Format::CeleryV2);
    assert_eq!(
        String::from_utf8(msg.body).unwrap(),
        golden["body"].as_str().unwrap(),
        "no `_tchu_meta`"
    );
    let golden_headers = golden["headers"].as_object().unwrap();
    assert_eq!(
        msg.headers.keys().collect::<Vec<_>>(),
        golden_headers.keys().collect::<Vec<_>>()
    );
    for (k, v) in golden_headers.iter().filter(|(k, _)| *k != "origin") {
        assert_eq!(&msg.headers[k], v, "header {k}");
    }
    // tchu-tchu 2.4.0 sets its reply queue on every publish; without `_tchu_meta` that asks
    // every 3.x (and Rust) consumer for an answer, so the 2.x form's events carry none.
    assert_eq!(msg.properties.reply_to, None);
    assert_eq!(msg.properties.correlation_id.as_deref(), Some(ID));
    let v1 = v2_for_tchu_tchu_2(Format::CeleryV1);
    assert_eq!(
        String::from_utf8(v1.body).unwrap(),
        golden["serverless_body"].as_str().unwrap(),
        "as tchu-tchu 2.4.0's ServerlessClient"
    );
}

#[test]
fn a_call_in_the_2x_form_keeps_its_reply_to_and_decodes_as_a_call() {
    let msg = encode(
        "user.created",
        &UserCreated { user_id: 1 },
        &EncodeOptions {
            id: ID,
            is_rpc: true,
            reply_to: Some(REPLY_TO),
            tchu_tchu: TchuTchu::V2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(msg.properties.reply_to.as_deref(), Some(REPLY_TO));
    assert!(!String::from_utf8_lossy(&msg.body).contains("_tchu_meta"));
    let env = event(decode(&msg).unwrap());
    assert!(env.is_rpc, "without `_tchu_meta`, a message is a call");
    assert_eq!(env.payload, json!({"user_id": 1}));
}

#[test]
fn an_event_in_the_2x_form_decodes_as_the_same_event_without_a_reply() {
    let msg = v2_for_tchu_tchu_2(Format::CeleryV2);
    let env = event(decode(&msg).unwrap());
    assert_eq!(env.payload, json!({"user_id": 1}));
    assert_eq!(env.topic, "user.created");
    assert_eq!(msg.properties.reply_to, None, "so nobody answers it");
    assert!(!env.is_rpc, "no `_tchu_meta` and no reply_to: not a call");
    let v1 = event(decode(&v2_for_tchu_tchu_2(Format::CeleryV1)).unwrap());
    assert!(!v1.is_rpc);
}

#[test]
fn v2_body_is_byte_identical_to_tchu_tchu() {
    let msg = v2(&UserCreated { user_id: 1 }, "user.created");
    let golden = fixture();
    assert_eq!(
        String::from_utf8(msg.body).unwrap(),
        golden["body"].as_str().unwrap()
    );
    assert_eq!(msg.routing_key, "user.created");
}

#[test]
fn v2_headers_match_tchu_tchu_except_origin() {
    let msg = v2(&UserCreated { user_id: 1 }, "user.created");
    let golden = fixture();
    let golden_headers = golden["headers"].as_object().unwrap();
    let keys: Vec<&String> = msg.headers.keys().collect();
    let golden_keys: Vec<&String> = golden_headers.keys().collect();
    assert_eq!(keys, golden_keys, "same header names, in Celery's order");
    for (k, v) in golden_headers {
        if k == "origin" {
            let origin = msg.headers[k].as_str().unwrap();
            assert!(
                origin.contains('@'),
                "origin is <name><pid>@<host>: {origin}"
            );
        } else {
            assert_eq!(&msg.headers[k], v, "header {k}");
        }
    }
}

#[test]
fn v2_properties_match_tchu_tchu() {
    let msg = v2(&UserCreated { user_id: 1 }, "user.created");
    assert_eq!(
        msg.properties,
        Properties {
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            delivery_mode: Some(2),
            priority: Some(0),
            correlation_id: Some(ID.into()),
            reply_to: Some(REPLY_TO.into()),
            message_id: None,
            expiration: None,
        }
    );
}

fn captured_v2() -> WireMessage {
    let g = fixture();
    WireMessage {
        routing_key: "user.created".into(),
        properties: Properties {
            content_type: Some("application/json".into()),
            correlation_id: Some(ID.into()),
            reply_to: Some(REPLY_TO.into()),
            ..Properties::default()
        },
        headers: g["headers"].as_object().unwrap().clone(),
        celery: None,
        body: g["body"].as_str().unwrap().as_bytes().to_vec(),
    }
}

fn event(d: Decoded) -> tchu::wire::Envelope {
    match d {
        Decoded::Event(e) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[test]
fn decodes_the_captured_python_publish() {
    let env = event(decode(&captured_v2()).unwrap());
    assert_eq!(env.id, ID);
    assert_eq!(env.topic, "user.created");
    assert_eq!(env.payload, json!({"user_id": 1}), "_tchu_meta is stripped");
    assert!(!env.is_rpc);
    assert_eq!(env.format, Format::CeleryV2);
    let typed: UserCreated = env.decode().unwrap();
    assert_eq!(typed.user_id, 1);
}

#[test]
fn topic_comes_from_kwargs_like_the_python_dispatcher() {
    let mut m = captured_v2();
    m.routing_key = "something.else".into();
    assert_eq!(event(decode(&m).unwrap()).topic, "user.created");
}

#[test]
fn decodes_serverless_v1() {
    // reference 2.3, as ServerlessProducer sends it: no headers, task in the body, ensure_ascii=False.
    let body = r#"{"task": "tchu_tchu.dispatch_event", "id": "6c7e", "args": ["{\"user_id\": 1, \"name\": \"Zoë\", \"_tchu_meta\": {\"is_rpc\": false}}"], "kwargs": {"routing_key": "user.created"}, "retries": 0, "eta": null, "expires": null}"#;
    let m = WireMessage {
        routing_key: "user.created".into(),
        body: body.as_bytes().to_vec(),
        ..Default::default()
    };
    let env = event(decode(&m).unwrap());
    assert_eq!(env.format, Format::CeleryV1);
    assert_eq!(env.id, "6c7e");
    assert_eq!(env.payload, json!({"user_id": 1, "name": "Zoë"}));
    assert!(!env.is_rpc);
}

#[test]
fn encodes_v1_as_the_serverless_producer_does() {
    let m = encode(
        "user.created",
        &json!({"user_id": 1, "name": "Zoë"}),
        &EncodeOptions {
            format: Format::CeleryV1,
            id: "6c7e",
            ..Default::default()
        },
    )
    .unwrap();
    assert!(m.headers.is_empty());
    assert_eq!(m.properties.reply_to, None);
    assert_eq!(
        String::from_utf8(m.body).unwrap(),
        r#"{"task": "tchu_tchu.dispatch_event", "id": "6c7e", "args": ["{\"user_id\": 1, \"name\": \"Zo\\u00eb\", \"_tchu_meta\": {\"is_rpc\": false}}"], "kwargs": {"routing_key": "user.created"}, "retries": 0, "eta": null, "expires": null}"#
    );
}

#[test]
fn python_2x_message_without_meta_counts_as_rpc() {
    let mut m = captured_v2();
    m.body = br#"[["{\"user_id\": 1}"], {"routing_key": "user.created"}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#.to_vec();
    let env = event(decode(&m).unwrap());
    assert!(env.is_rpc);
    assert_eq!(env.payload, json!({"user_id": 1}));
}

#[test]
fn args0_as_an_object_is_accepted_like_the_python_dispatcher() {
    let mut m = captured_v2();
    m.body = br#"[[{"user_id": 2, "_tchu_meta": {"is_rpc": false}}], {"routing_key": "user.created"}, {}]"#.to_vec();
    assert_eq!(event(decode(&m).unwrap()).payload, json!({"user_id": 2}));
}

#[test]
fn rpc_flag_round_trips() {
    let m = encode(
        "a.b",
        &json!({}),
        &EncodeOptions {
            is_rpc: true,
            id: ID,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        String::from_utf8_lossy(&m.body)
            .starts_with(r#"[["{\"_tchu_meta\": {\"is_rpc\": true}}"]"#)
    );
    let env = event(decode(&m).unwrap());
    assert!(env.is_rpc);
    assert_eq!(env.payload, json!({}));
}

#[test]
fn two_element_celery_body_is_a_clear_error_not_a_crash() {
    let mut m = captured_v2();
    m.body = br#"[["{\"user_id\": 1}"], {"routing_key": "user.created"}]"#.to_vec();
    let err = decode(&m).unwrap_err();
    assert!(matches!(err, DecodeError::Celery { .. }), "{err:?}");
    assert!(err.to_string().contains("3-element array"), "{err}");
    assert!(err.to_string().contains("found 2 elements"), "{err}");
}

#[test]
fn malformed_inputs_are_typed_errors() {
    let mut m = captured_v2();
    m.body = b"not json at all".to_vec();
    assert!(matches!(decode(&m), Err(DecodeError::NotJson(_))));

    m.body = br#"[["{not json"], {"routing_key": "x"}, {}]"#.to_vec();
    assert!(matches!(decode(&m), Err(DecodeError::NotJson(_))));

    m.body = br#"[["[1, 2]"], {"routing_key": "x"}, {}]"#.to_vec();
    assert!(matches!(
        decode(&m),
        Err(DecodeError::NotAnObject { found: "an array" })
    ));

    m.body = br#"[[], {"routing_key": "x"}, {}]"#.to_vec();
    assert!(matches!(decode(&m), Err(DecodeError::Celery { .. })));

    let plain = WireMessage {
        routing_key: "x".into(),
        body: b"42".to_vec(),
        ..Default::default()
    };
    assert!(matches!(
        decode(&plain),
        Err(DecodeError::NotAnObject { found: "a number" })
    ));
}

#[test]
fn other_celery_tasks_are_foreign() {
    let mut m = captured_v2();
    m.headers.insert(
        "task".into(),
        "tchu_tchu.handler.subs_a.on_user_created".into(),
    );
    assert_eq!(
        decode(&m).unwrap(),
        Decoded::ForeignTask {
            task: "tchu_tchu.handler.subs_a.on_user_created".into()
        }
    );
    let v1 = WireMessage {
        body: br#"{"task": "celery.ping", "id": "1", "args": [], "kwargs": {}}"#.to_vec(),
        ..Default::default()
    };
    assert_eq!(
        decode(&v1).unwrap(),
        Decoded::ForeignTask {
            task: "celery.ping".into()
        }
    );
}

#[test]
fn field_order_and_non_ascii_follow_python() {
    let m = v2(
        &Ordered {
            zebra: 1,
            apple: "Zoë 😀".into(),
            mango: None,
        },
        "wire.ordered",
    );
    let body = String::from_utf8(m.body).unwrap();
    let expected_inner = r#"{\"zebra\": 1, \"apple\": \"Zo\\u00eb \\ud83d\\ude00\", \"mango\": null, \"_tchu_meta\": {\"is_rpc\": false}}"#;
    assert!(
        body.starts_with(&format!(r#"[["{expected_inner}"]"#)),
        "{body}"
    );
    let back: Ordered = event(
        decode(&WireMessage {
            body: body.into_bytes(),
            headers: m.headers,
            ..Default::default()
        })
        .unwrap(),
    )
    .decode()
    .unwrap();
    assert_eq!(back.apple, "Zoë 😀");
}

#[test]
fn native_format_round_trips() {
    let m = encode(
        "user.created",
        &UserCreated { user_id: 9 },
        &EncodeOptions {
            format: Format::Native,
            id: "n1",
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        m.properties.content_type.as_deref(),
        Some("application/vnd.tchu+json")
    );
    assert_eq!(m.body, br#"{"user_id":9}"#);
    let env = event(decode(&m).unwrap());
    assert_eq!(
        (env.format, env.id.as_str(), env.is_rpc),
        (Format::Native, "n1", false)
    );
    assert_eq!(env.payload, json!({"user_id": 9}));
}

#[test]
fn payloads_that_are_not_objects_are_refused() {
    let opts = EncodeOptions {
        id: ID,
        ..Default::default()
    };
    assert!(matches!(
        encode("a.b", &json!([1, 2]), &opts),
        Err(EncodeError::NotAnObject { found: "an array" })
    ));
    assert!(matches!(
        encode("a.b", &json!({"_tchu_meta": 1}), &opts),
        Err(EncodeError::ReservedKey)
    ));
    let native = EncodeOptions {
        format: Format::Native,
        ..opts
    };
    assert!(matches!(
        encode("a.b", &json!("s"), &native),
        Err(EncodeError::NotAnObject { found: "a string" })
    ));
}

#[test]
fn event_schema_is_generated() {
    let schema = <UserCreated as tchu::Event>::json_schema();
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["properties"]["user_id"]["type"], "integer");
    assert_eq!(schema["required"], json!(["user_id"]));
}
