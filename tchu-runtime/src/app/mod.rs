//! The service binary: what `tchu::run!()` expands to, and the commands a service binary
//! answers besides `run` (`topology`, `check`, `schema` with its compatibility gate,
//! `asyncapi`).
//!
//! The library decides, the binary exits: [`run_app`] returns an [`AppExit`] and the code
//! `run!()` generates in the user's `main` turns it into the process's exit status.

pub mod check;
pub mod command;
pub mod contracts;
pub mod documents;
pub mod logs;
pub mod topology;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::error_chain;
use crate::service::{DEFAULT_PREFETCH, Service};
use command::{Command, USAGE};
pub use logs::init_tracing;
use tracing::error;

/// How a service binary ends.
#[derive(Debug)]
#[must_use = "the binary's exit status"]
pub enum AppExit {
    /// The service ran and stopped: `main` returns this result.
    Ran(Result<()>),
    /// A command other than `run` finished, or the command line was wrong: the process exits
    /// with this status.
    Code(i32),
}

impl AppExit {
    /// The exit status a service that stopped at once after a second signal ends with
    /// (128 + SIGINT, as shells report it).
    pub const INTERRUPTED: i32 = 130;
}

/// Environment variable choosing the type of a `run!()` service's queues: `quorum` or
/// `classic` (default: what the service was built with, classic unless
/// [`Service::quorum`](crate::Service::quorum)).
pub const QUEUE_TYPE_ENV: &str = "TCHU_QUEUE_TYPE";

/// Environment variable giving a `run!()` service a replay point of the event log
/// ([`Service::replay_from`](crate::Service::replay_from)), over `run!(replay_from = ...)`:
/// `1h`, `2d`, an RFC 3339 time, `first` or `offset:N`.
pub const REPLAY_FROM_ENV: &str = "TCHU_REPLAY_FROM";

/// Environment variable naming the event log a replay reads
/// ([`Service::event_log`](crate::Service::event_log)).
pub const EVENT_LOG_ENV: &str = "TCHU_EVENT_LOG";

fn replay_from_env(service: Service) -> Service {
    let service = match std::env::var(REPLAY_FROM_ENV) {
        Ok(since) if !since.is_empty() => service.replay_from(since),
        _ => service,
    };
    match std::env::var(EVENT_LOG_ENV) {
        Ok(log) if !log.is_empty() => service.event_log(log),
        _ => service,
    }
}

/// Runs a service the way `tchu::run!()` does: reads the command line (see [`command`]); for
/// `run` (the default) logs to stderr (unless a subscriber is already installed), connects
/// with [`Client::from_env`], and runs until SIGINT or SIGTERM. Any other command prints its
/// result and says which exit status the process ends with.
pub async fn run_app(service: Service) -> AppExit {
    let service = replay_from_env(service);
    let service = match std::env::var(QUEUE_TYPE_ENV).as_deref() {
        Ok("quorum") => service.quorum(true),
        Ok("classic") => service.quorum(false),
        Ok(other) => {
            eprintln!("error: {QUEUE_TYPE_ENV}={other:?}: expected `quorum` or `classic`");
            return AppExit::Code(2);
        }
        Err(_) => service,
    };
    // Lossy: a non-UTF-8 argument is then an unknown command, not a panic.
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match Command::parse(&args) {
        Ok(Command::Run) => {}
        Ok(cmd) => return AppExit::Code(command::execute(&service, &cmd).await),
        Err(msg) => {
            eprintln!("error: {msg}\n\n{USAGE}");
            return AppExit::Code(2);
        }
    }
    match serve(service).await {
        Err(Error::Interrupted) => AppExit::Code(AppExit::INTERRUPTED),
        res => AppExit::Ran(res),
    }
}

/// The `run` command: connect, consume until a signal, close.
async fn serve(service: Service) -> Result<()> {
    init_tracing();
    crate::observe::install_prometheus_from_env()?;
    #[cfg(feature = "otel")]
    crate::observe::otlp::install_from_env()?;
    let client = Client::from_env().await?;
    let res = service.run(&client).await;
    client.close().await;
    #[cfg(feature = "otel")]
    let _ = tokio::task::spawn_blocking(|| {
        crate::observe::otlp::flush(std::time::Duration::from_secs(5));
    })
    .await;
    if let Err(e) = &res {
        error!(help = "tchu::troubleshooting#service-stopped", error = %error_chain(&e), "service stopped with an error");
    }
    res
}

/// The queue name `run!()` uses: `TCHU_QUEUE` if set, else the one given, else the crate name.
pub fn queue_name(given: Option<&str>, crate_name: &str) -> String {
    std::env::var("TCHU_QUEUE")
        .ok()
        .filter(|q| !q.is_empty())
        .or_else(|| given.map(str::to_owned))
        .unwrap_or_else(|| crate_name.to_owned())
}

/// The prefetch `run!()` uses: `TCHU_PREFETCH` if set and valid, else the one given, else the
/// default.
pub fn prefetch_from_env(given: Option<u16>) -> u16 {
    std::env::var("TCHU_PREFETCH")
        .ok()
        .and_then(|p| p.parse().ok())
        .or(given)
        .unwrap_or(DEFAULT_PREFETCH)
}
