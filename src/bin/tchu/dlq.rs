//! `tchu dlq list|show|replay|purge`: a service's dead-letter queue, through lapin.
//!
//! Reading never consumes: messages are fetched with `basic.get` without acknowledgement and
//! given back with one `basic.nack(multiple, requeue)`, which puts them back in their places.
//! Replaying acknowledges a dead letter only once its republished copy is confirmed.

use crate::DlqCommand;
use crate::broker::{self, HANDLER_HEADER, ORIGINAL_KEY_HEADER, op};
use crate::exit::Failure;
use crate::output::{Out, one_line, table};
use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashSet};

/// Progress goes to stderr every this many messages.
const PROGRESS_EVERY: u64 = 500;
/// How much of the error text a `list` line shows.
const ERROR_WIDTH: usize = 60;
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
use tchu::headers::{self, QUEUE_HEADER, REPLAYED_HEADER};

/// The dead-letter queue and its service queue, from the `QUEUE` argument.
#[derive(Debug, Clone)]
struct Names {
    dlq: String,
    service: String,
}

impl Names {
    fn new(arg: &str) -> Result<Self, Failure> {
        if arg.is_empty() || arg.len() > 255 {
            return Err(Failure::usage(format!(
                "`{arg}` is not a queue name (1 to 255 bytes)"
            )));
        }
        Ok(match arg.strip_suffix(".dlq") {
            Some(service) if !service.is_empty() => Self {
                dlq: arg.to_owned(),
                service: service.to_owned(),
            },
            _ => Self {
                dlq: format!("{arg}.dlq"),
                service: arg.to_owned(),
            },
        })
    }
}

/// Runs a `dlq` subcommand.
///
/// # Errors
/// Exit 1 for a missing queue or a broker failure, 3 when the broker is unreachable, 2 for
/// `purge` without `--yes`.
pub async fn run(url: &str, cmd: DlqCommand, out: &Out) -> Result<(), Failure> {
    let (queue, action) = match &cmd {
        DlqCommand::List { queue, .. } => (queue, "list"),
        DlqCommand::Show { queue, .. } => (queue, "show"),
        DlqCommand::Replay { queue, .. } => (queue, "replay"),
        DlqCommand::Purge { queue, yes } => {
            if !yes {
                return Err(Failure::usage(format!(
                    "`dlq purge` deletes every message in {}: pass --yes to confirm",
                    Names::new(queue)?.dlq
                )));
            }
            (queue, "purge")
        }
    };
    let names = Names::new(queue)?;
    let conn = broker::connect(url).await?;
    let result = async {
        let ch = op("channel.open", conn.create_channel()).await?;
        let count = message_count(&ch, &names.dlq).await?;
        match cmd {
            DlqCommand::List { limit, .. } => list(&ch, &names, count, limit, out).await,
            DlqCommand::Show { index, all, .. } => show(&ch, &names, count, index, all, out).await,
            DlqCommand::Replay {
                limit, id, force, ..
            } => {
                let force = force.then_some(url);
                replay(&ch, &names, count, limit, id.as_deref(), force, out).await
            }
            DlqCommand::Purge { .. } => purge(&ch, &names, out).await,
        }
    }
    .await;
    let _ = conn
        .close(200, format!("tchu dlq {action} done").into())
        .await;
    result
}

/// How many ready messages the queue holds (passive declare: a missing queue is an error).
async fn message_count(ch: &Channel, queue: &str) -> Result<u64, Failure> {
    let q = broker::op(
        "queue.declare",
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .map_err(|f| match f.kind {
        "not_found" => Failure::failed("not_found", format!("queue `{queue}` does not exist")),
        _ => f,
    })?;
    Ok(u64::from(q.message_count()))
}

/// One parked message, fetched without acknowledgement.
struct Parked {
    index: u64,
    msg: BasicGetMessage,
    headers: Map<String, Value>,
    described: broker::Described,
}

impl Parked {
    fn new(index: u64, msg: BasicGetMessage) -> Self {
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

    fn tag(&self) -> u64 {
        self.msg.delivery.delivery_tag
    }

    fn header(&self, name: &str) -> Option<&Value> {
        self.headers.get(name)
    }

    fn header_text(&self, name: &str) -> String {
        match self.header(name) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        }
    }

    fn handler(&self) -> String {
        self.header_text(HANDLER_HEADER)
    }

    /// Why it was parked: tchu's kind, or `broker:<reason>` for a message the broker
    /// dead-lettered itself (a quorum queue's delivery limit, a TTL, a length limit), which
    /// carries no `x-tchu-*` header.
    fn error_kind(&self) -> String {
        let kind = self.header_text("x-tchu-error-kind");
        if !kind.is_empty() {
            return kind;
        }
        self.broker_reason()
            .map_or_else(String::new, |r| format!("broker:{r}"))
    }

    /// The reason of the broker's first dead-lettering, if it dead-lettered the message.
    fn broker_reason(&self) -> Option<String> {
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
    fn error(&self) -> String {
        let error = self.header_text("x-tchu-error");
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
    fn summary(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("index".into(), self.index.into());
        m.insert("id".into(), self.described.id.clone().into());
        m.insert("topic".into(), self.described.topic.clone().into());
        m.insert("error_kind".into(), null_if_empty(self.error_kind()));
        m.insert("error".into(), null_if_empty(self.error()));
        for (key, header) in [
            ("handler", HANDLER_HEADER),
            ("attempts", "x-tchu-attempts"),
            ("failed_at", "x-tchu-failed-at"),
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
    fn detail(&self, dlq: &str) -> Map<String, Value> {
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
async fn peek(
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
            quorum |= parked.headers.contains_key("x-delivery-count");
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
async fn requeue_up_to(ch: &Channel, tag: Option<u64>) -> Result<(), Failure> {
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

async fn list(
    ch: &Channel,
    names: &Names,
    count: u64,
    limit: Option<u64>,
    out: &Out,
) -> Result<(), Failure> {
    let max = limit.map_or(count, |l| l.min(count));
    let mut rows = vec![
        [
            "#",
            "ID",
            "TOPIC",
            "HANDLER",
            "KIND",
            "ATTEMPTS",
            "FAILED AT",
            "ERROR",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let listed = peek(ch, &names.dlq, max, |p| {
        if out.json {
            out.object(&Value::Object(p.summary()))?;
        } else {
            let dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
            rows.push(vec![
                p.index.to_string(),
                dash(p.described.id.clone()),
                dash(p.described.topic.clone()),
                dash(p.handler()),
                dash(p.error_kind()),
                dash(p.header_text("x-tchu-attempts")),
                dash(p.header_text("x-tchu-failed-at")),
                dash(one_line(&p.error(), ERROR_WIDTH)),
            ]);
        }
        Ok(true)
    })
    .await?;
    if out.json {
        out.object(&json!({
            "summary": true,
            "ok": true,
            "queue": names.dlq,
            "total": count,
            "listed": listed,
        }))
    } else {
        if listed > 0 {
            table(out, &rows)?;
        }
        let shown = if listed < count {
            format!(" (listed {listed})")
        } else {
            String::new()
        };
        out.line(&format!("{count} message(s) in {}{shown}", names.dlq))
    }
}

async fn show(
    ch: &Channel,
    names: &Names,
    count: u64,
    index: u64,
    all: bool,
    out: &Out,
) -> Result<(), Failure> {
    if !all && index >= count {
        return Err(Failure::failed(
            "no_such_message",
            format!(
                "{} holds {count} message(s): there is no index {index}",
                names.dlq
            ),
        ));
    }
    let max = if all { count } else { index + 1 };
    let mut first = true;
    peek(ch, &names.dlq, max, |p| {
        if !all && p.index != index {
            return Ok(true);
        }
        if out.json {
            out.object(&Value::Object(p.detail(&names.dlq)))?;
        } else {
            if !first {
                out.line("")?;
            }
            print_detail(out, &p, &names.dlq, count)?;
        }
        first = false;
        Ok(true)
    })
    .await?;
    if first {
        // The queue shrank between the count and the reads.
        return Err(Failure::failed(
            "no_such_message",
            format!("{} no longer holds a message at index {index}", names.dlq),
        ));
    }
    if all && out.json {
        out.object(&json!({"summary": true, "ok": true, "queue": names.dlq, "total": count}))?;
    }
    Ok(())
}

fn print_detail(out: &Out, p: &Parked, dlq: &str, count: u64) -> Result<(), Failure> {
    let d = &p.described;
    out.line(&format!("message {} of {count} in {dlq}", p.index))?;
    out.line(&format!("  id:          {}", d.id))?;
    out.line(&format!("  topic:       {}", d.topic))?;
    out.line(&format!(
        "  routing key: {}",
        p.msg.delivery.routing_key.as_str()
    ))?;
    if let Some(f) = d.format {
        out.line(&format!(
            "  format:      {f}{}",
            if d.is_rpc { " (RPC)" } else { "" }
        ))?;
    }
    out.line("properties:")?;
    for (k, v) in broker::properties(&p.msg.delivery.properties) {
        out.line(&format!("  {k}: {}", text(&v)))?;
    }
    out.line("headers:")?;
    for (k, v) in &p.headers {
        out.line(&format!("  {k}: {}", text(v)))?;
    }
    match (&d.payload, &d.foreign_task, &d.decode_error) {
        (Some(payload), _, _) => {
            out.line("payload:")?;
            out.line(&serde_json::to_string_pretty(payload).unwrap_or_default())
        }
        (None, Some(task), _) => {
            out.line(&format!("body (Celery task {task}, not a tchu event):"))?;
            out.line(&String::from_utf8_lossy(&p.msg.delivery.data))
        }
        (None, None, e) => {
            out.line(&format!(
                "body (undecodable: {}):",
                e.as_deref().unwrap_or("unknown")
            ))?;
            out.line(&String::from_utf8_lossy(&p.msg.delivery.data))
        }
    }
}

/// A JSON value as text: strings bare, anything else as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The properties of the replayed copy: the original's, persistent, with the headers reset.
fn replay_properties(props: &BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut replayed = 0i64;
    if let Some(old) = props.headers() {
        for (k, v) in old.inner() {
            if k.as_str() == REPLAYED_HEADER {
                replayed = broker::amqp_to_value(v).as_i64().unwrap_or(0);
            } else if !REPLAY_DROPPED_HEADERS.contains(&k.as_str())
                // The broker's own delivery bookkeeping belongs to the dead-letter queue's
                // copy, not to the fresh one.
                && k.as_str() != "x-delivery-count"
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
fn forced(
    props: BasicProperties,
    body: &[u8],
    broker_url: &str,
) -> Result<BasicProperties, Failure> {
    let mut map = broker::headers(&props);
    tchu::__private::force_for_broker(broker_url, body, &mut map)
        .map_err(|why| Failure::failed("untrusted", format!("not forced: {why}")))?;
    let mut table = props.headers().clone().unwrap_or_default();
    for name in [headers::INBOX_FORCE_HEADER, headers::SIGNATURE_HEADER] {
        let value = map.get(name).and_then(Value::as_str).unwrap_or_default();
        table.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    Ok(props.with_headers(table))
}

/// One `dlq replay` run: what it looked at, replayed and left.
struct Replay<'a> {
    ch: &'a Channel,
    names: &'a Names,
    out: &'a Out,
    /// Messages in the DLQ when the run started.
    count: u64,
    only_id: Option<&'a str>,
    /// `--force`: the broker URL whose credentials sign the force header.
    force: Option<&'a str>,
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

async fn replay(
    ch: &Channel,
    names: &Names,
    count: u64,
    limit: Option<u64>,
    only_id: Option<&str>,
    force: Option<&str>,
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
        if out.json {
            return out.object(&json!({
                "summary": true,
                "ok": true,
                "replayed": replayed,
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
async fn republish(
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

async fn purge(ch: &Channel, names: &Names, out: &Out) -> Result<(), Failure> {
    let purged = op(
        "queue.purge",
        ch.queue_purge(names.dlq.as_str().into(), QueuePurgeOptions::default()),
    )
    .await?;
    if out.json {
        out.object(&json!({"ok": true, "queue": names.dlq, "purged": purged}))
    } else {
        out.line(&format!("purged {purged} message(s) from {}", names.dlq))
    }
}

/// A JSON string, `null` when empty (as an absent header is in `list --json`).
fn null_if_empty(s: String) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s)
    }
}
