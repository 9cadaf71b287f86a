//! The runtime of [tchu](https://docs.rs/tchu): RabbitMQ (through lapin) and in-memory transports,
//! the service topology, consumption and dispatch, and publishing with broker confirms.
//!
//! Use it through the `tchu` facade crate; this crate has no macros of its own.
//!
//! # Where things are
//!
//! The modules form a tree (`scripts/check-shape.py` checks it): `app` → `service` →
//! `dispatch` → `client` → `rpc` → `transport`. One question, one file:
//!
//! | Question | File |
//! |---|---|
//! | What does `tchu::run!()` do, and how does the binary exit? | `app/mod.rs` |
//! | The `topology`, `check`, `schema`, `asyncapi` commands | `app/{command, topology, check, documents}.rs` |
//! | How is a service started, consumed, drained? | `service/mod.rs` |
//! | What keeps a frame lapin cannot parse away from it? | `transport/amqp/guard/` |
//! | Is a delivery admitted or turned away (size, headers, trust, redeliveries)? | `dispatch/inbound.rs` |
//! | Which handlers does it go to? | `dispatch/route.rs` |
//! | Where are retries decided? | `dispatch/verdict.rs` |
//! | Where is a delivery acknowledged, requeued or copied (retry, dead letter)? | `dispatch/settle.rs` (only there) |
//! | How is the RPC answer sent? | `dispatch/reply.rs`, built by `tchu_core::rpc::reply_message` |
//! | How are control headers signed and checked? | `dispatch/trust.rs` |
//! | Where does the wire format live? | `tchu_core::envelope` (Celery v1/v2, native), `tchu_core::headers` (every header name, failure kinds), `docs/wire.md` |
//! | What is declared on the broker (queues, arguments, bindings)? | `transport/spec.rs` |
//! | How is the connection kept up (reconnect, fail over)? | `transport/amqp/{connection, supervise}.rs` |
//! | Publishing with confirms; RPC replies without | `transport/amqp/publish.rs` |
//! | Consuming and acknowledging on RabbitMQ | `transport/amqp/consume.rs` |
//! | The caller's end of RPC | `rpc.rs` (waiting calls), `transport/amqp/replies.rs` (direct reply-to) |
//! | The in-memory broker | `transport/memory.rs` |
//! | AMQP field tables ↔ JSON | `transport/amqp/convert.rs` |
//! | Broker URLs, credentials and their redaction | `broker_url.rs` |
//! | The inbox: claims, records, the `Tx` extractor (PostgreSQL, Redis) | `inbox/{mod, postgres, redis}.rs`, wrapped around each handler in `dispatch/run.rs` |
//! | The outbox: storing, relaying, parking | `outbox/{mod, relay, row}.rs`; the tables in `sql.rs` |
//! | Sagas: the `Saga` extractor, each step's load and save | `saga/{spec, step, postgres, memory}.rs`, wrapped around each saga handler in `dispatch/run.rs` |
//! | Schedules: planning occurrences, the store that hands each to one replica, the `Occurrence` extractor | `schedule/{mod, plan, store, driver, occurrence}.rs`, its task started beside the service in `service/mod.rs` |
//! | Errors | `error.rs` |

#[cfg(feature = "service")]
pub mod app;
mod broker_url;
pub mod catalog;
mod client;
#[cfg(feature = "service")]
mod dispatch;
mod error;
mod fault;
#[cfg(all(test, feature = "service"))]
mod fuzz;
mod handler;
#[cfg(feature = "service")]
pub mod headers;
#[cfg(feature = "service")]
pub mod inbox;
#[cfg(feature = "service")]
pub mod management;
pub mod observe;
#[cfg(feature = "postgres")]
pub mod outbox;
mod probe;
mod producer;
mod rpc;
pub mod saga;
pub mod schedule;
#[cfg(feature = "service")]
mod service;
mod signal;
pub mod sql;
mod transport;

#[cfg(feature = "service")]
pub use app::{AppExit, init_tracing, prefetch_from_env, queue_name, run_app};
pub use broker_url::{BrokerUrl, DEFAULT_HEARTBEAT_SECS, redact_url};
pub use catalog::{EventDescriptor, SchemaFns, registered_events};
pub use client::{
    BROKER_URL_ENV, Client, ClientBuilder, DEFAULT_BROKER_URL, DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PUBLISH_TIMEOUT, PUBLISH_WINDOW, TCHU_TCHU_VERSION_ENV, TLS_CA_FILE_ENV,
};
pub use client::{Call, MAX_EXTRA_HEADER_BYTES, PublishOptions};
#[cfg(feature = "service")]
pub use dispatch::order::release_held;
pub use error::{AmqpError, Error, ErrorKind, Result, error_chain};
pub use handler::{
    Attempt, AuthContext, Combine, Context, DedupKey, DefaultError, FromMessage, HandlerDescriptor,
    HandlerError, HandlerErrorKind, HandlerFuture, Headers, Incoming, IntoHandlerResult, Message,
    NoReply, Outcome, Reply, Resources, RetryOnFn, RoutingKey, RpcSpec, State, decode_event,
    first_some, registered_handlers, resolve_pattern,
};
#[cfg(feature = "service")]
pub use handler::{Handler, HandlerFn, HandlerOrigin};
#[cfg(feature = "service")]
pub use headers::HANDLER_HEADER;
#[cfg(feature = "service")]
pub use inbox::Inbox;
#[cfg(all(feature = "service", feature = "postgres"))]
pub use inbox::{Tx, TxGuard};
pub use observe::{TraceContext, current_trace};
#[cfg(feature = "postgres")]
pub use outbox::{Outbox, OutboxRelay};
pub use probe::{BrokerInfo, broker_info};
pub use producer::Producer;
pub use rpc::{CallError, DEFAULT_CALL_TIMEOUT};
#[cfg(feature = "service")]
pub use saga::Saga;
pub use saga::{SagaSpec, SagaState, UnknownSaga};
#[cfg(feature = "service")]
pub use schedule::Occurrence;
pub use schedule::{Missed, ScheduleSpec};
#[cfg(feature = "service")]
pub use service::{
    DEFAULT_MAX_IN_FLIGHT_BYTES, DEFAULT_PREFETCH, DEFAULT_REDELIVERY_LIMIT, HEALTH_ADDR_ENV,
    ORDERED_RETRY_WAIT_MAX, REDELIVERY_LIMIT_ENV, Service, ServiceHandle, ServiceSettings,
    ServiceState,
};
pub use tchu_core::retry::{AckPolicy, Backoff, RetryPolicy};
pub use transport::MemoryBroker;

pub use transport::EXCHANGE;

#[doc(hidden)]
pub use inventory;
/// sqlx, as the PostgreSQL stores use it: a `PgPool` of this version is what they take.
#[cfg(feature = "postgres")]
pub use sqlx;

/// A lapin connection through the frame guard, for the benches and the fuzz tests.
#[doc(hidden)]
pub use transport::connect_guarded;

pub use signal::shutdown_signal;

/// Direct AMQP access for operator tools (the `tchu` command's `dlq` and `tail` are built on
/// it): a lapin connection opened the way tchu opens its own, tchu's exchange, and messages
/// read the way a service reads them.
///
/// [`amqp::lapin`] is re-exported so that a tool uses the version tchu was built with.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tchu_runtime::amqp::{self, lapin};
/// let conn = amqp::connect("amqp://guest:guest@127.0.0.1:5672/%2f", "dlq-report").await?;
/// let channel: lapin::Channel = conn.create_channel().await?;
/// amqp::declare_exchange(&channel).await?;
/// # Ok(())
/// # }
/// ```
pub mod amqp {
    #[cfg(feature = "service")]
    pub use crate::dispatch::order::Release;
    #[cfg(feature = "service")]
    pub use crate::dispatch::{mark_forced_replay, mark_log_replay, sign_control};
    pub use crate::transport::direct::*;
    #[cfg(feature = "service")]
    pub use crate::transport::event_log as log;
}
