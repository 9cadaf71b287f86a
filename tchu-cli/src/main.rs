//! `tchu`: the command-line tool of the tchu framework (`cargo install --path tchu-cli`).
//!
//! ```text
//! tchu [--url URL] [--json] <command>
//!
//!   publish TOPIC JSON [--format v2|v1|native] [--tchu-tchu 2|3]   publish an event (confirmed)
//!   call TOPIC JSON [--timeout 30s] [--tchu-tchu 2|3]   call an RPC responder, print its answer
//!   dlq list QUEUE [--limit N]                      list a dead-letter queue without consuming it
//!   dlq show QUEUE [INDEX] [--all]                  one parked message in full (default: the first)
//!   dlq replay QUEUE [--limit N] [--id MSGID] [--force]   send parked messages back to their service
//!   dlq purge QUEUE --yes                           delete every parked message
//!   tail PATTERN [--count N] [--timeout D] [--headers]   print matching events live
//!   inbox schema                                    the SQL of the inbox table
//!   outbox schema                                   the SQL of the outbox table
//!   outbox relay [--database-url URL] [--batch N]   publish what the outbox stored
//!   outbox pending [--database-url URL]             how many messages wait in the outbox
//!   schema diff OLD_DIR NEW_DIR [--allow FILE]      the schema compatibility gate (exit 1: breaking)
//! ```
//!
//! # Conventions
//! - **Broker**: `--url`, else `TCHU_BROKER_URL`, else `amqp://guest:guest@127.0.0.1:5672/%2f`.
//!   A comma-separated list is tried in order. `amqps://` needs the `tls` feature;
//!   `TCHU_TLS_CA_FILE` names an extra CA to trust. Passwords are redacted whenever a URL is
//!   printed. Connecting gives up after 15 s per address.
//! - **Output**: results go to stdout, progress and diagnostics to stderr (also with `--json`).
//!   With `--json`, stdout carries JSON only: one object for a single result (`publish`,
//!   `call`, `dlq show`, `dlq purge`), one object per line for streams and lists (`tail`,
//!   `dlq list`, `dlq replay`, `dlq show --all`), lists ending with a summary object marked
//!   `"summary": true`. A failure prints `tchu: <message>` on stderr and, with `--json`, an
//!   object `{"ok": false, "error": <kind>, "message": ..., "detail"?: ...}` on stdout.
//!   stdout is flushed after every line, so a pipe sees each event as it arrives; a closed
//!   stdout (`tchu tail ... | head -1`) ends the command quietly with 0.
//! - **Exit codes** (constants in `exit.rs`, listed by `--help`): 0 success; 1 the operation
//!   failed (broker refusal, unroutable topic, missing queue, no responder, an undecodable
//!   answer); 2 usage error (clap's, and invalid input found before connecting: bad topic or
//!   pattern, JSON that is not an object, `purge` without `--yes`); 3 cannot connect to the
//!   broker (or the connection was lost); 4 `call` timed out; 5 the responder answered with an
//!   error (business error, failed or panicking handler, Python dispatcher failure).
//! - Logs of the tchu library are off unless `RUST_LOG` is set.
//!
//! # Dead-letter queues
//! A service with queue `Q` parks what it cannot handle in `Q.dlq` with `x-tchu-*` headers
//! (`x-tchu-queue`, `x-tchu-handler`, `x-tchu-error-kind`, `x-tchu-error`, `x-tchu-attempts`,
//! `x-tchu-failed-at`, `x-tchu-original-routing-key`). `QUEUE` may name the service queue `Q`
//! or `Q.dlq` itself (a name ending in `.dlq` is taken as is).
//! - `list` and `show` never consume: they `basic.get` without acknowledging, at most as many
//!   messages as the queue held when the command started (each get bounded by 30 s), then give
//!   them all back with one `basic.nack(multiple, requeue)`, which keeps their order. Should the
//!   tool die half-way, the broker requeues the unacknowledged messages itself.
//! - `replay` takes one message at a time and republishes it on the default exchange to the
//!   service queue (`x-tchu-queue`, else the DLQ name without `.dlq`), persistent, mandatory
//!   and confirmed, with the same body and properties; headers lose the diagnostics
//!   (`x-tchu-error*`, `x-tchu-failed-at`, `x-tchu-attempts`, `x-tchu-queue`,
//!   `x-tchu-last-error`) and the retry state (`x-tchu-attempt`, `x-tchu-delay-remaining`), so
//!   the attempt count starts afresh, and gain `x-tchu-replayed` (how many times the message was
//!   replayed). `x-tchu-handler` and `x-tchu-original-routing-key` stay: the service re-runs only
//!   the handler that failed, on the event's topic. The DLQ copy is acknowledged only after the
//!   broker confirmed the republished one; if a publish fails, that message and every skipped one
//!   go back to the DLQ and the command exits 1. The run is bounded by the count at the start; a
//!   message that fails again during the run and returns to the DLQ is left there, not replayed
//!   twice. `--id` replays only the message(s) with that id (one copy per failed handler), the
//!   others going back untouched. Output: progress on stderr every 500 messages
//!   (`replayed 500/2000`), then `replayed K message(s) from Q.dlq to Q`; with `--json`, one
//!   `{"id", "topic", "handler", "to"}` per replayed message, then `{"summary": true,
//!   "replayed", "from", "to", "examined", "came_back", "left"}` (`left`: messages present at
//!   the start that were not replayed).
//! - Caveat: on a quorum dead-letter queue (`Service::quorum(true)`), RabbitMQ 4.0 to 4.2 count
//!   every requeue as a delivery attempt and drop a message past the queue's `delivery-limit`
//!   (20 by default), so `list` and `show` print a note when they see `x-delivery-count`.
//!
//! # Tail
//! `tail` declares the `tchu_events` exchange as services do (topic, durable, no arguments),
//! binds an exclusive, auto-deleted, server-named queue to `PATTERN`, prints
//! `tailing PATTERN (Ctrl-C to stop)` on stderr once the binding is in place, then one line per
//! event: `<UTC time> <topic> <id> <payload JSON>`, or with `--json`
//! `{"received_at", "topic", "routing_key", "id", "format", "rpc", "payload"}` (plus `headers`
//! with `--headers`; `task` for a foreign Celery task; `decode_error` and `body` for a message
//! that does not decode). It stops on Ctrl-C (or SIGTERM), after `--count` events or after
//! `--timeout`, and exits 0.

mod broker;
mod dlq;
mod exit;
mod log;
mod output;
mod publish;
mod sagas;
mod schedules;
mod schema;
mod stores;
mod tail;

use clap::{Args, Parser, Subcommand, ValueEnum};
use exit::Failure;
use output::Out;
use std::process::ExitCode;
use std::time::Duration;

const AFTER_HELP: &str = "\
Broker: --url, else $TCHU_BROKER_URL, else amqp://guest:guest@127.0.0.1:5672/%2f.

Exit codes:
  0  success
  1  the operation failed (broker refusal, unroutable topic, missing queue, no responder)
  2  usage error (bad arguments, invalid topic or JSON, purge without --yes)
  3  cannot connect to the broker
  4  timeout (call)
  5  the responder answered with an error (business error, failed handler)";

/// The `tchu` command line.
#[derive(Debug, Parser)]
#[command(
    name = "tchu",
    version,
    about = "Publish, call, inspect dead letters and tail events on a tchu (RabbitMQ) broker",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Broker URL, or several separated by commas [default: $TCHU_BROKER_URL, else
    /// amqp://guest:guest@127.0.0.1:5672/%2f]
    #[arg(long, global = true, value_name = "URL")]
    url: Option<String>,
    /// Machine-readable output on stdout: JSON objects, one per line
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Publish an event (confirmed by the broker; an event no queue is bound to is an error)
    Publish(PublishArgs),
    /// Call an RPC responder and print its answer
    Call(CallArgs),
    /// Inspect, replay or purge a service's dead-letter queue
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Print events matching a pattern as they are published
    Tail(TailArgs),
    /// The inbox of `dedup` handlers (PostgreSQL)
    Inbox {
        #[command(subcommand)]
        command: stores::InboxCommand,
    },
    /// The transactional outbox (PostgreSQL): its schema, its relay
    Outbox {
        #[command(subcommand)]
        command: stores::OutboxCommand,
    },
    /// Sagas in progress (PostgreSQL): list, show, schema
    Saga {
        #[command(subcommand)]
        command: sagas::SagaCommand,
    },
    /// The event log (a stream of every event): declare, grep, tail
    Log {
        #[command(subcommand)]
        command: log::LogCommand,
    },
    /// Replay past events of the log into one service's queue, up to now
    Replay(log::ReplayArgs),
    /// Schedules (PostgreSQL): list (next run, last run and its outcome), schema
    Schedule {
        #[command(subcommand)]
        command: schedules::ScheduleCommand,
    },
    /// Schema compatibility between two versions of a service
    Schema {
        #[command(subcommand)]
        command: schema::SchemaCommand,
    },
}

/// `tchu publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The topic, like `user.created`
    pub topic: String,
    /// The payload: a JSON object, or `-` to read it from stdin
    #[arg(value_name = "JSON")]
    pub payload: String,
    /// Wire format: tchu-tchu's Celery v2 (default), Celery v1 (serverless producer), or native
    #[arg(long, value_enum, default_value_t = WireFormat::V2)]
    pub format: WireFormat,
    /// The Python tchu-tchu the consumers run: `2` writes the Celery message without
    /// `_tchu_meta`, as tchu-tchu 2.x does (default: `TCHU_TCHU_VERSION`, else 3)
    #[arg(long = "tchu-tchu", value_name = "VERSION", value_parser = parse_tchu_tchu)]
    pub tchu_tchu: Option<tchu::TchuTchu>,
    /// Deliver it this long from now, held by the broker (`90s`, `15m`)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub delay: Option<Duration>,
    /// An extra header, `NAME=VALUE` (a JSON value, else a string); repeatable
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, serde_json::Value)>,
    /// Dropped unread from a queue after this long (AMQP `expiration`)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub expiration: Option<Duration>,
    /// AMQP priority, 0 to 9
    #[arg(long, value_name = "N")]
    pub priority: Option<u8>,
}

impl PublishArgs {
    /// The publish options the flags ask for.
    pub fn options(&self) -> tchu::PublishOptions {
        let mut o = tchu::PublishOptions::new();
        if let Some(d) = self.delay {
            o = o.delay(d);
        }
        for (name, value) in &self.headers {
            o = o.header(name.clone(), value.clone());
        }
        if let Some(t) = self.expiration {
            o = o.expiration(t);
        }
        if let Some(p) = self.priority {
            o = o.priority(p);
        }
        o
    }
}

/// `tchu call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The request topic, like `rpc.payments.process`
    pub topic: String,
    /// The request payload: a JSON object, or `-` to read it from stdin
    #[arg(value_name = "JSON")]
    pub payload: String,
    /// How long to wait for the answer: `500ms`, `5s`, `2m`, `1h`
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// The Python tchu-tchu the responders run: `2` writes the request without `_tchu_meta`
    /// (default: `TCHU_TCHU_VERSION`, else 3)
    #[arg(long = "tchu-tchu", value_name = "VERSION", value_parser = parse_tchu_tchu)]
    pub tchu_tchu: Option<tchu::TchuTchu>,
}

/// `tchu dlq ...`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List the messages parked in a dead-letter queue, without consuming them
    List {
        /// The service queue `Q` or its dead-letter queue `Q.dlq`
        queue: String,
        /// List at most N messages (from the head of the queue)
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
    /// Show one parked message in full: properties, headers, decoded payload
    Show {
        /// The service queue `Q` or its dead-letter queue `Q.dlq`
        queue: String,
        /// Position in the queue, 0 being the oldest
        #[arg(default_value_t = 0, conflicts_with = "all")]
        index: u64,
        /// Show every message
        #[arg(long)]
        all: bool,
    },
    /// Send parked messages back to their service queue, attempt count reset; for a key of an
    /// ordered handler, ask the service to run its first parked message again, then the held
    /// ones in order
    Replay {
        /// The service queue `Q` or its dead-letter queue `Q.dlq`
        queue: String,
        /// Replay at most N messages (from the head of the queue)
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// Replay only the message(s) with this id; the others stay untouched
        #[arg(long, value_name = "MSGID")]
        id: Option<String>,
        /// Run `dedup` handlers even when the inbox recorded the message's key (and record it
        /// again); without it, a replayed message whose effect happened is skipped
        #[arg(long)]
        force: bool,
    },
    /// Drop one parked message; for the first parked message of a key of an ordered handler,
    /// the service then runs the ones held behind it, in order
    Skip {
        /// The service queue `Q` or its dead-letter queue `Q.dlq`
        queue: String,
        /// The id of the message to drop
        #[arg(long, value_name = "MSGID")]
        id: String,
    },
    /// Delete every message parked in a dead-letter queue
    Purge {
        /// The service queue `Q` or its dead-letter queue `Q.dlq`
        queue: String,
        /// Confirm the deletion (required)
        #[arg(long)]
        yes: bool,
    },
}

/// `tchu tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Binding pattern on `tchu_events`: `*` matches one word, `#` zero or more
    pub pattern: String,
    /// Stop after N events
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Stop after this long: `500ms`, `5s`, `2m`, `1h`
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Print the AMQP headers of each event too
    #[arg(long)]
    pub headers: bool,
}

/// The wire formats `publish` can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WireFormat {
    /// Celery task protocol v2, what tchu-tchu's `TchuClient` sends
    V2,
    /// Celery task protocol v1, what tchu-tchu's `ServerlessProducer` sends
    V1,
    /// The bare payload object
    Native,
}

impl WireFormat {
    /// The library's format.
    pub fn format(self) -> tchu::Format {
        match self {
            Self::V2 => tchu::Format::CeleryV2,
            Self::V1 => tchu::Format::CeleryV1,
            Self::Native => tchu::Format::Native,
        }
    }

    /// The name used on the command line and in output.
    pub fn name(self) -> &'static str {
        match self {
            Self::V2 => "v2",
            Self::V1 => "v1",
            Self::Native => "native",
        }
    }
}

/// `2`, `2.4.0`, `3`...: tchu-tchu's major version decides.
fn parse_tchu_tchu(s: &str) -> Result<tchu::TchuTchu, String> {
    tchu::TchuTchu::parse(s)
        .ok_or_else(|| format!("`{s}` is not a tchu-tchu version: expected 2 or 3 (like 2.4.0)"))
}

/// `NAME=VALUE`: an integer or `true`/`false` as such, anything else as a string (so `1.10`
/// stays `"1.10"`).
fn parse_header(s: &str) -> Result<(String, serde_json::Value), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))?;
    let typed = match value {
        "true" => Some(true.into()),
        "false" => Some(false.into()),
        v => v.parse::<i64>().ok().map(Into::into),
    };
    Ok((name.to_owned(), typed.unwrap_or_else(|| value.into())))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    tchu::retry::parse_duration(s).map_err(|e| e.to_string())
}

/// The broker URL: `--url`, else `TCHU_BROKER_URL`, else tchu's default.
fn broker_url(flag: Option<String>) -> String {
    flag.or_else(|| std::env::var(tchu::BROKER_URL_ENV).ok())
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| tchu::DEFAULT_BROKER_URL.to_owned())
}

async fn run(cli: Cli, out: &Out) -> Result<(), Failure> {
    let url = broker_url(cli.url);
    match cli.command {
        Command::Publish(args) => publish::publish(&url, &args, out).await,
        Command::Call(args) => publish::call(&url, &args, out).await,
        Command::Dlq { command } => dlq::run(&url, command, out).await,
        Command::Tail(args) => tail::run(&url, &args, out).await,
        Command::Inbox { command } => stores::inbox(&command, out),
        Command::Outbox { command } => stores::outbox(&url, command, out).await,
        Command::Saga { command } => sagas::saga(command, out).await,
        Command::Schedule { command } => schedules::schedule(command, out).await,
        Command::Log { command } => log::run(&url, command, out).await,
        Command::Replay(args) => log::replay::run(&url, &args, out).await,
        Command::Schema { command } => schema::run(&command, cli.json),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tchu::init_tracing();
    }
    let out = Out::new(cli.json);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tchu: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    match runtime.block_on(run(cli, &out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            out.report(&failure);
            ExitCode::from(failure.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from([
            "tchu", "publish", "a.b", "{}", "--json", "--url", "amqp://x",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.url.as_deref(), Some("amqp://x"));
        let Command::Publish(p) = cli.command else {
            panic!("not publish")
        };
        assert_eq!(
            (p.topic.as_str(), p.payload.as_str(), p.format),
            ("a.b", "{}", WireFormat::V2)
        );
    }

    #[test]
    fn durations_and_counts_are_checked() {
        let call =
            Cli::try_parse_from(["tchu", "call", "a.b", "{}", "--timeout", "500ms"]).unwrap();
        let Command::Call(c) = call.command else {
            panic!("not call")
        };
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert!(Cli::try_parse_from(["tchu", "call", "a.b", "{}", "--timeout", "5"]).is_err());
        assert!(Cli::try_parse_from(["tchu", "tail", "a.#", "--count", "0"]).is_err());
    }
}
