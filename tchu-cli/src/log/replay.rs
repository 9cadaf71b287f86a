//! `tchu replay --queue Q --since TIME`: past events of the log that match the queue's
//! bindings, into that queue only, in log order, each marked with where it came from.
//!
//! The cut: the replay writes a marker at the end of the log when it begins, and stops there.
//! The queue was bound before, so every event after its binding is in the queue already, and
//! every one before it is in the log before the marker: nothing falls between. Those
//! published between the binding and the marker come twice (replayed and live), with one
//! message id: the inbox applies them once.
//!
//! Progress is kept in `<queue>.replay.tool` (one message: the log, the marker, the next
//! offset), so an interrupted replay resumes where it stopped, up to the same marker. A
//! service's own replay keeps its progress in `<queue>.replay`, apart: neither disturbs the
//! other's.

use super::read::{READ_WINDOW, next, open_reader, write_marker};
use super::{DEFAULT_LOG, parse_since};
use crate::broker::{self, op};
use crate::exit::Failure;
use crate::output::Out;
use clap::Args;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use lapin::{Confirmation, PublisherConfirm};
use serde_json::Value;
use tchu::amqp::log::{
    LogEntry, LogReader, LogStart, ReplayCheckpoint, ReplayProgress, lock_replay,
};
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
    start: LogStart,
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
    let lock = op("channel.open", conn.create_channel()).await?;
    if !lock_replay(&lock, &args.queue).await.map_err(kept)? {
        return Err(Failure::failed(
            "busy",
            format!(
                "a replay into `{}` is running (a replica of the service, or another `tchu \
                 replay`): wait for it to finish",
                args.queue
            ),
        ));
    }
    let checkpoint = format!("{}.replay.tool", args.queue);
    let saved = ReplayCheckpoint::open(&ch, &checkpoint);
    let saved = saved.await.map_err(kept)?;
    let mut progress = resumed_or_new(conn, &ch, &saved, args, start, out).await?;
    // The oldest offset the log keeps, read before the replay: a start at it, for a time,
    // means the log may no longer hold all that was asked for.
    let kept_from = match progress.next {
        LogStart::Time(_) => Some(oldest_offset(conn, &args.log).await?),
        _ => None,
    };
    let mut reader = open_reader(conn, &args.log, progress.next, READ_WINDOW).await?;
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
    saved.delete(&ch).await.map_err(kept)?;
    let _ = lock.close(200, "replay over".into()).await;
    out.info(format_args!(
        "replayed {} event(s) into {} ({} read from {}), up to the cut",
        progress.replayed, args.queue, progress.read, args.log
    ));
    Ok(())
}

/// The progress of an interrupted replay to resume, or a new replay (its marker written).
async fn resumed_or_new(
    conn: &Connection,
    ch: &Channel,
    saved: &ReplayCheckpoint,
    args: &ReplayArgs,
    start: LogStart,
    out: &Out,
) -> Result<ReplayProgress, Failure> {
    let loaded = saved.load(ch).await.map_err(kept)?;
    let last_seq = loaded.as_ref().map_or(0, |p| p.seq);
    match loaded {
        Some(p) if !args.restart && !p.done && p.log == args.log => {
            out.info(format_args!(
                "resuming an interrupted replay: {} replayed, from {:?}",
                p.replayed, p.next
            ));
            Ok(p)
        }
        _ => {
            let marker = write_marker(conn, &args.log).await?;
            let mut p = ReplayProgress::new(&args.log, &args.since, marker, start);
            p.seq = last_seq;
            saved.save(ch, &mut p).await.map_err(kept)?;
            Ok(p)
        }
    }
}

/// What copies the log's events into the queue.
struct Copier<'a> {
    url: &'a str,
    ch: &'a Channel,
    args: &'a ReplayArgs,
    patterns: &'a [String],
    saved: &'a ReplayCheckpoint,
    out: &'a Out,
}

impl Copier<'_> {
    /// Copies the matching events to the queue until the marker, saving progress as it goes.
    /// Returns the offset of the first event read.
    async fn until_marker(
        &self,
        reader: &mut LogReader,
        progress: &mut ReplayProgress,
    ) -> Result<Option<u64>, Failure> {
        let (mut first, mut pending) = (None, Vec::new());
        loop {
            let e = next(reader).await?;
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
            progress.next = LogStart::Offset(e.offset + 1);
            if pending.len() >= PUBLISH_WINDOW {
                confirmed(std::mem::take(&mut pending)).await?;
            }
            if progress.read.is_multiple_of(CHECKPOINT_EVERY) {
                confirmed(std::mem::take(&mut pending)).await?;
                self.saved.save(self.ch, progress).await.map_err(kept)?;
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
    e: &LogEntry,
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
    let at = format!("{log}@{}", e.offset);
    if tchu::amqp::mark_log_replay(url, &d.data, &mut map, (e.topic(), &at)).is_ok() {
        for name in [ORIGINAL_KEY_HEADER, LOG_OFFSET_HEADER, SIGNATURE_HEADER] {
            let value = map.get(name).and_then(Value::as_str).unwrap_or_default();
            table.insert(name.into(), AMQPValue::LongString(value.into()));
        }
    }
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
    let ch = op("channel.open", conn.create_channel()).await?;
    let oldest = tchu::amqp::log::oldest_offset(ch, log).await;
    oldest.map_err(|e| Failure::from_tchu(&e))
}

/// Maps a failure of the checkpoint's.
fn kept(e: tchu::Error) -> Failure {
    Failure::from_tchu(&e)
}
