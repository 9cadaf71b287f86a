//! The topic grammar and the AMQP matcher, checked against tables and against RabbitMQ's own
//! routing for the same keys and patterns.
#![cfg(feature = "service")]
#![allow(
    clippy::too_many_lines,
    reason = "a scenario test reads top to bottom, one step after the other"
)]

mod common;

use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use std::collections::BTreeSet;
use std::time::Duration;
use tchu::topic::{validate_pattern, validate_topic};
use tchu::{TopicErrorKind, pattern_matches};

#[test]
fn valid_topics_and_patterns() {
    for t in [
        "a",
        "user.created",
        "rpc.payments.process",
        "a-b_c.D9",
        "x:y/z@w",
        &"a".repeat(255),
    ] {
        assert!(validate_topic(t).is_ok(), "{t}");
        assert!(validate_pattern(t).is_ok(), "{t}");
    }
    for p in [
        "*",
        "#",
        "user.*",
        "user.#",
        "#.created",
        "a.#.z",
        "*.*.b",
        "a.*.#",
    ] {
        assert!(validate_pattern(p).is_ok(), "{p}");
    }
}

#[test]
fn grammar_errors_say_where_and_why() {
    let cases: &[(&str, bool, TopicErrorKind, usize)] = &[
        ("", false, TopicErrorKind::Empty, 0),
        (".a", false, TopicErrorKind::EmptyWord, 0),
        ("a.", false, TopicErrorKind::EmptyWord, 2),
        ("user..created", false, TopicErrorKind::EmptyWord, 5),
        (
            "user created",
            false,
            TopicErrorKind::InvalidChar { byte: b' ' },
            4,
        ),
        (
            "caf\u{e9}",
            false,
            TopicErrorKind::InvalidChar { byte: 0xc3 },
            3,
        ),
        (
            "ord*",
            true,
            TopicErrorKind::PartialWildcard { wildcard: b'*' },
            3,
        ),
        (
            "a.#b",
            true,
            TopicErrorKind::PartialWildcard { wildcard: b'#' },
            2,
        ),
        (
            "user.*",
            false,
            TopicErrorKind::WildcardInTopic { wildcard: b'*' },
            5,
        ),
        (
            "#",
            false,
            TopicErrorKind::WildcardInTopic { wildcard: b'#' },
            0,
        ),
        ("#.#", true, TopicErrorKind::ConsecutiveHash, 0),
        ("a.#.#.b", true, TopicErrorKind::ConsecutiveHash, 2),
    ];
    for (s, pattern, kind, offset) in cases {
        let e = if *pattern {
            validate_pattern(s)
        } else {
            validate_topic(s)
        }
        .unwrap_err();
        assert_eq!((e.kind(), e.offset()), (*kind, *offset), "{s:?}: {e}");
    }
    let long = "a".repeat(256);
    assert_eq!(
        validate_topic(&long).unwrap_err().kind(),
        TopicErrorKind::TooLong { len: 256 }
    );
    assert_eq!(
        validate_topic("user..created").unwrap_err().to_string(),
        "empty word at byte 5 (words are separated by single dots, with none at either end)"
    );
    assert!(
        validate_topic("user.*")
            .unwrap_err()
            .to_string()
            .contains("wildcards belong in `#[tchu::subscribe]` patterns")
    );
}

#[test]
fn matcher_table() {
    let yes = [
        ("user.*", "user.created"),
        ("user.#", "user"),
        ("user.#", "user.a.b.c"),
        ("#", "anything.at.all"),
        ("#", "x"),
        ("*.b", "a.b"),
        ("a.#.z", "a.z"),
        ("a.#.z", "a.b.c.z"),
        ("#.#", "a"),
        ("#.#", "a.b.c"),
        ("*.#", "a"),
        ("#.*", "a.b"),
        ("a.*.#", "a.b"),
        ("a.*.#", "a.b.c.d"),
        ("user.created", "user.created"),
    ];
    let no = [
        ("user.*", "user.a.b"),
        ("user.*", "user"),
        ("*.b", "b"),
        ("a.#.z", "a.b.c"),
        ("a.*.#", "a"),
        ("#.*", ""),
        ("user.created", "user.created.v2"),
        ("user.created", "user.Created"),
    ];
    for (p, k) in yes {
        assert!(pattern_matches(p, k), "{p} should match {k}");
    }
    for (p, k) in no {
        assert!(!pattern_matches(p, k), "{p} should not match {k}");
    }
    // Usable in const context, as the macros use it.
    const MATCHES: bool = pattern_matches("order.#", "order.placed.eu");
    const _: () = assert!(MATCHES);
}

const PATTERNS: &[&str] = &[
    "*", "#", "a", "a.*", "a.#", "#.a", "*.a", "a.*.c", "a.#.c", "#.#", "*.*", "*.#", "#.*",
    "a.b.c", "a.*.#", "#.b.#", "*.b.*", "a.#.#.c", "b",
];
const KEYS: &[&str] = &[
    "a",
    "b",
    "a.b",
    "b.a",
    "a.a",
    "a.b.c",
    "a.c",
    "a.x.y.c",
    "x.b.y",
    "a.b.b",
    "c.b.a.b",
    "z.z.z.z.z",
];

/// Binds one queue per pattern on a private topic exchange, publishes every key, and compares
/// what RabbitMQ routed with what `pattern_matches` says, pair by pair.
#[tokio::test]
async fn matcher_agrees_with_rabbitmq_routing() {
    let (_conn, ch) = common::channel().await;
    let exchange = common::unique("tchu_test_topic");
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut queues = Vec::new();
    for p in PATTERNS {
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        ch.queue_bind(
            q.name().clone(),
            exchange.as_str().into(),
            (*p).into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        queues.push(q.name().as_str().to_owned());
    }
    for k in KEYS {
        ch.basic_publish(
            exchange.as_str().into(),
            (*k).into(),
            BasicPublishOptions::default(),
            k.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    // An end marker, sent to each queue through the default exchange after the keys on the same
    // channel: once it arrives, everything the exchange routed to that queue has arrived.
    for q in &queues {
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"__end__",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    let mut mismatches = Vec::new();
    for (p, q) in PATTERNS.iter().zip(&queues) {
        let mut consumer = ch
            .basic_consume(
                q.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut got = BTreeSet::new();
        loop {
            let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .expect("marker message did not arrive")
                .unwrap()
                .unwrap();
            if d.data == b"__end__" {
                break;
            }
            got.insert(String::from_utf8(d.data).unwrap());
        }
        let expected: BTreeSet<String> = KEYS
            .iter()
            .filter(|k| pattern_matches(p, k))
            .map(|k| k.to_string())
            .collect();
        if got != expected {
            mismatches.push(format!(
                "pattern {p:?}: broker {got:?} vs matcher {expected:?}"
            ));
        }
    }
    let _ = ch
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}
