//! What a service declares on the broker for itself: its queues and bindings.

use super::super::EXCHANGE;
use serde_json::{Map, Value, json};
use std::fmt;
use tchu_core::delay::level_name;

/// The queues and bindings one service needs.
#[derive(Debug, Clone)]
pub(crate) struct Topology {
    pub queue: String,
    pub dead_letter_queue: String,
    /// Where a redelivered message waits to run alone (see `service::quarantine`): always a
    /// quorum queue, whose broker counts how often a message came back.
    pub quarantine_queue: String,
    /// Binding keys on [`EXCHANGE`], the queue's own name first (as Celery binds it).
    pub bindings: Vec<String>,
    /// Retry delay tiers: `(queue name, TTL in ms)`, each dead-lettering back to `queue`.
    pub delay_queues: Vec<(String, u64)>,
    /// Quorum queues (replicated on a cluster) instead of classic ones.
    pub quorum: bool,
    /// Where the messages of ordered handlers arrive, when the service has any.
    pub ordered: Option<OrderedQueue>,
}

/// The queue of a service's ordered handlers (`ordered(key = ...)`): a quorum queue with a
/// single active consumer, so one replica at a time takes its messages, in queue order, and the
/// next takes over (with what was unacknowledged, in order) when it goes.
#[derive(Debug, Clone)]
pub(crate) struct OrderedQueue {
    /// `<queue>.ordered`.
    pub name: String,
    /// The ordered handlers' patterns, bound on [`EXCHANGE`].
    pub bindings: Vec<String>,
}

/// What a queue of the topology is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueRole {
    /// The service's own queue.
    Service,
    /// Where failed and undecodable messages are parked.
    DeadLetter,
    /// Where redelivered messages wait to run one at a time.
    Quarantine,
    /// Where the messages of ordered handlers arrive: one active consumer at a time.
    Ordered,
    /// A retry delay tier holding messages for `ttl_ms`.
    Delay {
        /// How long a message waits in it.
        ttl_ms: u64,
    },
}

/// One queue as the service declares it.
#[derive(Debug, Clone)]
pub(crate) struct QueueSpec {
    pub name: String,
    pub role: QueueRole,
    /// `quorum` or `classic`.
    pub kind: &'static str,
    pub arguments: Map<String, Value>,
}

impl QueueSpec {
    /// The queue as `topology --json` shows it.
    pub(crate) fn to_json(&self) -> Value {
        let mut q = json!({
            "name": self.name,
            "type": self.kind,
            "durable": true,
            "arguments": Value::Object(self.arguments.clone()),
        });
        if let QueueRole::Delay { ttl_ms } = self.role {
            q["ttl_ms"] = json!(ttl_ms);
        }
        q
    }
}

/// One object of the topology, as `check --fix` declares it and reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TopologyPart {
    /// The `tchu_events` exchange.
    Exchange,
    /// A queue, by name.
    Queue(String),
    /// A binding of the service queue, by key.
    Binding(String),
    /// A level of the shared delay route (its exchange, queue and bindings), by number.
    DelayLevel(u32),
}

impl fmt::Display for TopologyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exchange => write!(f, "exchange `{EXCHANGE}`"),
            Self::Queue(name) => write!(f, "queue `{name}`"),
            Self::Binding(key) => write!(f, "binding `{key}`"),
            Self::DelayLevel(b) => write!(f, "delay level `{}`", level_name(*b)),
        }
    }
}

impl Topology {
    /// Every queue it declares, in declaration order: the service queue, its dead-letter
    /// queue, its quarantine, the delay tiers.
    pub(crate) fn queues(&self) -> Vec<QueueSpec> {
        let mut v = vec![
            self.queue_spec(&self.queue),
            self.queue_spec(&self.dead_letter_queue),
            self.queue_spec(&self.quarantine_queue),
        ];
        v.extend(self.ordered.iter().map(|o| self.queue_spec(&o.name)));
        v.extend(self.delay_queues.iter().map(|(n, _)| self.queue_spec(n)));
        v
    }

    /// The queue `name` of this topology (a name it does not declare gets no arguments).
    pub(crate) fn queue_spec(&self, name: &str) -> QueueSpec {
        let role = match self.delay_queues.iter().find(|(n, _)| n == name) {
            Some((_, ttl)) => QueueRole::Delay { ttl_ms: *ttl },
            None if name == self.dead_letter_queue => QueueRole::DeadLetter,
            None if name == self.quarantine_queue => QueueRole::Quarantine,
            None if self.ordered.as_ref().is_some_and(|o| o.name == name) => QueueRole::Ordered,
            None => QueueRole::Service,
        };
        let quorum = self.quorum || matches!(role, QueueRole::Quarantine | QueueRole::Ordered);
        QueueSpec {
            name: name.to_owned(),
            role,
            kind: if quorum { "quorum" } else { "classic" },
            arguments: self.arguments(role),
        }
    }

    /// The arguments a queue of `role` is declared with.
    ///
    /// Classic service and dead-letter queues have none (tchu-tchu's shape, so a Python process
    /// re-declaring them never meets a 406). Delay tiers are TTL queues dead-lettering back to
    /// the service queue (no plugin, RabbitMQ 3.x and 4.x alike; one TTL per queue keeps expiry
    /// in FIFO order). Quorum queues add their type, and the service queue dead-letters into
    /// `<queue>.dlq`: RabbitMQ 4.x gives quorum queues a delivery limit (20 by default) and
    /// drops what passes it unless the queue has a dead-letter target. Quorum dead-lettering is
    /// at-least-once (`x-dead-letter-strategy`, which needs `x-overflow: reject-publish`): the
    /// default, at-most-once, can lose a retry copy when its target is unavailable.
    /// The quarantine is a quorum queue whatever the others are (the broker's count of
    /// returns is the crash count), dead-lettering into `<queue>.dlq` like a quorum service
    /// queue, so that RabbitMQ 4.x's default delivery limit never drops a message there.
    /// The ordered queue is a quorum queue too (its broker counts returns, and redelivers what
    /// a replica left unacknowledged to the next one in the original order), with a single
    /// active consumer, dead-lettering into `<queue>.dlq` likewise.
    fn arguments(&self, role: QueueRole) -> Map<String, Value> {
        let mut args = Map::new();
        let quorum = self.quorum || matches!(role, QueueRole::Quarantine | QueueRole::Ordered);
        if quorum {
            args.insert("x-queue-type".into(), json!("quorum"));
        }
        if role == QueueRole::Ordered {
            args.insert("x-single-active-consumer".into(), json!(true));
        }
        let target = match role {
            QueueRole::Delay { ttl_ms } => {
                args.insert("x-message-ttl".into(), json!(ttl_ms));
                Some(&self.queue)
            }
            QueueRole::Service if self.quorum => Some(&self.dead_letter_queue),
            QueueRole::Quarantine | QueueRole::Ordered => Some(&self.dead_letter_queue),
            _ => None,
        };
        if let Some(target) = target {
            args.insert("x-dead-letter-exchange".into(), json!(""));
            args.insert("x-dead-letter-routing-key".into(), json!(target));
            if quorum {
                args.insert("x-dead-letter-strategy".into(), json!("at-least-once"));
                args.insert("x-overflow".into(), json!("reject-publish"));
            }
        }
        args
    }
}
