//! The event log on RabbitMQ, re-exported as `tchu_runtime::amqp::log`: a stream bound to
//! `tchu_events`, read from a starting point with bounded memory (a stream consumer hands out
//! no more than its prefetch unacknowledged), the marker a reader writes to know where "now"
//! is, and where a replay keeps its progress (`<queue>.replay`). A service replaying at start
//! ([`Service::replay_from`](crate::Service::replay_from)) and `tchu replay` share all of it.

use crate::error::{Error, Result};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use serde_json::{Value, json};
use tchu_core::headers::LOG_MARKER_HEADER;

/// The event log's name when none is given.
pub const DEFAULT_LOG: &str = "tchu_events.log";

/// Where reading the log starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStart {
    /// The oldest event the log keeps.
    First,
    /// An offset.
    Offset(u64),
    /// The first event at or after this time (seconds since the Unix epoch).
    Time(u64),
    /// The start of the last chunk written (the most recent events): where a reader looks for
    /// what was just written.
    Last,
}

impl LogStart {
    /// Reads a starting point: a duration back from now (`90s`, `15m`, `1h`, `2d`), an RFC 3339
    /// time (`2026-12-06T10:00:00Z`), `first`, or an offset (`offset:1234`).
    ///
    /// ```
    /// use tchu_runtime::amqp::log::LogStart;
    /// assert_eq!(LogStart::parse("offset:7")?, LogStart::Offset(7));
    /// assert!(matches!(LogStart::parse("1h")?, LogStart::Time(_)));
    /// # Ok::<(), String>(())
    /// ```
    ///
    /// # Errors
    /// What is wrong with `s`, in a sentence.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        use tchu_core::since::{EXPECTED, Since};
        let secs = |t: chrono::DateTime<chrono::Utc>| u64::try_from(t.timestamp()).unwrap_or(0);
        match tchu_core::since::parse(s)? {
            Since::First => Ok(Self::First),
            Since::Offset(n) => Ok(Self::Offset(n)),
            Since::Back(back) => {
                let back = chrono::TimeDelta::from_std(back).map_err(|e| format!("`{s}`: {e}"))?;
                Ok(Self::Time(secs(chrono::Utc::now() - back)))
            }
            Since::At(at) => match chrono::DateTime::parse_from_rfc3339(&at) {
                // A reader would start after everything written, a replay after its own end.
                Ok(at) if at.to_utc() > chrono::Utc::now() => {
                    Err(format!("`{s}`: a time in the future"))
                }
                Ok(at) => Ok(Self::Time(secs(at.to_utc()))),
                Err(_) => Err(format!("`{s}`: {EXPECTED}")),
            },
        }
    }

    /// `x-stream-offset` of a consumer starting here.
    fn argument(self) -> AMQPValue {
        match self {
            Self::First => AMQPValue::LongString("first".into()),
            Self::Offset(n) => AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX)),
            Self::Time(secs) => AMQPValue::Timestamp(secs),
            Self::Last => AMQPValue::LongString("last".into()),
        }
    }
}

/// One event of the log, as the stream delivered it.
#[derive(Debug)]
pub struct LogEntry {
    /// Its offset in the log.
    pub offset: u64,
    /// The delivery: the routing key it was published with, its properties and body.
    pub delivery: lapin::message::Delivery,
}

impl LogEntry {
    /// The marker's token, when it is one: what a reader wrote to the log itself (by the
    /// default exchange, not through tchu_events), with an empty body. An event published
    /// with a marker header is an event, read as any other.
    pub fn marker(&self) -> Option<String> {
        let d = &self.delivery;
        if !d.exchange.as_str().is_empty() || !d.data.is_empty() {
            return None;
        }
        match d
            .properties
            .headers()
            .as_ref()?
            .inner()
            .get(LOG_MARKER_HEADER)?
        {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            _ => None,
        }
    }

    /// Its topic: the routing key it was published with.
    pub fn topic(&self) -> &str {
        self.delivery.routing_key.as_str()
    }
}

/// A consumer of the log from a starting point, on a channel of its own.
#[derive(Debug)]
pub struct LogReader {
    channel: Channel,
    consumer: lapin::Consumer,
    /// Events taken since the last acknowledgement, and after how many to acknowledge.
    unacked: u16,
    ack_every: u16,
}

impl LogReader {
    /// Consumes `log` on `channel` from `start`, holding at most `window` events
    /// unacknowledged: what bounds the reader's memory.
    ///
    /// # Errors
    /// [`Error::NotDeclared`] when there is no such log (`tchu log declare` makes it);
    /// [`Error::Amqp`] when the broker refuses otherwise.
    pub async fn open(channel: Channel, log: &str, start: LogStart, window: u16) -> Result<Self> {
        (channel.basic_qos(window, BasicQosOptions::default()).await)
            .map_err(Error::amqp("basic.qos"))?;
        let mut args = FieldTable::default();
        args.insert("x-stream-offset".into(), start.argument());
        let tag = format!("tchu-log-{}", uuid::Uuid::new_v4().simple());
        let consumer = channel
            .basic_consume(
                log.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await
            .map_err(|e| match not_found(&e) {
                true => Error::NotDeclared {
                    what: "event log",
                    name: log.to_owned(),
                },
                false => Error::amqp("basic.consume (of the event log)")(e),
            })?;
        Ok(Self {
            channel,
            consumer,
            unacked: 0,
            ack_every: (window / 2).max(1),
        })
    }

    /// The next event. A stream keeps what it hands out: acknowledging is credit only, given
    /// for half the window at once (`multiple`), which measured twice the rate of one
    /// acknowledgement per event. Not cancel-safe: cancelled between the delivery and its
    /// acknowledgement, the event is lost to this reader.
    ///
    /// # Errors
    /// [`Error::Amqp`] when the channel is lost; [`Error::ConsumerLost`] when the broker
    /// cancelled the consumer.
    pub async fn next(&mut self) -> Result<LogEntry> {
        let delivery = match self.consumer.next().await {
            Some(d) => d.map_err(Error::amqp("basic.deliver (of the event log)"))?,
            None => {
                return Err(Error::ConsumerLost {
                    queue: self.consumer.queue().to_string(),
                    reason: "the broker cancelled the event log's consumer".into(),
                });
            }
        };
        let offset = stream_offset(&delivery.properties);
        self.unacked += 1;
        if self.unacked >= self.ack_every {
            let all = BasicAckOptions { multiple: true };
            (self.channel.basic_ack(delivery.delivery_tag, all).await)
                .map_err(Error::amqp("basic.ack"))?;
            self.unacked = 0;
        }
        Ok(LogEntry { offset, delivery })
    }

    /// Closes its channel.
    pub async fn close(self) {
        let _ = self.channel.close(200, "log read".into()).await;
    }
}

/// The offset RabbitMQ gives each event read from a stream (`x-stream-offset`).
fn stream_offset(props: &BasicProperties) -> u64 {
    let v = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-stream-offset").cloned());
    match v {
        Some(AMQPValue::LongLongInt(n)) => u64::try_from(n).unwrap_or(0),
        Some(AMQPValue::LongUInt(n)) => u64::from(n),
        Some(AMQPValue::Timestamp(n)) => n,
        _ => 0,
    }
}

/// The offset of the oldest event `log` keeps.
///
/// # Errors
/// As [`LogReader::open`].
pub async fn oldest_offset(channel: Channel, log: &str) -> Result<u64> {
    let mut oldest = LogReader::open(channel, log, LogStart::First, 1).await?;
    let offset = oldest.next().await?.offset;
    oldest.close().await;
    Ok(offset)
}

/// Finds the offset of the marker `token` just written to `log`: read from the start of the
/// log's last chunk, then from further back while the log holds more than that chunk after
/// it, each read bounded in time; `None` when it was not found.
pub(crate) async fn find_marker(live: &super::Live, log: &str, token: &str) -> Result<Option<u64>> {
    let mut start = LogStart::Last;
    let mut until = u64::MAX;
    for back in [0, 1 << 10, 1 << 14, 1 << 18] {
        if back > 0 {
            start = LogStart::Offset(until.saturating_sub(back));
        }
        let mut reader = LogReader::open(live.channel().await?, log, start, 512).await?;
        let found = scan_for(&mut reader, token, until).await;
        reader.close().await;
        match found? {
            Scan::Found(offset) => return Ok(Some(offset)),
            Scan::NotFrom(first) if first > 0 => until = until.min(first),
            Scan::NotFrom(_) => break,
        }
    }
    Ok(None)
}

enum Scan {
    Found(u64),
    /// Not found reading from this offset.
    NotFrom(u64),
}

/// Reads until `token`, the offset `until`, a pause (the end of the log) or two seconds.
async fn scan_for(reader: &mut LogReader, token: &str, until: u64) -> Result<Scan> {
    const PAUSE: std::time::Duration = std::time::Duration::from_millis(500);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut first = None;
    while let Ok(entry) = tokio::time::timeout(PAUSE, reader.next()).await {
        let entry = entry?;
        let start = *first.get_or_insert(entry.offset);
        if entry.marker().as_deref() == Some(token) {
            return Ok(Scan::Found(entry.offset));
        }
        if entry.offset + 1 >= until || tokio::time::Instant::now() > deadline {
            return Ok(Scan::NotFrom(start));
        }
    }
    Ok(Scan::NotFrom(first.unwrap_or(until)))
}

/// Writes a marker at the end of `log` on `channel` (to the stream itself, not through
/// tchu_events: no service receives it), confirmed, and returns its token. Everything before
/// it in the log was published before now.
///
/// # Errors
/// [`Error::NotDeclared`] when there is no such log; [`Error::Nacked`] when the broker
/// refused the marker; [`Error::Amqp`] when the channel is lost.
pub async fn write_marker(channel: &Channel, log: &str) -> Result<String> {
    (channel
        .confirm_select(ConfirmSelectOptions::default())
        .await)
        .map_err(Error::amqp("confirm.select"))?;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut headers = FieldTable::default();
    let value = AMQPValue::LongString(token.as_str().into());
    headers.insert(LOG_MARKER_HEADER.into(), value);
    let props = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2);
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let confirm = channel
        .basic_publish("".into(), log.into(), mandatory, b"", props)
        .await
        .map_err(Error::amqp("basic.publish"))?;
    match confirmed(confirm, log).await {
        Ok(()) => Ok(token),
        Err(Error::NotDeclared { name, .. }) => Err(Error::NotDeclared {
            what: "event log",
            name,
        }),
        Err(e) => Err(e),
    }
}

/// Awaits the broker's confirm of a message sent to the queue `to`.
///
/// # Errors
/// [`Error::NotDeclared`] when no queue `to` took it; [`Error::Nacked`] when the broker
/// refused it.
pub async fn confirmed(confirm: PublisherConfirm, to: &str) -> Result<()> {
    match confirm.await.map_err(Error::amqp("publisher confirm"))? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(Error::NotDeclared {
            what: "queue",
            name: to.to_owned(),
        }),
        Confirmation::Nack(_) => Err(Error::Nacked {
            topic: to.to_owned(),
        }),
    }
}

/// Where a replay into one queue stands: what `<queue>.replay` keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayProgress {
    /// The log read.
    pub log: String,
    /// The replay point as it was asked for (`1h`, a time, `first`): a service that finished
    /// a replay from one point does not replay it again at its next start.
    pub since: String,
    /// The token of the marker the replay stops at.
    pub marker: String,
    /// The marker's offset, when it was read back: the replay stops there even when it began
    /// after it.
    pub marker_offset: Option<u64>,
    /// The next offset to read.
    pub next: LogStart,
    /// Events replayed so far.
    pub replayed: u64,
    /// Events read so far.
    pub read: u64,
    /// Whether it reached its marker.
    pub done: bool,
    /// Saved while a pass over the log ran: found so at a start, the replayer ended without
    /// stopping (killed, or an event ended the process).
    pub running: bool,
    /// The offset after the last one read when saved.
    pub high: Option<u64>,
    /// The event running alone when saved (after an unclean end, events run one at a time so
    /// that the one ending the process is known).
    pub suspect: Option<u64>,
    /// How many times the process ended while `suspect` ran alone.
    pub crashes: u32,
    /// Which save this is: the latest wins.
    pub seq: u64,
}

impl ReplayProgress {
    /// A replay from `next` up to the marker `marker`.
    pub fn new(log: &str, since: &str, marker: String, next: LogStart) -> Self {
        Self {
            log: log.to_owned(),
            since: since.to_owned(),
            marker,
            marker_offset: None,
            next,
            replayed: 0,
            read: 0,
            done: false,
            running: false,
            high: None,
            suspect: None,
            crashes: 0,
            seq: 0,
        }
    }

    fn to_json(&self) -> Value {
        let next = match self.next {
            LogStart::Offset(n) => json!({ "offset": n }),
            LogStart::Time(t) => json!({ "time": t }),
            LogStart::First => json!("first"),
            LogStart::Last => json!("last"),
        };
        json!({ "log": self.log, "since": self.since, "marker": self.marker,
                "marker_offset": self.marker_offset, "next": next,
                "replayed": self.replayed, "read": self.read, "done": self.done,
                "running": self.running, "high": self.high, "suspect": self.suspect,
                "crashes": self.crashes, "seq": self.seq })
    }

    fn from_json(v: &Value) -> Option<Self> {
        let next = &v["next"];
        let next = if let Some(n) = next["offset"].as_u64() {
            LogStart::Offset(n)
        } else if let Some(t) = next["time"].as_u64() {
            LogStart::Time(t)
        } else if next == "last" {
            LogStart::Last
        } else {
            LogStart::First
        };
        Some(Self {
            log: v["log"].as_str()?.to_owned(),
            since: v["since"].as_str().unwrap_or_default().to_owned(),
            marker: v["marker"].as_str()?.to_owned(),
            marker_offset: v["marker_offset"].as_u64(),
            next,
            replayed: v["replayed"].as_u64().unwrap_or(0),
            read: v["read"].as_u64().unwrap_or(0),
            done: v["done"].as_bool().unwrap_or(false),
            running: v["running"].as_bool().unwrap_or(false),
            high: v["high"].as_u64(),
            suspect: v["suspect"].as_u64(),
            crashes: (v["crashes"].as_u64()).map_or(0, |c| u32::try_from(c).unwrap_or(u32::MAX)),
            seq: v["seq"].as_u64().unwrap_or(0),
        })
    }
}

/// Where a replay keeps its progress, one message in a queue of its own (a service's replay
/// in `<queue>.replay`, `tchu replay`'s in `<queue>.replay.tool`), so that an interrupted
/// replay resumes where it stopped and a finished one is known as finished.
#[derive(Debug)]
pub struct ReplayCheckpoint {
    name: String,
}

impl ReplayCheckpoint {
    /// Declares the queue `name` (durable, classic: a quorum queue would count the record's
    /// requeues towards its delivery limit, and drop it) on `channel`, which must be in
    /// confirm mode.
    ///
    /// # Errors
    /// [`Error::Amqp`] when the broker refuses.
    pub async fn open(channel: &Channel, name: &str) -> Result<Self> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("classic".into()),
        );
        (channel.queue_declare(name.into(), durable, args).await)
            .map_err(Error::amqp("queue.declare"))?;
        Ok(Self {
            name: name.to_owned(),
        })
    }

    /// The latest progress kept (a save cut short may have left the one before beside it).
    ///
    /// # Errors
    /// [`Error::Amqp`] when the channel is lost.
    pub async fn load(&self, channel: &Channel) -> Result<Option<ReplayProgress>> {
        let mut latest: Option<ReplayProgress> = None;
        let mut last_tag = None;
        for _ in 0..8 {
            let Some(msg) = self.take(channel).await? else {
                break;
            };
            last_tag = Some(msg.delivery.delivery_tag);
            let v: Value = serde_json::from_slice(&msg.delivery.data).unwrap_or_default();
            if let Some(p) = ReplayProgress::from_json(&v)
                && latest.as_ref().is_none_or(|l| p.seq > l.seq)
            {
                latest = Some(p);
            }
        }
        if let Some(tag) = last_tag {
            let back = BasicNackOptions {
                multiple: true,
                requeue: true,
            };
            (channel.basic_nack(tag, back).await).map_err(Error::amqp("basic.nack"))?;
        }
        Ok(latest)
    }

    /// Keeps `p` as the progress: written (confirmed) before the older ones are dropped, so a
    /// replay killed meanwhile finds one or the other. A new replay's progress continues the
    /// `seq` of the one it replaces.
    ///
    /// # Errors
    /// [`Error::Amqp`] when the channel is lost, or as [`confirmed`].
    pub async fn save(&self, channel: &Channel, p: &mut ReplayProgress) -> Result<()> {
        p.seq += 1;
        let body = p.to_json().to_string();
        let props = BasicProperties::default().with_delivery_mode(2);
        let publish = channel.basic_publish(
            "".into(),
            self.name.as_str().into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            props,
        );
        let confirm = publish.await.map_err(Error::amqp("basic.publish"))?;
        confirmed(confirm, &self.name).await?;
        while let Some(msg) = self.take(channel).await? {
            let v: Value = serde_json::from_slice(&msg.delivery.data).unwrap_or_default();
            let tag = msg.delivery.delivery_tag;
            // Older, or not a record at all: dropped.
            if v["seq"].as_u64().is_none_or(|s| s < p.seq) {
                let ack = channel.basic_ack(tag, BasicAckOptions::default());
                ack.await.map_err(Error::amqp("basic.ack"))?;
            } else {
                let back = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                let nack = channel.basic_nack(tag, back);
                return nack.await.map_err(Error::amqp("basic.nack"));
            }
        }
        Ok(())
    }

    async fn take(&self, channel: &Channel) -> Result<Option<lapin::message::BasicGetMessage>> {
        let get = channel.basic_get(self.name.as_str().into(), BasicGetOptions { no_ack: false });
        get.await.map_err(Error::amqp("basic.get"))
    }

    /// Deletes `<queue>.replay`: the replay is over and nothing needs to remember it.
    ///
    /// # Errors
    /// [`Error::Amqp`] when the broker refuses.
    pub async fn delete(&self, channel: &Channel) -> Result<()> {
        let delete = channel.queue_delete(self.name.as_str().into(), QueueDeleteOptions::default());
        delete.await.map(drop).map_err(Error::amqp("queue.delete"))
    }
}

/// Takes the lock on replaying into `queue`: an exclusive queue `<queue>.replay.lock` on
/// `channel`, which the broker deletes with the channel's connection (a replayer killed
/// with SIGKILL lets go of it). `false` when another connection holds it; the broker then
/// closes `channel`.
///
/// # Errors
/// [`Error::Amqp`] when the channel is lost for another reason.
pub async fn lock_replay(channel: &Channel, queue: &str) -> Result<bool> {
    let name = format!("{queue}.replay.lock");
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    match channel
        .queue_declare(name.as_str().into(), exclusive, FieldTable::default())
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if resource_locked(&e) => Ok(false),
        Err(e) => Err(Error::amqp("queue.declare (the replay's lock)")(e)),
    }
}

/// Whether the broker refused because another connection holds an exclusive queue (405
/// RESOURCE_LOCKED).
fn resource_locked(e: &lapin::Error) -> bool {
    soft_error(e, lapin::protocol::AMQPSoftError::RESOURCELOCKED)
}

/// Whether the broker refused because there is no such queue (404 NOT_FOUND).
fn not_found(e: &lapin::Error) -> bool {
    soft_error(e, lapin::protocol::AMQPSoftError::NOTFOUND)
}

fn soft_error(e: &lapin::Error, which: lapin::protocol::AMQPSoftError) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(a)
            if a.kind() == &lapin::protocol::AMQPErrorKind::Soft(which)
    )
}
