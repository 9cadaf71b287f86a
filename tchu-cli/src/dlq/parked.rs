//! A parked message and reading the queue without consuming it.

use super::{PROGRESS_EVERY, null_if_empty};
use crate::broker::{self, HANDLER_HEADER, ORIGINAL_KEY_HEADER, op};
use crate::exit::Failure;
use lapin::Channel;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicGetOptions, BasicNackOptions};
use serde_json::{Map, Value};
use tchu::headers::{self, QUEUE_HEADER, REPLAYED_HEADER};

/// One parked message, fetched without acknowledgement.
pub(super) struct Parked {
    pub(super) index: u64,
    pub(super) msg: BasicGetMessage,
    pub(super) headers: Map<String, Value>,
    pub(super) described: broker::Described,
}

impl Parked {
    pub(super) fn new(index: u64, msg: BasicGetMessage) -> Self {
        let headers = broker::headers(&msg.delivery.properties);
        // The topic is the key the event had before it was parked, as the service reads it.
        let key = headers
            .get(ORIGINAL_KEY_HEADER)
            .and_then(Value::as_str)
            .unwrap_or(msg.delivery.routing_key.as_str())
            .to_owned();
        let described = broker::describe(&key, &msg.delivery.properties, &msg.delivery.data);
        Self {
            index,
            msg,
            headers,
            described,
        }
    }

    pub(super) fn tag(&self) -> u64 {
        self.msg.delivery.delivery_tag
    }

    pub(super) fn header(&self, name: &str) -> Option<&Value> {
        self.headers.get(name)
    }

    pub(super) fn header_text(&self, name: &str) -> String {
        match self.header(name) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        }
    }

    pub(super) fn handler(&self) -> String {
        self.header_text(HANDLER_HEADER)
    }

    /// Why it was parked: tchu's kind, or `broker:<reason>` for a message the broker
    /// dead-lettered itself (a quorum queue's delivery limit, a TTL, a length limit), which
    /// carries no `x-tchu-*` header.
    pub(super) fn error_kind(&self) -> String {
        let kind = self.header_text(headers::ERROR_KIND_HEADER);
        if !kind.is_empty() {
            return kind;
        }
        self.broker_reason()
            .map_or_else(String::new, |r| format!("broker:{r}"))
    }

    /// The reason of the broker's first dead-lettering, if it dead-lettered the message.
    pub(super) fn broker_reason(&self) -> Option<String> {
        let first = self.header_text("x-first-death-reason");
        if !first.is_empty() {
            return Some(first);
        }
        match self.header("x-death") {
            Some(Value::Array(deaths)) => deaths
                .last()
                .and_then(|d| d.get("reason"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => None,
        }
    }

    /// What went wrong: tchu's error, or what the broker said.
    pub(super) fn error(&self) -> String {
        let error = self.header_text(headers::ERROR_HEADER);
        if !error.is_empty() {
            return error;
        }
        match self.broker_reason() {
            Some(reason) => format!(
                "dead-lettered by the broker from `{}`: {reason}",
                self.header_text("x-first-death-queue")
            ),
            None => String::new(),
        }
    }

    /// The summary `list` prints.
    pub(super) fn summary(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("index".into(), self.index.into());
        m.insert("id".into(), self.described.id.clone().into());
        m.insert("topic".into(), self.described.topic.clone().into());
        m.insert("error_kind".into(), null_if_empty(self.error_kind()));
        m.insert("error".into(), null_if_empty(self.error()));
        for (key, header) in [
            ("handler", HANDLER_HEADER),
            ("attempts", headers::ATTEMPTS_HEADER),
            ("failed_at", headers::FAILED_AT_HEADER),
            ("replayed", REPLAYED_HEADER),
            ("queue", QUEUE_HEADER),
        ] {
            m.insert(
                key.into(),
                self.header(header).cloned().unwrap_or(Value::Null),
            );
        }
        m
    }

    /// Everything `show` prints.
    pub(super) fn detail(&self, dlq: &str) -> Map<String, Value> {
        let d = &self.msg.delivery;
        let mut m = Map::new();
        m.insert("index".into(), self.index.into());
        m.insert("queue".into(), dlq.into());
        m.insert("routing_key".into(), d.routing_key.as_str().into());
        m.insert(
            "properties".into(),
            Value::Object(broker::properties(&d.properties)),
        );
        m.insert("headers".into(), Value::Object(self.headers.clone()));
        m.extend(self.described.to_json(&d.data));
        m
    }
}

/// Fetches up to `max` messages without acknowledging them, calling `each` on every one, then
/// gives them all back in their places. `each` returns whether to go on.
pub(super) async fn peek(
    ch: &Channel,
    dlq: &str,
    max: u64,
    mut each: impl FnMut(Parked) -> Result<bool, Failure>,
) -> Result<u64, Failure> {
    let mut fetched = 0u64;
    let mut last_tag = None;
    let mut quorum = false;
    let result = async {
        while fetched < max {
            let got = op(
                "basic.get",
                ch.basic_get(dlq.into(), BasicGetOptions { no_ack: false }),
            )
            .await?;
            let Some(msg) = got else { break };
            let parked = Parked::new(fetched, msg);
            last_tag = Some(parked.tag());
            // Only quorum queues count deliveries in this header.
            quorum |= parked.headers.contains_key(headers::DELIVERY_COUNT_HEADER);
            fetched += 1;
            if fetched.is_multiple_of(PROGRESS_EVERY) && max > PROGRESS_EVERY {
                eprintln!("read {fetched}/{max}");
            }
            if !each(parked)? {
                break;
            }
        }
        Ok::<(), Failure>(())
    }
    .await;
    let requeued = requeue_up_to(ch, last_tag).await;
    if quorum {
        eprintln!(
            "note: {dlq} is a quorum queue: on RabbitMQ 4.0 to 4.2 every read counts as a delivery \
             attempt, and a message returned more times than the queue's delivery-limit (20 by \
             default) is dropped"
        );
    }
    result?;
    requeued?;
    Ok(fetched)
}

/// Gives back every unacknowledged message up to `tag` (all of them: they are the skipped or
/// peeked ones), keeping their order.
pub(super) async fn requeue_up_to(ch: &Channel, tag: Option<u64>) -> Result<(), Failure> {
    let Some(tag) = tag else { return Ok(()) };
    // Were this to fail, closing the channel requeues them all the same.
    op(
        "basic.nack",
        ch.basic_nack(
            tag,
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        ),
    )
    .await
}

/// A JSON value as text: strings bare, anything else as JSON.
pub(super) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
