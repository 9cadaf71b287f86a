//! Reading the event log: a stream consumer from a starting point, flow-controlled by its
//! prefetch (the stream hands out no more than that unacknowledged), and the marker a tool
//! writes to know where "now" is.

use super::{ReadArgs, parse_since};
use crate::broker::{self, op};
use crate::exit::Failure;
use crate::output::Out;
use lapin::Connection;
use serde_json::Value;
use tchu::amqp::log::{LogEntry, LogReader, LogStart};

/// Events a reader holds unacknowledged at most: what bounds its memory.
pub(crate) const READ_WINDOW: u16 = 500;

/// Opens a reader of `log` at `start` on a channel of its own.
pub(crate) async fn open_reader(
    conn: &Connection,
    log: &str,
    start: LogStart,
    window: u16,
) -> Result<LogReader, Failure> {
    let ch = op("channel.open", conn.create_channel()).await?;
    LogReader::open(ch, log, start, window).await.map_err(|e| {
        let mut f = Failure::from_tchu(&e);
        f.message = format!("{} (`tchu log declare` makes the log)", f.message);
        f
    })
}

/// Reads the next event.
pub(crate) async fn next(reader: &mut LogReader) -> Result<LogEntry, Failure> {
    reader.next().await.map_err(|e| Failure::from_tchu(&e))
}

/// Writes a marker at the end of the log and returns its token.
pub(crate) async fn write_marker(conn: &Connection, log: &str) -> Result<String, Failure> {
    let ch = op("channel.open", conn.create_channel()).await?;
    let token = tchu::amqp::log::write_marker(&ch, log).await;
    let _ = ch.close(200, "marker written".into()).await;
    token.map_err(|e| match e {
        tchu::Error::NotDeclared { .. } => Failure::failed(
            "not_found",
            format!("the log `{log}` does not exist: `tchu log declare` makes it"),
        ),
        e => Failure::from_tchu(&e),
    })
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
        let mut reader = open_reader(&conn, &args.log, start, READ_WINDOW).await?;
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
    reader: &mut LogReader,
    args: &ReadArgs,
    marker: Option<&str>,
    out: &Out,
) -> Result<u64, Failure> {
    let mut printed = 0u64;
    loop {
        let e = next(reader).await?;
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

fn print_entry(out: &Out, log: &str, e: &LogEntry) -> Result<(), Failure> {
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
