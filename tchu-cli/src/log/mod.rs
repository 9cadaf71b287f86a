//! `tchu log declare|grep|tail` and `tchu replay`: the event log, a RabbitMQ stream bound to
//! `tchu_events` with `#`, which keeps every event published (by tchu or Python tchu-tchu)
//! for as long as its retention says, and what reads it.

mod read;
pub mod replay;

use crate::broker::{self, op};
use crate::exit::Failure;
use crate::output::Out;
use clap::{Args, Subcommand};
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use std::time::Duration;

pub use replay::ReplayArgs;

pub use tchu::amqp::log::DEFAULT_LOG;
use tchu::amqp::log::LogStart;

/// `tchu log ...`.
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Declare the event log: a stream bound to tchu_events with `#` (idempotent)
    Declare {
        /// The stream's name
        #[arg(long, default_value = DEFAULT_LOG)]
        log: String,
        /// Keep events this long: `7D`, `12h`, `30m` (RabbitMQ's units Y, M, D, h, m, s)
        #[arg(long, default_value = "7D")]
        max_age: String,
        /// Keep at most this many bytes
        #[arg(long, value_name = "BYTES", default_value_t = 20_000_000_000)]
        max_bytes: u64,
        /// Segment size: retention drops whole segments (default: RabbitMQ's, 500 MB)
        #[arg(long, value_name = "BYTES")]
        segment_bytes: Option<u64>,
        /// Keep only the events matching this pattern (repeatable), a log per topic prefix
        #[arg(long = "bind", value_name = "PATTERN", default_value = "#")]
        binds: Vec<String>,
    },
    /// Print past events of the log matching a pattern, up to now, then stop
    Grep(ReadArgs),
    /// Print past events of the log matching a pattern, then new ones as they come
    Tail(ReadArgs),
}

/// What `log grep` and `log tail` read.
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Binding pattern on tchu_events: `*` matches one word, `#` zero or more
    #[arg(default_value = "#")]
    pub pattern: String,
    /// From when: back from now (`90s`, `15m`, `1h`, `2d`), a time (`2026-12-06T10:00:00Z`),
    /// `first`, or an offset (`offset:1234`)
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// The log's name
    #[arg(long, default_value = DEFAULT_LOG)]
    pub log: String,
    /// Stop after N matching events
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this long: `500ms`, `5s`, `2m`, `1h`
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration)]
    pub timeout: Option<Duration>,
}

/// Runs a log command.
pub async fn run(url: &str, command: LogCommand, out: &Out) -> Result<(), Failure> {
    match command {
        LogCommand::Declare {
            log,
            max_age,
            max_bytes,
            segment_bytes,
            binds,
        } => {
            for p in &binds {
                tchu::topic::validate_pattern(p)
                    .map_err(|e| Failure::usage(format!("invalid pattern `{p}`: {e}")))?;
            }
            let retention = Retention {
                max_age: &max_age,
                max_bytes,
                segment_bytes,
            };
            let conn = broker::connect(url).await?;
            let declared = declare(&conn, &log, &retention, &binds).await;
            let _ = conn.close(200, "tchu log declare done".into()).await;
            declared?;
            out.info(format_args!(
                "{log}: a stream bound to {} with {}, events kept {max_age} and up to {max_bytes} bytes",
                tchu::EXCHANGE,
                binds.join(", ")
            ));
            Ok(())
        }
        LogCommand::Grep(args) => read::grep(url, &args, out).await,
        LogCommand::Tail(args) => read::tail(url, &args, out).await,
    }
}

/// How long and how much the log keeps.
struct Retention<'a> {
    max_age: &'a str,
    max_bytes: u64,
    segment_bytes: Option<u64>,
}

/// Declares the log stream and binds it to `binds` on tchu_events.
async fn declare(
    conn: &lapin::Connection,
    log: &str,
    retention: &Retention<'_>,
    binds: &[String],
) -> Result<(), Failure> {
    let Retention {
        max_age,
        max_bytes,
        segment_bytes,
    } = *retention;
    let ch = op("channel.open", conn.create_channel()).await?;
    tchu::amqp::declare_exchange(&ch)
        .await
        .map_err(|e| Failure::from_tchu(&e))?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args.insert("x-max-age".into(), AMQPValue::LongString(max_age.into()));
    let bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
    args.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(bytes));
    if let Some(s) = segment_bytes {
        let s = i64::try_from(s).unwrap_or(i64::MAX);
        args.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(s),
        );
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    op(
        "queue.declare (a different retention is refused: delete the log to change it)",
        ch.queue_declare(log.into(), durable, args),
    )
    .await?;
    for key in binds {
        let bind = ch.queue_bind(
            log.into(),
            tchu::EXCHANGE.into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        );
        op("queue.bind", bind).await?;
    }
    Ok(())
}

/// Reads `--since`: a duration back from now, an RFC 3339 time, `first` or `offset:N`.
pub(crate) fn parse_since(s: &str) -> Result<LogStart, Failure> {
    LogStart::parse(s).map_err(|why| Failure::usage(format!("--since {why}")))
}
