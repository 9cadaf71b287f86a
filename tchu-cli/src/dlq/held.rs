//! Parked messages of ordered handlers (`ordered(key = ...)`): which keys are held and behind
//! what, and the release requests `replay` and `skip` send for them. The service itself runs
//! a released key's messages, in order, in the key's lane: the tool only asks.

use super::Names;
use super::parked::Parked;
use crate::exit::Failure;
use crate::output::Out;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tchu::headers::{self, HELD_BY_HEADER, HELD_SEQ_HEADER, ORDER_KEY_HEADER};

/// What a parked message of an ordered handler says about its key.
#[derive(Debug, Clone)]
pub(super) struct Order {
    pub(super) handler: String,
    pub(super) key: String,
    /// The id of the first parked message of the key: its own, or the one it is held behind.
    pub(super) head: String,
    /// Parked as `held`, behind `head`.
    pub(super) held: bool,
    pub(super) seq: u64,
}

impl Order {
    /// The order part of a parked message, for a message of an ordered handler of a service
    /// that still has its ordered queue.
    pub(super) fn of(p: &Parked, names: &Names) -> Option<Self> {
        if !names.ordered {
            return None;
        }
        let key = p.header(ORDER_KEY_HEADER)?.as_str()?.to_owned();
        let held_by = p.header_text(HELD_BY_HEADER);
        let held = p.error_kind() == headers::FailureKind::Held.as_str();
        Some(Self {
            handler: p.handler(),
            key,
            head: if held_by.is_empty() {
                p.described.id.clone()
            } else {
                held_by
            },
            held,
            seq: p
                .header(HELD_SEQ_HEADER)
                .and_then(Value::as_u64)
                .unwrap_or(0),
        })
    }
}

/// The held keys seen in a run, by handler and key: the first parked message and how many
/// wait behind it.
#[derive(Default)]
pub(super) struct HeldKeys(BTreeMap<(String, String), (u64, String, String, u64)>);

impl HeldKeys {
    pub(super) fn add(&mut self, p: &Parked, names: &Names) {
        let Some(o) = Order::of(p, names) else { return };
        let entry = (self.0)
            .entry((o.handler.clone(), o.key.clone()))
            .or_insert((u64::MAX, o.head.clone(), String::new(), 0));
        if o.held {
            entry.3 += 1;
        }
        if !o.held && o.seq <= entry.0 {
            *entry = (o.seq, p.described.id.clone(), p.error_kind(), entry.3);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn to_json(&self) -> Value {
        let keys: Vec<Value> = (self.0.iter())
            .map(|((handler, key), (_, head, kind, held))| {
                json!({"handler": handler, "key": key, "head": head, "head_kind": null_if_empty(kind), "held": held})
            })
            .collect();
        Value::Array(keys)
    }

    /// One line per held key.
    pub(super) fn print(&self, names: &Names, out: &Out) -> Result<(), Failure> {
        out.line(&format!("{} held key(s) in {}:", self.0.len(), names.dlq))?;
        for ((handler, key), (_, head, kind, held)) in &self.0 {
            let kind = if kind.is_empty() { "-" } else { kind };
            out.line(&format!(
                "  key `{key}` of {handler}: behind {head} ({kind}), {held} held"
            ))?;
        }
        out.line(&format!(
            "release one with `tchu dlq replay {q} --id HEAD` (it runs again, then the held ones \
             in order) or `tchu dlq skip {q} --id HEAD`",
            q = names.service
        ))
    }
}

fn null_if_empty(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { s.into() }
}

/// Asks the service to release the key of `o`: its ordered queue takes the request behind the
/// messages of the key already there.
pub(super) async fn ask_release(
    url: &str,
    names: &Names,
    o: &Order,
    skip: bool,
) -> Result<(), Failure> {
    let client = tchu::Client::connect(url)
        .await
        .map_err(|e| Failure::failed("unreachable", format!("cannot connect: {e}")))?;
    let release = tchu::amqp::Release {
        handler: o.handler.clone(),
        key: o.key.clone(),
        head: o.head.clone(),
        skip,
    };
    let sent = tchu::release_held(&client, &names.service, &release).await;
    client.close().await;
    sent.map_err(|e| {
        Failure::failed(
            "release_failed",
            format!(
                "could not ask `{}` to release key `{}`: {e}",
                names.service, o.key
            ),
        )
    })
}

/// Refuses to replay or skip a message held behind another on its own: the order of its key
/// would break.
pub(super) fn refuse_held(id: &str, o: &Order, names: &Names) -> Failure {
    Failure::failed(
        "held",
        format!(
            "message {id} is held behind {head} (key `{key}` of {handler}): replay that one \
             (`tchu dlq replay {q} --id {head}`) or skip it (`tchu dlq skip {q} --id {head}`), \
             and the held ones follow in order",
            head = o.head,
            key = o.key,
            handler = o.handler,
            q = names.service
        ),
    )
}
