//! What tchu declares on the broker: the one description that declaring, `topology` and
//! `check` all read. Here the objects every client and service of a vhost share (the
//! `tchu_events` exchange and the delay route); a service's own queues and bindings are in
//! [`service`].

#[cfg(feature = "service")]
mod service;

#[cfg(feature = "service")]
pub(crate) use service::{OrderedQueue, QueueRole, QueueSpec, Topology, TopologyPart};

use super::EXCHANGE;
use serde_json::{Map, Value, json};
use tchu_core::delay::{LEVELS, level_name, level_ttl_ms};

/// The kind of an exchange tchu declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExchangeKind {
    Topic,
    Headers,
}

impl ExchangeKind {
    /// As AMQP and the management API name it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Topic => "topic",
            Self::Headers => "headers",
        }
    }
}

/// An exchange as tchu declares it: durable, no arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExchangeSpec {
    pub name: String,
    pub kind: ExchangeKind,
}

impl ExchangeSpec {
    /// As `topology --json` shows it.
    #[cfg_attr(
        not(feature = "service"),
        allow(dead_code, reason = "read by `topology`")
    )]
    pub(crate) fn to_json(&self) -> Value {
        json!({ "name": self.name, "type": self.kind.as_str(), "durable": true })
    }
}

/// `tchu_events`, exactly as tchu-tchu declares it (topic, durable, no arguments): any
/// difference makes the broker answer 406 to whichever side declares second.
pub(crate) fn events_exchange() -> ExchangeSpec {
    ExchangeSpec {
        name: EXCHANGE.to_owned(),
        kind: ExchangeKind::Topic,
    }
}

/// One level of the delay route (see [`tchu_core::delay`]): a headers exchange and a TTL
/// queue of the same name. A message whose level header is `1` waits in the queue for
/// `ttl_ms`, then dead-letters to `next`; one whose header is `0` passes on to `next` at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DelayLevel {
    pub level: u32,
    pub name: String,
    pub ttl_ms: u64,
    /// The exchange after this level: the level below, or `tchu_events` after level 0.
    pub next: String,
}

impl DelayLevel {
    pub(crate) fn exchange(&self) -> ExchangeSpec {
        ExchangeSpec {
            name: self.name.clone(),
            kind: ExchangeKind::Headers,
        }
    }

    /// The arguments of the level's queue.
    pub(crate) fn queue_arguments(&self) -> Map<String, Value> {
        let mut args = Map::new();
        args.insert("x-message-ttl".into(), json!(self.ttl_ms));
        args.insert("x-dead-letter-exchange".into(), json!(self.next));
        args
    }

    /// As `topology --json` shows it.
    #[cfg_attr(
        not(feature = "service"),
        allow(dead_code, reason = "read by `topology`")
    )]
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "level": self.level,
            "exchange": self.exchange().to_json(),
            "queue": {
                "name": self.name,
                "type": "classic",
                "durable": true,
                "arguments": Value::Object(self.queue_arguments()),
            },
            "ttl_ms": self.ttl_ms,
            "next": self.next,
        })
    }
}

/// Every level of the delay route, shared by every client and service of the vhost and
/// declared by a client's first delayed publish.
pub(crate) fn delay_route() -> Vec<DelayLevel> {
    (0..LEVELS)
        .map(|b| DelayLevel {
            level: b,
            name: level_name(b),
            ttl_ms: level_ttl_ms(b),
            next: if b == 0 {
                EXCHANGE.to_owned()
            } else {
                level_name(b - 1)
            },
        })
        .collect()
}
