//! `tchu replay --queue Q --since TIME`: past events of the log that match the queue's
//! bindings, into that queue only, in log order, each marked with where it came from.
//!
//! The cut: the replay writes a marker at the end of the log when it begins, and stops there.
//! The queue was bound before, so every event after its binding is in the queue already, and
//! every one before it is in the log before the marker: nothing falls between. Those
//! published between the binding and the marker come twice (replayed and live), with one
//! message id: the inbox applies them once.
//!
//! Progress is kept in `<queue>.replay` (one message: the log, the marker, the next offset),
//! so an interrupted replay resumes where it stopped, up to the same marker.

use super::read::{READ_WINDOW, Reader, write_marker};
use super::{DEFAULT_LOG, Start, parse_since};
use crate::broker::{self, op};
use crate::exit::Failure;
use crate::output::Out;
use clap::Args;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use lapin::{Confirmation, PublisherConfirm};
use serde_json::{Value, json};
use tchu::headers::{LOG_OFFSET_HEADER, ORIGINAL_KEY_HEADER, SIGNATURE_HEADER};

/// `tchu replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The service's queue: the events go there, and nowhere else
    #[arg(long)]
    pub queue: String,
    /// From when: back from now (`90s`, `15m`, `1h`, `2d`), a time (`2026-12-06T10:00:00Z`),
    /// `first`, or an offset (`offset:1234`)
    #[arg(long)]
    pub since: String,
    /// Only events matching this pattern (repeatable) [default: the queue's bindings on
    /// tchu_events, read from the management API]
    #[arg(long = "topic", value_name = "PATTERN")]
    pub topics: Vec<String>,
    /// The log's name
    #[arg(long, default_value = DEFAULT_LOG)]
    pub log: String,
    /// Start over from --since, forgetting an interrupted replay's progress
    #[arg(long)]
    pub restart: bool,
}

/// Events published to the queue before their confirms are awaited together.
const PUBLISH_WINDOW: usize = 256;

/// Every how many events replayed the progress is saved and shown.
const CHECKPOINT_EVERY: u64 = 1000;

/// Where a replay stands: what `<queue>.replay` keeps.
#[derive(Debug, Clone)]
struct Progress {
    log: String,
    marker: String,
    /// The next offset to read.
    next: Start,
    replayed: u64,
    read: u64,
    /// Which save this is: the latest wins.
    seq: u64,
}

impl Progress {
    fn to_json(&self) -> Value {
        let next = match self.next {
            Start::Offset(n) => json!({ "offset": n }),
            Start::Time(t) => json!({ "time": t }),
            Start::First => json!("first"),
        };
        json!({ "log": self.log, "marker": self.marker, "next": next,
                "replayed": self.replayed, "read": self.read, "seq": self.seq })
    }

    fn from_json(v: &Value) -> Option<Self> {
        let next = &v["next"];
        let next = if let Some(n) = next["offset"].as_u64() {
            Start::Offset(n)
        } else if let Some(t) = next["time"].as_u64() {
            Start::Time(t)
        } else {
            Start::First
        };
        Some(Self {
            log: v["log"].as_str()?.to_owned(),
            marker: v["marker"].as_str()?.to_owned(),
            next,
            replayed: v["replayed"].as_u64().unwrap_or(0),
            read: v["read"].as_u64().unwrap_or(0),
            seq: v["seq"].as_u64().unwrap_or(0),
        })
    }
}

/// Runs `tchu replay`.
pub async fn run(url: &str, args: &ReplayArgs, out: &Out) -> Result<(), Failure> {
    for p in &args.topics {
        tchu::topic::validate_pattern(p)
            .map_err(|e| Failure::usage(format!("invalid pattern `{p}`: {e}")))?;
    }
    let start = parse_since(&args.since)?;
    let patterns = patterns(url, args)?;
    let conn = broker::connect(url).await?;
    let result = replay(url, &conn, args, start, &patterns, out).await;
    let _ = conn.close(200, "tchu replay done".into()).await;
    result
}

/// The patterns to replay: `--topic`, else the queue's bindings on tchu_events.
fn patterns(url: &str, args: &ReplayArgs) -> Result<Vec<String>, Failure> {
    if !args.topics.is_empty() {
        return Ok(args.topics.clone());
    }
    let api = tchu::admin::Management::new(url, None).map_err(|e| Failure::from_tchu(&e))?;
    let bindings = api.queue_bindings(&args.queue).map_err(|e| {
        Failure::failed(
            "management",
            format!(
                "reading the bindings of `{}` ({e}): give the patterns with --topic",
                args.queue
            ),
        )
    })?;
    let keys: Vec<String> = bindings
        .into_iter()
        .filter(|b| b.source == tchu::EXCHANGE)
        .map(|b| b.routing_key)
        .collect();
    if keys.is_empty() {
        return Err(Failure::failed(
            "no_bindings",
            format!("`{}` is bound to nothing on {}", args.queue, tchu::EXCHANGE),
        ));
    }
    Ok(keys)
}

async fn replay(
    url: &str,
    conn: &Connection,
    args: &ReplayArgs,
    start: Start,
    patterns: &[String],
    out: &Out,
) -> Result<(), Failure> {
    let ch = op("channel.open", conn.create_channel()).await?;
    op(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let queue = ch.queue_declare(args.queue.as_str().into(), passive, FieldTable::default());
    op("queue.declare (the service's queue must exist)", queue).await?;
    let saved = Checkpoint::open(&ch, &args.queue).await?;
    let mut progress = match saved.load(&ch).await? {
        Some(p) if !args.restart && p.log == args.log => {
            out.info(format_args!(
                "resuming an interrupted replay: {} replayed, from {:?}",
                p.replayed, p.next
            ));
            p
        }
        _ => {
            let marker = write_marker(conn, &args.log).await?;
            let mut p = Progress {
                log: args.log.clone(),
                marker,
                next: start,
                replayed: 0,
                read: 0,
                seq: 0,
            };
            saved.save(&ch, &mut p).await?;
            p
        }
    };
    // The oldest offset the log keeps, read before the replay: a start at it, for a time,
    // means the log may no longer hold all that was asked for.
    let kept_from = match progress.next {
        Start::Time(_) => Some(oldest_offset(conn, &args.log).await?),
        _ => None,
    };
    let mut reader = Reader::open(conn, &args.log, progress.next, READ_WINDOW).await?;
    let copier = Copier {
        url,
        ch: &ch,
        args,
        patterns,
        saved: &saved,
        out,
    };
    let first = copier.until_marker(&mut reader, &mut progress).await?;
    if let (Some(first), Some(kept_from)) = (first, kept_from)
        && first <= kept_from
        && kept_from > 0
    {
        out.info(format_args!(
            "the log keeps events from offset {kept_from} only (its retention dropped the older \
             ones): the replay began there, at the oldest event it keeps, which may be later \
             than --since"
        ));
    }
    saved.delete(&ch).await?;
    out.info(format_args!(
        "replayed {} event(s) into {} ({} read from {}), up to the cut",
        progress.replayed, args.queue, progress.read, args.log
    ));
    Ok(())
}

/// What copies the log's events into the queue.
struct Copier<'a> {
    url: &'a str,
    ch: &'a Channel,
    args: &'a ReplayArgs,
    patterns: &'a [String],
    saved: &'a Checkpoint,
    out: &'a Out,
}

impl Copier<'_> {
    /// Copies the matching events to the queue until the marker, saving progress as it goes.
    /// Returns the offset of the first event read.
    async fn until_marker(
        &self,
        reader: &mut Reader,
        progress: &mut Progress,
    ) -> Result<Option<u64>, Failure> {
        let (mut first, mut pending) = (None, Vec::new());
        loop {
            let e = reader.next().await?;
            first.get_or_insert(e.offset);
            match e.marker() {
                Some(m) if m == progress.marker => break,
                Some(_) => {}
                None if self.matches(e.topic()) => {
                    let (args, url) = (self.args, self.url);
                    let copy = publish_copy(url, self.ch, &args.queue, &args.log, &e).await?;
                    pending.push(copy);
                    progress.replayed += 1;
                }
                None => {}
            }
            progress.read += 1;
            progress.next = Start::Offset(e.offset + 1);
            if pending.len() >= PUBLISH_WINDOW {
                confirmed(std::mem::take(&mut pending)).await?;
            }
            if progress.read.is_multiple_of(CHECKPOINT_EVERY) {
                confirmed(std::mem::take(&mut pending)).await?;
                self.saved.save(self.ch, progress).await?;
                self.out.info(format_args!(
                    "replay: {} replayed, {} read, at offset {}",
                    progress.replayed, progress.read, e.offset
                ));
            }
        }
        confirmed(pending).await?;
        Ok(first)
    }

    fn matches(&self, topic: &str) -> bool {
        (self.patterns.iter()).any(|p| tchu::topic::pattern_matches(p, topic))
    }
}

/// Publishes one event of the log to the queue: its body and properties, marked with where it
/// came from, its original routing key signed (what the service reads its topic from).
async fn publish_copy(
    url: &str,
    ch: &Channel,
    queue: &str,
    log: &str,
    e: &super::read::Entry,
) -> Result<PublisherConfirm, Failure> {
    let d = &e.delivery;
    let mut table = FieldTable::default();
    let old = d.properties.headers().clone().unwrap_or_default();
    for (k, v) in old.inner() {
        if k.as_str() != "x-stream-offset" {
            table.insert(k.clone(), v.clone());
        }
    }
    let mut map = broker::headers(&d.properties);
    map.remove("x-stream-offset");
    // A stranger's control headers that do not verify are not signed now: the copy goes
    // unchanged, and the service parks it as it would have parked it live.
    if tchu::amqp::mark_log_replay(url, &d.data, &mut map, e.topic()).is_ok() {
        for name in [ORIGINAL_KEY_HEADER, SIGNATURE_HEADER] {
            let value = map.get(name).and_then(Value::as_str).unwrap_or_default();
            table.insert(name.into(), AMQPValue::LongString(value.into()));
        }
    }
    let at = format!("{log}@{}", e.offset);
    table.insert(LOG_OFFSET_HEADER.into(), AMQPValue::LongString(at.into()));
    let props = d
        .properties
        .clone()
        .with_headers(table)
        .with_delivery_mode(2);
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let publish = ch.basic_publish("".into(), queue.into(), mandatory, &d.data, props);
    op("basic.publish", publish).await
}

/// Awaits the confirms of copies published: each one the broker took.
async fn confirmed(pending: Vec<PublisherConfirm>) -> Result<(), Failure> {
    for confirm in pending {
        match op("publisher confirm", confirm).await? {
            Confirmation::Ack(None) | Confirmation::NotRequested => {}
            Confirmation::Ack(Some(_)) => {
                return Err(Failure::failed(
                    "unroutable",
                    "the queue went away during the replay",
                ));
            }
            Confirmation::Nack(_) => {
                return Err(Failure::failed(
                    "nacked",
                    "the broker refused a replayed event",
                ));
            }
        }
    }
    Ok(())
}

/// The offset of the oldest event the log keeps.
async fn oldest_offset(conn: &Connection, log: &str) -> Result<u64, Failure> {
    let mut oldest = Reader::open(conn, log, Start::First, 1).await?;
    let offset = oldest.next().await?.offset;
    let _ = oldest.ch.close(200, "probed".into()).await;
    Ok(offset)
}

/// `<queue>.replay`: where an interrupted replay finds its progress.
struct Checkpoint {
    name: String,
}

impl Checkpoint {
    async fn open(ch: &Channel, queue: &str) -> Result<Self, Failure> {
        let name = format!("{queue}.replay");
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        op(
            "queue.declare",
            ch.queue_declare(name.as_str().into(), durable, FieldTable::default()),
        )
        .await?;
        Ok(Self { name })
    }

    /// The latest progress kept (a save cut short may have left the one before beside it).
    async fn load(&self, ch: &Channel) -> Result<Option<Progress>, Failure> {
        let mut latest: Option<Progress> = None;
        let mut last_tag = None;
        for _ in 0..4 {
            let get = ch.basic_get(self.name.as_str().into(), BasicGetOptions { no_ack: false });
            let Some(msg) = op("basic.get", get).await? else {
                break;
            };
            last_tag = Some(msg.delivery.delivery_tag);
            let v: Value = serde_json::from_slice(&msg.delivery.data).unwrap_or_default();
            if let Some(p) = Progress::from_json(&v)
                && latest.as_ref().is_none_or(|l| p.seq > l.seq)
            {
                latest = Some(p);
            }
        }
        if let Some(tag) = last_tag {
            let back = lapin::options::BasicNackOptions {
                multiple: true,
                requeue: true,
            };
            op("basic.nack", ch.basic_nack(tag, back)).await?;
        }
        Ok(latest)
    }

    /// Keeps `p` as the progress: written (confirmed) before the older one is dropped, so a
    /// replay killed meanwhile finds one or the other.
    async fn save(&self, ch: &Channel, p: &mut Progress) -> Result<(), Failure> {
        p.seq += 1;
        let body = p.to_json().to_string();
        let props = BasicProperties::default().with_delivery_mode(2);
        let publish = ch.basic_publish(
            "".into(),
            self.name.as_str().into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            props,
        );
        let confirm = op("basic.publish", publish).await?;
        confirmed(vec![confirm]).await?;
        loop {
            let get = ch.basic_get(self.name.as_str().into(), BasicGetOptions { no_ack: false });
            let Some(msg) = op("basic.get", get).await? else {
                return Ok(());
            };
            let v: Value = serde_json::from_slice(&msg.delivery.data).unwrap_or_default();
            let tag = msg.delivery.delivery_tag;
            if v["seq"].as_u64().is_some_and(|s| s < p.seq) {
                op("basic.ack", ch.basic_ack(tag, Default::default())).await?;
            } else {
                let back = lapin::options::BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                return op("basic.nack", ch.basic_nack(tag, back)).await;
            }
        }
    }

    async fn delete(&self, ch: &Channel) -> Result<(), Failure> {
        let delete = ch.queue_delete(self.name.as_str().into(), QueueDeleteOptions::default());
        op("queue.delete", delete).await.map(drop)
    }
}
