//! Reading the event log: a stream consumer from a starting point, flow-controlled by its
//! prefetch (the stream hands out no more than that unacknowledged), and the marker a tool
//! writes to know where "now" is.

use super::{ReadArgs, Start, parse_since};
use crate::broker::{self, op};
use crate::exit::Failure;
use crate::output::Out;
use futures_lite::StreamExt;
use lapin::Confirmation;
use lapin::options::ConfirmSelectOptions;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use serde_json::Value;
use tchu::headers::LOG_MARKER_HEADER;

/// Events a reader holds unacknowledged at most: what bounds its memory.
pub(crate) const READ_WINDOW: u16 = 500;

/// One event of the log.
pub(crate) struct Entry {
    pub(crate) offset: u64,
    pub(crate) delivery: lapin::message::Delivery,
}

impl Entry {
    /// The marker's token, when it is one.
    pub(crate) fn marker(&self) -> Option<String> {
        let headers = self.delivery.properties.headers().as_ref()?;
        let v = headers.inner().get(LOG_MARKER_HEADER)?;
        Some(
            broker::amqp_to_value(v)
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    }

    /// Its topic: the routing key it was published with.
    pub(crate) fn topic(&self) -> &str {
        self.delivery.routing_key.as_str()
    }
}

/// A consumer of the log from a starting point.
pub(crate) struct Reader {
    pub(crate) ch: Channel,
    consumer: lapin::Consumer,
}

impl Reader {
    /// Opens a consumer of `log` at `start`, holding at most `window` events unacknowledged.
    pub(crate) async fn open(
        conn: &Connection,
        log: &str,
        start: Start,
        window: u16,
    ) -> Result<Self, Failure> {
        let ch = op("channel.open", conn.create_channel()).await?;
        op(
            "basic.qos",
            ch.basic_qos(window, BasicQosOptions::default()),
        )
        .await?;
        let mut args = FieldTable::default();
        args.insert("x-stream-offset".into(), start.argument());
        let consume = ch.basic_consume(
            log.into(),
            "tchu-log".into(),
            BasicConsumeOptions::default(),
            args,
        );
        let consumer = op("basic.consume", consume).await.map_err(|mut f| {
            f.message = format!("{} (`tchu log declare` makes the log)", f.message);
            f
        })?;
        Ok(Self { ch, consumer })
    }

    /// The next event, acknowledged (a stream keeps it; the acknowledgement is credit).
    pub(crate) async fn next(&mut self) -> Result<Entry, Failure> {
        match self.consumer.next().await {
            Some(Ok(delivery)) => {
                let offset = stream_offset(&delivery.properties);
                let ack = self
                    .ch
                    .basic_ack(delivery.delivery_tag, BasicAckOptions::default());
                op("basic.ack", ack).await?;
                Ok(Entry { offset, delivery })
            }
            Some(Err(e)) => Err(broker::amqp_failure("consuming the log", &e)),
            None => Err(Failure::failed(
                "cancelled",
                "the broker cancelled the log's consumer",
            )),
        }
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
        Some(v) => broker::amqp_to_value(&v).as_u64().unwrap_or(0),
        None => 0,
    }
}

/// Writes a marker at the end of the log (to the stream itself, not through tchu_events: no
/// service receives it), confirmed. Everything before it in the log was published before now.
pub(crate) async fn write_marker(conn: &Connection, log: &str) -> Result<String, Failure> {
    let ch = op("channel.open", conn.create_channel()).await?;
    op(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut headers = FieldTable::default();
    headers.insert(
        LOG_MARKER_HEADER.into(),
        AMQPValue::LongString(token.as_str().into()),
    );
    let props = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2);
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let publish = ch.basic_publish("".into(), log.into(), mandatory, b"", props);
    let confirm = op("basic.publish", publish).await?;
    match op("publisher confirm", confirm).await? {
        Confirmation::Ack(None) | Confirmation::NotRequested => {
            let _ = ch.close(200, "marker written".into()).await;
            Ok(token)
        }
        Confirmation::Ack(Some(_)) => Err(Failure::failed(
            "not_found",
            format!("the log `{log}` does not exist: `tchu log declare` makes it"),
        )),
        Confirmation::Nack(_) => Err(Failure::failed("nacked", "the broker refused the marker")),
    }
}

/// `tchu log grep`: the matching events from `--since` to now, then stop.
pub async fn grep(url: &str, args: &ReadArgs, out: &Out) -> Result<(), Failure> {
    read(url, args, out, true).await
}

/// `tchu log tail`: the matching events from `--since`, then new ones until Ctrl-C,
/// `--count` or `--timeout`.
pub async fn tail(url: &str, args: &ReadArgs, out: &Out) -> Result<(), Failure> {
    read(url, args, out, false).await
}

async fn read(url: &str, args: &ReadArgs, out: &Out, up_to_now: bool) -> Result<(), Failure> {
    tchu::topic::validate_pattern(&args.pattern)
        .map_err(|e| Failure::usage(format!("invalid pattern `{}`: {e}", args.pattern)))?;
    let start = parse_since(&args.since)?;
    let conn = broker::connect(url).await?;
    let result = async {
        let marker = match up_to_now {
            true => Some(write_marker(&conn, &args.log).await?),
            false => None,
        };
        let mut reader = Reader::open(&conn, &args.log, start, READ_WINDOW).await?;
        print_until(&mut reader, args, marker.as_deref(), out).await
    };
    let printed = bounded(args.timeout, result).await;
    let _ = conn.close(200, "tchu log done".into()).await;
    out.info(format_args!("{} event(s)", printed?));
    Ok(())
}

/// Runs `f`, or stops it after `timeout` (what it printed stands).
async fn bounded(
    timeout: Option<std::time::Duration>,
    f: impl Future<Output = Result<u64, Failure>>,
) -> Result<u64, Failure> {
    let stop = tchu::shutdown_signal();
    tokio::select! {
        r = f => r,
        () = stop => Ok(0),
        () = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        } => Ok(0),
    }
}

/// Prints the matching events until `marker` (or for ever), or `--count` of them.
async fn print_until(
    reader: &mut Reader,
    args: &ReadArgs,
    marker: Option<&str>,
    out: &Out,
) -> Result<u64, Failure> {
    let mut printed = 0u64;
    loop {
        let e = reader.next().await?;
        match e.marker() {
            Some(m) if Some(m.as_str()) == marker => return Ok(printed),
            Some(_) => continue,
            None => {}
        }
        if !tchu::topic::pattern_matches(&args.pattern, e.topic()) {
            continue;
        }
        print_entry(out, &args.log, &e)?;
        printed += 1;
        if args.count.is_some_and(|n| printed >= n) {
            return Ok(printed);
        }
    }
}

fn print_entry(out: &Out, log: &str, e: &Entry) -> Result<(), Failure> {
    let d = &e.delivery;
    let described = broker::describe(e.topic(), &d.properties, &d.data);
    if out.json {
        let mut m = serde_json::Map::new();
        m.insert("log".into(), log.into());
        m.insert("offset".into(), e.offset.into());
        m.insert("routing_key".into(), e.topic().into());
        m.extend(described.to_json(&d.data));
        return out.object(&Value::Object(m));
    }
    let id = if described.id.is_empty() {
        "-"
    } else {
        described.id.as_str()
    };
    let body = match &described.payload {
        Some(p) => p.to_string(),
        None => crate::output::one_line(&String::from_utf8_lossy(&d.data), 200),
    };
    out.line(&format!("{} {} {id} {body}", e.offset, described.topic))
}
