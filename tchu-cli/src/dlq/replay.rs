//! `tchu dlq replay`: parked messages back to their service, acknowledged once confirmed.

use super::held::{Order, ask_release, refuse_held};
use super::parked::{Parked, requeue_up_to};
use super::{Names, PROGRESS_EVERY};
use crate::broker::{self, op};
use crate::exit::Failure;
use crate::output::Out;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use tchu::headers::{self, QUEUE_HEADER, REPLAYED_HEADER};

/// Headers a replay removes: the retry state (so the attempt count starts afresh) and the
/// diagnostics the service added when it parked the message.
const REPLAY_DROPPED_HEADERS: &[&str] = &[
    // Not the signed control headers (handler, original routing key, attempt, delay): a
    // replayed copy keeps its signature. tchu's own dead letters carry no attempt or delay;
    // a retry copy the broker dead-lettered itself resumes where it was.
    headers::REDELIVERIES_HEADER,
    headers::LAST_ERROR_HEADER,
    headers::ERROR_HEADER,
    headers::ERROR_KIND_HEADER,
    headers::FAILED_AT_HEADER,
    headers::ATTEMPTS_HEADER,
    headers::QUEUE_HEADER,
];

/// The properties of the replayed copy: the original's, persistent, with the headers reset.
pub(super) fn replay_properties(props: &BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut replayed = 0i64;
    if let Some(old) = props.headers() {
        for (k, v) in old.inner() {
            if k.as_str() == REPLAYED_HEADER {
                replayed = broker::amqp_to_value(v).as_i64().unwrap_or(0);
            } else if !REPLAY_DROPPED_HEADERS.contains(&k.as_str())
                // The broker's own delivery bookkeeping belongs to the dead-letter queue's
                // copy, not to the fresh one.
                && k.as_str() != headers::DELIVERY_COUNT_HEADER
                && k.as_str() != "x-death"
                && !k.as_str().starts_with("x-first-death-")
                && !k.as_str().starts_with("x-last-death-")
            {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    headers.insert(
        REPLAYED_HEADER.into(),
        AMQPValue::LongLongInt(replayed.saturating_add(1)),
    );
    props.clone().with_headers(headers).with_delivery_mode(2)
}

/// Marks a replayed copy for a forced inbox run (`--force`): a fresh token, signed with the
/// key services derive from the same credentials (or `TCHU_SIGNING_KEY`). A copy whose own
/// control headers do not verify is refused, and stays parked.
pub(super) fn forced(
    props: BasicProperties,
    body: &[u8],
    broker_url: &str,
) -> Result<BasicProperties, Failure> {
    let mut map = broker::headers(&props);
    tchu::amqp::mark_forced_replay(broker_url, body, &mut map)
        .map_err(|why| Failure::failed("untrusted", format!("not forced: {why}")))?;
    let mut table = props.headers().clone().unwrap_or_default();
    for name in [headers::INBOX_FORCE_HEADER, headers::SIGNATURE_HEADER] {
        let value = map.get(name).and_then(Value::as_str).unwrap_or_default();
        table.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    Ok(props.with_headers(table))
}

/// One `dlq replay` run: what it looked at, replayed and left.
pub(super) struct Replay<'a> {
    ch: &'a Channel,
    names: &'a Names,
    out: &'a Out,
    /// Messages in the DLQ when the run started.
    count: u64,
    only_id: Option<&'a str>,
    /// `--force`: the broker URL whose credentials sign the force header.
    force: Option<&'a str>,
    /// Keys of ordered handlers to release, by handler and key.
    released: HashSet<(String, String)>,
    to_release: Vec<Order>,
    examined: u64,
    gets: u64,
    replayed: u64,
    came_back: u64,
    /// The highest tag still unacknowledged (skipped messages), given back at the end.
    held: Option<u64>,
    /// (id, handler) of what this run replayed: a copy that fails again and comes back to
    /// the DLQ during the run is left there, not replayed a second time.
    done: HashSet<(String, String)>,
    destinations: BTreeMap<String, u64>,
}

pub(super) async fn replay(
    ch: &Channel,
    names: &Names,
    count: u64,
    (limit, only_id): (Option<u64>, Option<&str>),
    (url, force): (&str, Option<&str>),
    out: &Out,
) -> Result<(), Failure> {
    op(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    let mut run = Replay {
        ch,
        names,
        out,
        count,
        only_id,
        force,
        released: HashSet::new(),
        to_release: Vec::new(),
        examined: 0,
        gets: 0,
        replayed: 0,
        came_back: 0,
        held: None,
        done: HashSet::new(),
        destinations: BTreeMap::new(),
    };
    let result = run.replay_all(limit).await;
    let requeued = requeue_up_to(ch, run.held).await;
    result?;
    requeued?;
    for o in &run.to_release {
        ask_release(url, names, o, false).await?;
    }
    run.report()
}

impl Replay<'_> {
    async fn replay_all(&mut self, limit: Option<u64>) -> Result<(), Failure> {
        // With --id every message is looked at; otherwise the first `limit`.
        let goal = match (self.only_id, limit) {
            (None, Some(l)) => l.min(self.count),
            _ => self.count,
        };
        let max_replays = limit.unwrap_or(u64::MAX);
        // Every get either examines one of the `count` messages present at the start or finds
        // a copy that came back; the cap only guards against a queue filling up meanwhile.
        let max_gets = self.count.saturating_mul(3) + 10;
        while self.examined < goal && self.replayed < max_replays && self.gets < max_gets {
            let get = BasicGetOptions { no_ack: false };
            let got = op(
                "basic.get",
                self.ch.basic_get(self.names.dlq.as_str().into(), get),
            );
            let Some(msg) = got.await? else { break };
            self.gets += 1;
            let p = Parked::new(self.examined, msg);
            let key = (p.described.id.clone(), p.handler());
            if !key.0.is_empty() && self.done.contains(&key) {
                self.came_back += 1;
                self.held = Some(p.tag());
                continue;
            }
            self.examined += 1;
            if self.only_id.is_some_and(|want| want != p.described.id) {
                self.held = Some(p.tag());
                continue;
            }
            if let Some(o) = Order::of(&p, self.names) {
                self.release(&p, &o).await?;
                continue;
            }
            self.replay_one(&p).await?;
            self.done.insert(key);
            let target = if self.only_id.is_some() {
                self.count
            } else {
                goal
            };
            if self.replayed.is_multiple_of(PROGRESS_EVERY) && target > PROGRESS_EVERY {
                eprintln!("replayed {}/{target}", self.replayed);
            }
        }
        Ok(())
    }

    /// A parked message of an ordered handler stays parked: the service will be asked, once
    /// per key, to run the key's first parked message again and then the held ones, in order
    /// (once this run gave back what it holds: the service reads them from the queue).
    async fn release(&mut self, p: &Parked, o: &Order) -> Result<(), Failure> {
        self.held = Some(p.tag());
        if self.only_id.is_some() && o.held {
            return Err(refuse_held(&p.described.id, o, self.names));
        }
        if self.released.insert((o.handler.clone(), o.key.clone())) {
            self.to_release.push(o.clone());
            if self.out.json {
                self.out.object(&json!({
                    "released_key": o.key,
                    "handler": o.handler,
                    "head": o.head,
                    "to": format!("{}.ordered", self.names.service),
                }))?;
            }
        }
        Ok(())
    }

    /// Publishes one parked message back to its queue, then removes it from the DLQ.
    async fn replay_one(&mut self, p: &Parked) -> Result<(), Failure> {
        let (names, replayed) = (self.names, self.replayed);
        let to = match p.header(QUEUE_HEADER).and_then(Value::as_str) {
            Some(q) if !q.is_empty() => q.to_owned(),
            _ => names.service.clone(),
        };
        if let Err(f) = republish(self.ch, p, &to, self.force).await {
            // Back to the DLQ: this message and every skipped one before it.
            let _ = requeue_up_to(self.ch, Some(p.tag())).await;
            self.held = None;
            return Err(Failure {
                message: format!(
                    "could not replay message {} to `{to}`: {}; it stays in {} \
                     ({replayed} replayed before it)",
                    p.described.id, f.message, names.dlq
                ),
                ..f
            });
        }
        let ack = self
            .ch
            .basic_ack(p.tag(), BasicAckOptions { multiple: false });
        op("basic.ack", ack).await.map_err(|f| Failure {
            message: format!(
                "message {} was replayed to `{to}` but could not be removed from {}; it may \
                 be replayed twice: {}",
                p.described.id, names.dlq, f.message
            ),
            ..f
        })?;
        self.replayed += 1;
        if self.out.json {
            let handler = p.handler();
            self.out.object(&json!({
                "id": p.described.id,
                "topic": p.described.topic,
                "handler": (!handler.is_empty()).then_some(handler),
                "to": to,
            }))?;
        }
        *self.destinations.entry(to).or_default() += 1;
        Ok(())
    }

    /// The summary: replayed, came back, left.
    fn report(&self) -> Result<(), Failure> {
        let (names, out, replayed, count) = (self.names, self.out, self.replayed, self.count);
        if let Some(id) = self.only_id
            && replayed == 0
            && self.released.is_empty()
        {
            let examined = self.examined;
            return Err(Failure::failed(
                "no_such_message",
                format!(
                    "no message with id `{id}` in {} ({examined} examined, none replayed)",
                    names.dlq
                ),
            ));
        }
        let to = if self.destinations.is_empty() {
            names.service.clone()
        } else {
            self.destinations
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Of the messages there at the start; a broker count now could still miss the
        // requeued ones (requeues are asynchronous) and would include any newly parked.
        let left = count.saturating_sub(replayed);
        let released = self.released.len();
        if out.json {
            return out.object(&json!({
                "summary": true,
                "ok": true,
                "replayed": replayed,
                "released_keys": released,
                "from": names.dlq,
                "to": to,
                "examined": self.examined,
                "came_back": self.came_back,
                "left": left,
            }));
        }
        out.line(&format!(
            "replayed {replayed} message(s) from {} to {to}",
            names.dlq
        ))?;
        if released > 0 {
            out.line(&format!(
                "asked {}.ordered to release {released} held key(s): each runs its first parked \
                 message again, then the held ones in order, removing each from {} once it ran",
                names.service, names.dlq
            ))?;
        }
        if self.came_back > 0 {
            out.info(format_args!(
                "{} replayed message(s) failed again and are back in {}",
                self.came_back, names.dlq
            ));
        }
        if left > 0 {
            out.info(format_args!(
                "{left} of the {count} message(s) in {} were not replayed",
                names.dlq
            ));
        }
        Ok(())
    }
}

/// Publishes the replayed copy on the default exchange to `queue`: mandatory and confirmed.
pub(super) async fn republish(
    ch: &Channel,
    p: &Parked,
    queue: &str,
    force: Option<&str>,
) -> Result<(), Failure> {
    let key = ShortString::try_new(queue)
        .map_err(|_| Failure::failed("bad_queue", format!("queue name `{queue}` is too long")))?;
    let mut properties = replay_properties(&p.msg.delivery.properties);
    if let Some(url) = force {
        properties = forced(properties, &p.msg.delivery.data, url)?;
    }
    let confirm = op(
        "basic.publish",
        ch.basic_publish(
            "".into(),
            key,
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &p.msg.delivery.data,
            properties,
        ),
    )
    .await?;
    match op("publisher confirm", confirm).await? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(Failure::failed(
            "unroutable",
            format!("unroutable: queue `{queue}` does not exist"),
        )),
        Confirmation::Nack(_) => Err(Failure::failed(
            "nacked",
            "the broker refused the message (negative publisher confirm)",
        )),
    }
}
