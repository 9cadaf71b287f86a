//! # tchu
//!
//! Event-driven microservices over RabbitMQ: typed events, broadcast pub/sub and handlers
//! declared with two attributes, wire-compatible with Python
//! [tchu-tchu](https://pypi.org/project/tchu-tchu/) services on the same broker.
//!
//! ```no_run
//! use tchu::prelude::*;
//!
//! #[tchu::event(topic = "user.created")]
//! pub struct UserCreated {
//!     pub user_id: u64,
//!     pub email: String,
//! }
//!
//! // Typed: the binding key is the event's topic.
//! #[tchu::subscribe]
//! async fn welcome(ev: UserCreated) -> tchu::Result<()> {
//!     println!("welcome {}", ev.email);
//!     Ok(())
//! }
//!
//! // Raw: any event matching the pattern, with AMQP semantics (`*` one word, `#` zero or more).
//! #[tchu::subscribe("user.#")]
//! async fn audit(msg: Message, key: RoutingKey) {
//!     println!("{} {}", key.0, msg.payload());
//! }
//!
//! #[tokio::main]
//! async fn main() -> tchu::Result<()> {
//!     // Declares the durable queue `users_queue`, binds it on `tchu_events` to every
//!     // handler's key, consumes until SIGTERM.
//!     tchu::run!(queue = "users_queue")
//! }
//! ```
//!
//! Publishing from anywhere:
//!
//! ```no_run
//! # use tchu::prelude::*;
//! # #[tchu::event(topic = "user.created")]
//! # pub struct UserCreated { pub user_id: u64, pub email: String }
//! # async fn demo() -> tchu::Result<()> {
//! let client = tchu::Client::from_env().await?; // TCHU_BROKER_URL, default amqp://guest:guest@127.0.0.1:5672/%2f
//! client.publish(&UserCreated { user_id: 1, email: "a@b.c".into() }).await?; // confirmed by the broker
//! # Ok(()) }
//! ```
//!
//! ## Guarantees
//! - `publish` returns once the broker confirmed the message; an event no queue is bound to is
//!   [`Error::Unroutable`], never silently dropped.
//! - A delivery is acknowledged after every matching handler of the service ran. Input that
//!   cannot be decoded, matches no handler, or fails a handler goes to `<queue>.dlq` with the
//!   reason in `x-tchu-*` headers; a panicking handler is a failure, never a dead consumer.
//! - Messages are tchu-tchu's Celery protocol v2 by default, so Python services receive them
//!   unchanged; v1 (tchu-tchu's serverless producer) and a native JSON form are understood too.
//!
//! ## Testing without a broker
//! [`MemoryBroker`] routes like RabbitMQ's topic exchange, in process:
//!
//! ```
//! # use tchu::prelude::*;
//! #[tchu::event(topic = "doc.pinged")]
//! pub struct Pinged { pub n: u32 }
//!
//! #[tchu::subscribe]
//! async fn on_ping(p: Pinged, state: State<std::sync::atomic::AtomicU32>) {
//!     state.fetch_add(p.n, std::sync::atomic::Ordering::SeqCst);
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> tchu::Result<()> {
//! let broker = tchu::MemoryBroker::new();
//! let client = tchu::Client::memory(&broker);
//! let counter = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let service = tchu::Service::new("doc_queue")
//!     .handlers_in(module_path!())
//!     .state_arc(counter.clone())
//!     .start(&client)
//!     .await?;
//! client.publish(&Pinged { n: 2 }).await?;
//! broker.settled().await;
//! assert_eq!(counter.load(std::sync::atomic::Ordering::SeqCst), 2);
//! service.shutdown().await?;
//! # Ok(()) }
//! ```

pub use tchu_core::{
    Event, Format, Request, RpcError, TchuTchu, Topic, TopicError, TopicErrorKind, TopicPattern,
    pattern_matches,
};
pub use tchu_runtime::{
    AckPolicy, AmqpError, Attempt, AuthContext, BROKER_URL_ENV, Backoff, BrokerInfo, BrokerUrl,
    Call, CallError, Client, ClientBuilder, Context, DEFAULT_BROKER_URL, DEFAULT_CALL_TIMEOUT,
    DEFAULT_HEARTBEAT_SECS, DedupKey, EXCHANGE, Error, ErrorKind, FromMessage, HandlerError,
    HandlerErrorKind, Headers, Incoming, MAX_EXTRA_HEADER_BYTES, MemoryBroker, Message, NoReply,
    Producer, PublishOptions, Resources, Result, RetryPolicy, RoutingKey, State, TraceContext,
    broker_info, current_trace, error_chain, redact_url,
};
#[cfg(feature = "service")]
pub use tchu_runtime::{
    Handler, HandlerFn, HandlerOrigin, Inbox, Service, ServiceHandle, ServiceSettings,
    ServiceState, init_tracing, release_held,
};
pub use tchu_runtime::{Missed, ScheduleSpec};
#[cfg(feature = "service")]
pub use tchu_runtime::{Occurrence, Saga};
#[cfg(feature = "postgres")]
pub use tchu_runtime::{Outbox, OutboxRelay, sqlx};
pub use tchu_runtime::{SagaSpec, SagaState, UnknownSaga};
#[cfg(all(feature = "service", feature = "postgres"))]
pub use tchu_runtime::{Tx, TxGuard};

/// The troubleshooting guide, published with the crate: every message tchu logs or returns,
/// what it means and what to do. [`Error::help`] and [`CallError::help`] name an entry, an
/// anchor on this page (`tchu/troubleshooting/index.html#<entry>`).
#[doc = include_str!("../docs/troubleshooting.md")]
pub mod troubleshooting {}

/// The inbox: `#[tchu::subscribe(dedup)]` handlers run once per key (PostgreSQL, Redis).
#[cfg(feature = "service")]
pub mod inbox {
    pub use tchu_runtime::inbox::*;
}

/// The transactional outbox and its relay (PostgreSQL).
#[cfg(feature = "postgres")]
pub mod outbox {
    pub use tchu_runtime::outbox::*;
}

/// The SQL of the PostgreSQL stores, for teams that manage their own migrations.
pub mod sql {
    pub use tchu_runtime::sql::*;
}

/// The `x-tchu-*` headers on retried and dead-lettered messages, for tools reading a
/// dead-letter queue.
#[cfg(feature = "service")]
pub mod headers {
    pub use tchu_runtime::headers::*;
}

/// The time helpers tchu's headers use (ISO 8601, UTC).
pub mod time {
    pub use tchu_core::time::*;
}

/// Environment variable naming a PEM file of an extra CA to trust for `amqps://` brokers.
pub use tchu_runtime::{TCHU_TCHU_VERSION_ENV, TLS_CA_FILE_ENV};

pub use tchu_runtime::amqp;
pub use tchu_runtime::shutdown_signal;

/// Metrics (the `metrics` facade) and W3C trace context propagation: names, labels and headers.
pub mod observe {
    pub use tchu_runtime::observe::*;
}

/// The service binary's commands (`topology`, `check`, `schema`, `asyncapi`) and the pieces
/// behind them, for tools of your own.
#[cfg(feature = "service")]
pub mod admin {
    pub use tchu_runtime::app::check::{CheckReport, check};
    pub use tchu_runtime::app::command::{Command, USAGE, execute};
    pub use tchu_runtime::app::contracts::{ALLOW_FILE, gate, read_schema_dir, schema_files};
    pub use tchu_runtime::app::documents::{asyncapi_document, schemas_document};
    pub use tchu_runtime::app::topology::topology_document;
    pub use tchu_runtime::catalog::{EventDescriptor, SchemaFns, registered_events};
    pub use tchu_runtime::management::{BindingInfo, MANAGEMENT_URL_ENV, Management};
}

/// Schema compatibility between versions of a service: the verdicts behind `schema
/// --check-against` and `tchu schema diff`.
pub mod compat {
    pub use tchu_core::compat::*;
}

/// Wire formats and codecs, for tools that read or write messages directly.
pub mod wire {
    pub use tchu_core::envelope::*;
    pub use tchu_core::pyjson;
}

/// Delayed publishing: the broker-held delay levels and their limits.
pub mod delay {
    pub use tchu_core::delay::*;
}

/// Retry policies, the delay arithmetic and the broker-held delay tiers.
pub mod retry {
    pub use tchu_core::retry::*;
}

/// The topic grammar and matcher.
pub mod topic {
    pub use tchu_core::topic::*;
}

/// Everything a service module usually needs: `use tchu::prelude::*;`.
pub mod prelude {
    #[cfg(feature = "service")]
    pub use crate::Handler;
    pub use crate::{
        Attempt, AuthContext, CallError, Client, Context, Event, Headers, Message, Request,
        RetryPolicy, RoutingKey, RpcError, State,
    };
}

/// Declares a typed event: `#[tchu::event(topic = "user.created")]` on a struct.
///
/// Derives `Serialize`, `Deserialize` and `JsonSchema` (do not derive them again; `#[serde]`
/// attributes work as usual) and implements [`Event`] with the topic, which is checked at
/// compile time: 1–255 bytes, non-empty dot-separated words of printable ASCII, no wildcards.
///
/// ```
/// #[tchu::event(topic = "order.placed")]
/// pub struct OrderPlaced {
///     pub order_id: u64,
///     #[serde(default)]
///     pub note: Option<String>,
/// }
/// assert_eq!(<OrderPlaced as tchu::Event>::TOPIC, "order.placed");
/// ```
pub use tchu_macros::event;

/// Derives what a payload type needs (`Serialize`, `Deserialize`, `JsonSchema`) through tchu,
/// for RPC response and error types: no direct serde or schemars dependency needed.
///
/// ```
/// #[tchu::payload]
/// #[derive(Debug, PartialEq)]
/// pub enum Declined {
///     InsufficientFunds { missing_cents: i64 },
///     CardBlocked,
/// }
///
/// #[tchu::payload]
/// pub struct Receipt { pub id: String }
///
/// #[tchu::event(topic = "payments.charge", response = Receipt, error = Declined)]
/// pub struct Charge { pub cents: i64 }
/// ```
pub use tchu_macros::payload;

/// Registers an `async fn` as a handler, found at link time: no registration call, no list.
///
/// Forms:
/// - `#[tchu::subscribe]`: the handler takes a typed event; it is bound to the event's topic.
/// - `#[tchu::subscribe("user.*")]` (or `pattern = "user.*"`): bound to a pattern with AMQP
///   semantics. With a typed event the pattern must be able to match the event's topic (a
///   compile error otherwise); without one, take a [`Message`].
/// - `name = "billing.on_order"`: the handler's unique name (default `module::path::fn_name`),
///   which appears in logs and in dead-letter headers.
/// - `dedup`, or `dedup(key = "order_id")`: the handler's effect happens once per message id
///   (or per value of that payload field, a dotted path), through the service's [`Inbox`];
///   with a PostgreSQL inbox a `Tx` argument writes in the transaction that records the key.
///   Not with `ack = "early"`.
/// - `retry(...)`, `ack = "early"`: see the README, "Retries and dead letters".
///
/// Arguments are extractors, in any order: one event type, [`Message`], [`State<T>`],
/// [`Context<T>`], [`RoutingKey`], [`Headers`], [`Client`] (to publish further events).
/// The handler returns `()` or `Result<(), E>` with `E` convertible to a boxed error.
///
/// ```
/// # use tchu::prelude::*;
/// #[tchu::event(topic = "order.placed")]
/// pub struct OrderPlaced { pub order_id: u64 }
///
/// #[tchu::event(topic = "invoice.requested")]
/// pub struct InvoiceRequested { pub order_id: u64 }
///
/// #[tchu::subscribe(name = "billing.on_order")]
/// async fn on_order(ev: OrderPlaced, ctx: Context, client: Client) -> tchu::Result<()> {
///     if ctx.is_authorized() {
///         client.publish(&InvoiceRequested { order_id: ev.order_id }).await?;
///     }
///     Ok(())
/// }
/// ```
pub use tchu_macros::subscribe;

/// Runs an `async fn` on a schedule, inside the service: what Celery beat does, with no extra
/// process, each occurrence run once however many replicas run (see the README, "Schedules").
///
/// - `cron = "0 */15 * * * *"` (or the bare string): when, with seconds first
///   (`sec min hour day-of-month month day-of-week [year]`). A malformed expression is a
///   compile error.
/// - `tz = "Europe/Amsterdam"`: the IANA time zone it is read in (default `UTC`), checked at
///   compile time.
/// - `missed = "run_once"` (the default) or `"skip"`: what happens when occurrences were
///   missed because no replica was up (see [`Missed`]). Never a burst.
/// - `name = "nightly_report"`: the schedule's name (default: the function's), unique in the
///   service, a word of its topic `tchu.schedule.<name>`.
/// - `retry(...)`, `metadata(...)`: as for [`subscribe`].
///
/// The function takes an [`Occurrence`] and any other extractor but an event. The service
/// needs a PostgreSQL [`Inbox`] (where every replica finds when each schedule is due), or the
/// in-memory broker.
///
/// ```
/// # use tchu::prelude::*;
/// #[tchu::schedule(cron = "0 30 2 * * *", tz = "Europe/Amsterdam", missed = "skip")]
/// async fn nightly_report(run: tchu::Occurrence, client: Client) -> tchu::Result<()> {
///     tracing::info!(due = ?run.due(), "building the report");
///     let _ = client;
///     Ok(())
/// }
/// ```
#[cfg(feature = "service")]
pub use tchu_macros::schedule;

/// Runs the service made of every handler linked into the binary, until SIGINT or SIGTERM.
///
/// `tchu::run!(queue = "payments_queue", prefetch = 32, state = pool)` inside an async `main`:
/// it connects to `TCHU_BROKER_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`), declares
/// the exchange `tchu_events`, the durable queue and its dead-letter queue `<queue>.dlq`, binds
/// the queue to its own name and to each handler's key, logs every handler and binding, and
/// consumes. The queue defaults to the crate name; `TCHU_QUEUE` and `TCHU_PREFETCH` override.
/// `state = expr` (repeatable) registers state for [`State<T>`] arguments; `inbox = expr`
/// (an [`Inbox`]) is where `dedup` handlers record their keys; `outbox = expr` (an
/// `Outbox`, `postgres` feature) runs its relay beside the service; `handler = expr`
/// (repeatable) adds a [`Handler`] built at run time. Evaluates to [`Result<()>`].
pub use tchu_macros::run;

#[doc(hidden)]
pub mod __private {
    pub use inventory;
    pub use schemars;
    pub use serde;
    pub use tchu_runtime::{
        AckPolicy, Backoff, Combine, DedupKey, DefaultError, EventDescriptor, FromMessage,
        HandlerDescriptor, HandlerError, HandlerFuture, Incoming, IntoHandlerResult, Missed,
        NoReply, Outcome, Reply, Resources, RetryPolicy, RpcSpec, SagaSpec, SagaState,
        ScheduleSpec, SchemaFns, UnknownSaga, connect_guarded, decode_event, first_some,
        resolve_pattern,
    };
    #[cfg(feature = "service")]
    pub use tchu_runtime::{AppExit, prefetch_from_env, queue_name, run_app};
}
