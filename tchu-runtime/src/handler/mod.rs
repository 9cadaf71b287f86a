//! Handlers: the descriptor `#[tchu::subscribe]` registers, the message a handler sees, and the
//! extractors that turn a delivery into handler arguments.

// Run-time handlers exist only where a service can run them.
#[cfg(feature = "service")]
mod definition;
mod saga_spec;
mod schedule_spec;
mod tuples;

#[cfg(feature = "service")]
pub use definition::{Handler, HandlerFn, HandlerOrigin};
pub use saga_spec::{SagaSpec, SagaState, UnknownSaga};
pub use schedule_spec::{Missed, SCHEDULE_TOPIC_PREFIX, ScheduleSpec};

/// Whether one error is of a type listed in `retry(on(...))`.
pub type RetryOnFn = fn(&(dyn std::error::Error + 'static)) -> bool;

use crate::client::Client;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use tchu_core::retry::{AckPolicy, RetryPolicy};
use tchu_core::{CeleryTask, Envelope, Event, Format, RpcError};

/// The future a generated handler shim returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Outcome, HandlerError>> + Send>>;

/// What a handler produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A broadcast handler finished.
    Done,
    /// An RPC responder answered with its response.
    Reply(Value),
    /// An RPC responder answered with its business error.
    BusinessError(Value),
}

/// A registered handler, as `#[tchu::subscribe]` submits it to `inventory` at link time.
#[derive(Debug)]
pub struct HandlerDescriptor {
    /// Unique name: `module::path::fn_name`, or the `name = "..."` given to the macro.
    pub name: &'static str,
    /// `module_path!()` where the handler is defined.
    pub module: &'static str,
    /// Binding key: the event's topic, or the explicit pattern.
    pub pattern: &'static str,
    /// The event type's name for typed handlers.
    pub event: Option<&'static str>,
    /// The event type's topic for typed handlers (links the handler to its [`EventDescriptor`]).
    ///
    /// [`EventDescriptor`]: crate::catalog::EventDescriptor
    pub event_topic: Option<&'static str>,
    /// Source file, for start-up logs.
    pub file: &'static str,
    /// Source line.
    pub line: u32,
    /// Calls the handler: extracts its arguments and runs it.
    pub call: fn(Arc<Incoming>) -> HandlerFuture,
    /// Checks at start-up what the arguments need (registered state).
    pub check: fn(&Resources) -> Result<(), String>,
    /// Whether it answers RPC requests (its event declares a response).
    pub responder: bool,
    /// Its own retry policy; `None` takes the service's default.
    pub retry: Option<RetryPolicy>,
    /// Which errors retry (`retry(on(...))`): whether one error is of a listed type. The
    /// runtime asks it of every error in [`HandlerError::causes`]; `None`: every error retries.
    pub retry_on: Option<RetryOnFn>,
    /// When deliveries are acknowledged.
    pub ack: AckPolicy,
    /// `dedup`: the handler's effect happens once per key, through the service's inbox.
    pub dedup: Option<DedupKey>,
    /// `ordered(key = "...")`: the payload path whose value orders its messages.
    pub ordered: Option<&'static str>,
    /// `saga(key = "...")`: the saga the handler's events move on.
    pub saga: Option<SagaSpec>,
    /// `#[tchu::schedule(...)]`: the schedule whose occurrences it runs.
    pub schedule: Option<ScheduleSpec>,
    /// `metadata(name = "value", ...)`: shown by `topology --json` and in the AsyncAPI export.
    pub metadata: &'static [(&'static str, &'static str)],
}

/// What an inbox handler (`#[tchu::subscribe(dedup)]`) is de-duplicated on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupKey {
    /// The message id (the Celery task id): the same message delivered again.
    MessageId,
    /// A payload field, by a dotted path (`"order_id"`, `"order.id"`): the same business
    /// operation, whichever message carries it.
    Field(std::borrow::Cow<'static, str>),
}

impl DedupKey {
    /// A payload field, by a dotted path.
    pub fn field(path: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self::Field(path.into())
    }

    /// The key of one message, or why it has none (an empty id, a missing or non-scalar field).
    ///
    /// # Errors
    /// A text for the dead letter's reason: the message itself is the problem.
    pub fn of(&self, message: &Message) -> Result<String, String> {
        match self {
            Self::MessageId if message.id().is_empty() => {
                Err("`dedup` needs a message id and this message has none".into())
            }
            Self::MessageId => Ok(message.id().to_owned()),
            Self::Field(path) => payload_key(message.payload(), path, "dedup"),
        }
    }
}

/// The value at a dotted payload path, as a key: a non-empty string, or a number or bool as
/// JSON writes it. `what` names the option in the reason of a message that has none.
pub(crate) fn payload_key(payload: &Value, path: &str, what: &str) -> Result<String, String> {
    let found = path.split('.').try_fold(payload, |v, part| v.get(part));
    match found {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string()),
        Some(_) => Err(format!(
            "`{what}(key = \"{path}\")`: the field is not a non-empty string, number or bool"
        )),
        None => Err(format!(
            "`{what}(key = \"{path}\")`: the payload has no such field"
        )),
    }
}

inventory::collect!(HandlerDescriptor);

/// Every handler linked into the binary, in name order.
pub fn registered_handlers() -> Vec<&'static HandlerDescriptor> {
    let mut v: Vec<_> = inventory::iter::<HandlerDescriptor>.into_iter().collect();
    v.sort_by_key(|h| h.name);
    v
}

/// Why a handler did not complete.
#[derive(Debug, Clone)]
pub struct HandlerError {
    kind: HandlerErrorKind,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// The kind of a [`HandlerError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandlerErrorKind {
    /// An argument could not be extracted (payload does not fit the event type, missing state):
    /// the message itself is the problem, retrying cannot help.
    Rejected,
    /// The handler returned an error.
    Failed,
    /// The handler panicked.
    Panicked,
    /// The payload does not fit the event type and was sent by another version of its schema:
    /// rejected like [`HandlerErrorKind::Rejected`], labelled apart so drift is visible.
    SchemaMismatch,
    /// A saga handler's event names a saga that is not running: parked, never retried.
    NoSaga,
}

impl HandlerErrorKind {
    /// A stable lowercase name, used in dead-letter headers.
    pub fn as_str(self) -> &'static str {
        tchu_core::headers::FailureKind::from(self).as_str()
    }
}

impl From<HandlerErrorKind> for tchu_core::headers::FailureKind {
    fn from(kind: HandlerErrorKind) -> Self {
        match kind {
            HandlerErrorKind::Rejected => Self::Rejected,
            HandlerErrorKind::Failed => Self::Failed,
            HandlerErrorKind::Panicked => Self::Panicked,
            HandlerErrorKind::SchemaMismatch => Self::SchemaMismatch,
            HandlerErrorKind::NoSaga => Self::NoSaga,
        }
    }
}

impl HandlerError {
    /// A new error of a kind.
    pub fn new(kind: HandlerErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A handler's own error, kept for `retry(on(...))` to inspect.
    pub fn failed(error: Box<dyn std::error::Error + Send + Sync>) -> Self {
        Self {
            kind: HandlerErrorKind::Failed,
            message: error.to_string(),
            source: Some(Arc::from(error)),
        }
    }

    /// The handler's own error, when it returned one.
    pub fn error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }

    /// The handler's own error and its causes, in order: what `retry(on(...))` looks through.
    /// Each error's `source()` leads on, and a [`crate::Error::Handler`] leads to the error it
    /// wraps (it is transparent: it displays that error and reports only that error's source).
    pub fn causes(&self) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
        let own = self
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static));
        std::iter::successors(own, |e| match e.downcast_ref::<crate::Error>() {
            Some(crate::Error::Handler(inner)) => Some(inner.as_ref()),
            _ => e.source(),
        })
    }

    /// An argument could not be extracted.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(HandlerErrorKind::Rejected, message)
    }

    /// The kind of failure.
    pub fn kind(&self) -> HandlerErrorKind {
        self.kind
    }

    /// The failure's text.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for HandlerError {}

/// What a service shares with all its handlers: registered state and a publishing client.
pub struct Resources {
    pub(crate) state: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    pub(crate) client: Client,
    pub(crate) queue: String,
    /// Whether handlers can take a `Tx` (the service's inbox is PostgreSQL).
    pub(crate) transactional: bool,
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resources")
            .field("queue", &self.queue)
            .field("state_types", &self.state.len())
            .finish()
    }
}

impl Resources {
    /// Whether handlers can take a `Tx`: the service's inbox is PostgreSQL.
    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    /// Whether state of type `T` was registered.
    pub fn has_state<T: Send + Sync + 'static>(&self) -> bool {
        self.state.contains_key(&TypeId::of::<T>())
    }
}

/// One delivery as the generated code sees it: the message plus the service's resources.
#[derive(Debug)]
pub struct Incoming {
    pub(crate) message: Message,
    pub(crate) resources: Arc<Resources>,
    pub(crate) attempt: u32,
}

impl Incoming {
    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Which run of the handler this is for the message: 1 for the first, 2 for the first retry.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The service's queue.
    pub fn queue(&self) -> &str {
        &self.resources.queue
    }

    /// The service's client, to publish with.
    pub fn client(&self) -> &Client {
        &self.resources.client
    }

    /// The state of type `T` registered on the service, if any (what [`State<T>`] extracts).
    pub fn state<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        let state = self.resources.state.get(&TypeId::of::<T>())?;
        state.clone().downcast::<T>().ok()
    }
}

/// A received event, untyped: what a `#[tchu::subscribe("pattern")]` handler can take.
#[derive(Debug, Clone)]
pub struct Message {
    pub(crate) envelope: Envelope,
    pub(crate) routing_key: String,
    /// The headers other than Celery's typed ones.
    pub(crate) headers: Map<String, Value>,
    /// Celery's headers, when they arrived as tchu-tchu writes them.
    pub(crate) celery: Option<CeleryTask>,
    /// Every header, built from the two above the first time a handler asks.
    pub(crate) all: std::sync::OnceLock<Map<String, Value>>,
    pub(crate) redelivered: bool,
}

impl Message {
    /// The event's topic.
    pub fn topic(&self) -> &str {
        &self.envelope.topic
    }

    /// The message id (the Celery task id for tchu-tchu messages).
    pub fn id(&self) -> &str {
        &self.envelope.id
    }

    /// The payload: a JSON object, without tchu-tchu's `_tchu_meta`.
    pub fn payload(&self) -> &Value {
        &self.envelope.payload
    }

    /// Deserialises the payload into a type.
    ///
    /// # Errors
    /// When the payload does not fit `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, tchu_core::DecodeError> {
        self.envelope.decode()
    }

    /// The AMQP routing key the broker delivered it with.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// The AMQP headers, Celery's among them.
    pub fn headers(&self) -> &Map<String, Value> {
        match &self.celery {
            None => &self.headers,
            Some(task) => self
                .all
                .get_or_init(|| task.headers_before(self.headers.clone())),
        }
    }

    /// The wire format it arrived in.
    pub fn format(&self) -> Format {
        self.envelope.format
    }

    /// Whether the sender expects a reply.
    pub fn is_rpc(&self) -> bool {
        self.envelope.is_rpc
    }

    /// Whether the broker delivered it before (a consumer died or gave it back).
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// Where it was replayed from, for an event `tchu replay` read from the event log
    /// (`tchu_events.log@1234`: the log and its offset there); `None` for a live one.
    pub fn replayed_from(&self) -> Option<&str> {
        self.headers
            .get(tchu_core::headers::LOG_OFFSET_HEADER)
            .and_then(Value::as_str)
    }

    /// The W3C trace context the sender put in the `traceparent` header, if any. What the
    /// handler publishes continues this trace (see [`crate::observe`]).
    pub fn trace_context(&self) -> Option<crate::observe::TraceContext> {
        crate::observe::TraceContext::from_headers(&self.headers)
    }
}

/// A handler argument that can be produced from a delivery: an extractor.
///
/// Implemented for events (by `#[tchu::event]`), [`Message`], [`State`], [`Context`],
/// [`RoutingKey`], [`Headers`], [`Attempt`], [`Client`] and tuples of them. Implement it for
/// a type of your own to take it as a handler argument: a tenant id read from a header, a
/// repository built from the service's state. `from_message` runs before the handler, once
/// per run; an error rejects the message (dead-lettered as `rejected`, with the text), and
/// `check` runs once at start-up, so a service that can never produce the argument does not
/// start.
///
/// ```
/// use tchu_runtime::{FromMessage, HandlerError, Incoming, NoReply, Resources}; // tchu:: in a service
///
/// /// The tenant a message belongs to, from its `tenant` header.
/// struct Tenant(String);
///
/// impl FromMessage for Tenant {
///     // Not a request: what the handler must return is up to its other arguments.
///     type Rpc = NoReply;
///
///     fn from_message(incoming: &Incoming) -> Result<Self, HandlerError> {
///         let header = incoming.message().headers().get("tenant");
///         let tenant = header.and_then(|v| v.as_str());
///         let tenant = tenant.ok_or_else(|| HandlerError::rejected("no tenant header"))?;
///         Ok(Tenant(tenant.to_owned()))
///     }
/// }
///
/// /// Orders of one tenant, built from the pool the service holds as state.
/// struct Orders {
///     pool: std::sync::Arc<Pool>,
///     tenant: String,
/// }
/// struct Pool;
///
/// impl FromMessage for Orders {
///     type Rpc = NoReply;
///
///     fn from_message(incoming: &Incoming) -> Result<Self, HandlerError> {
///         let Tenant(tenant) = Tenant::from_message(incoming)?;
///         let pool = incoming.state::<Pool>();
///         let pool = pool.ok_or_else(|| HandlerError::rejected("no Pool state"))?;
///         Ok(Orders { pool, tenant })
///     }
///
///     fn check(resources: &Resources) -> Result<(), String> {
///         if resources.has_state::<Pool>() {
///             Ok(())
///         } else {
///             Err("`Orders` needs a `Pool`: `.state(pool)`".into())
///         }
///     }
/// }
///
/// // #[tchu::subscribe]
/// // async fn on_paid(ev: OrderPaid, orders: Orders) { ... }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an argument of a tchu handler",
    label = "not a tchu handler argument",
    note = "handler arguments are: an event type (`#[tchu::event]`), `tchu::Message`, `tchu::State<T>`, `tchu::Context<T>`, `tchu::RoutingKey`, `tchu::Headers`, `tchu::Attempt`, `tchu::Client`, or a type of yours that implements `tchu::FromMessage`"
)]
pub trait FromMessage: Sized + Send + 'static {
    /// The topic of the event this argument decodes, for typed events; `None` otherwise.
    const TOPIC: Option<&'static str> = None;

    /// The event type's name, for typed events; `None` otherwise.
    const EVENT: Option<&'static str> = None;

    /// How many typed events it decodes (a tuple of extractors may hold several, which no
    /// message can satisfy).
    #[doc(hidden)]
    const EVENTS: usize = if Self::TOPIC.is_some() { 1 } else { 0 };

    /// The saga state it takes (`Saga<S>`: `S::NAME`), which the handler's `saga(...)` must
    /// name; `None` otherwise.
    #[doc(hidden)]
    const SAGA: Option<&'static str> = None;

    /// How many `Saga` arguments it takes: a step has one saga.
    #[doc(hidden)]
    const SAGAS: usize = if Self::SAGA.is_some() { 1 } else { 0 };

    /// [`NoReply`], or [`Reply`] for a request event: what the handler must return. An
    /// extractor of your own that is not an event says `type Rpc = NoReply;`.
    type Rpc: RpcSpec;

    /// Produces the argument.
    ///
    /// # Errors
    /// A [`HandlerError`] (normally [`HandlerErrorKind::Rejected`]) when it cannot.
    fn from_message(incoming: &Incoming) -> Result<Self, HandlerError>;

    /// Checks at service start-up that this argument can ever be produced.
    ///
    /// # Errors
    /// A description of what is missing.
    fn check(_resources: &Resources) -> Result<(), String> {
        Ok(())
    }
}

/// Decodes a typed event from a delivery; used by the code `#[tchu::event]` generates.
///
/// # Errors
/// [`HandlerErrorKind::Rejected`] when the payload does not fit `E`.
pub fn decode_event<E: Event>(incoming: &Incoming) -> Result<E, HandlerError> {
    let drift = crate::catalog::drift(E::TOPIC, &incoming.message.headers);
    incoming.message.decode::<E>().map_err(|e| {
        let what = format!(
            "payload of `{}` does not match `{}`: {e}",
            incoming.message.topic(),
            std::any::type_name::<E>()
        );
        match drift {
            Some((sent, expected)) => HandlerError::new(
                HandlerErrorKind::SchemaMismatch,
                format!("sent with schema {sent}, this service expects {expected}: {what}"),
            ),
            None => HandlerError::rejected(what),
        }
    })
}

impl FromMessage for Message {
    type Rpc = NoReply;

    fn from_message(incoming: &Incoming) -> Result<Self, HandlerError> {
        Ok(incoming.message.clone())
    }
}

impl FromMessage for Client {
    type Rpc = NoReply;

    fn from_message(incoming: &Incoming) -> Result<Self, HandlerError> {
        Ok(incoming.resources.client.clone())
    }
}

/// Shared application state registered on the service (a database pool, a configuration).
///
/// ```
/// # use tchu_runtime::State;
/// struct Db;
/// // handler: async fn on_event(ev: MyEvent, db: State<Db>) { ... }
/// // service: tchu::Service::new("q").state(Db)
/// ```
pub struct State<T: ?Sized>(pub Arc<T>);

impl<T: ?Sized> Deref for State<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: ?Sized> Clone for State<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for State<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: Send + Sync + 'static> FromMessage for State<T> {
    type Rpc = NoReply;

    fn from_message(incoming: &Incoming) -> Result<Self, HandlerError> {
        incoming.state::<T>().map(State).ok_or_else(|| {
            HandlerError::rejected(format!(
                "no state of type `{}` was registered",
                std::any::type_name::<T>()
            ))
        })
    }

    fn check(resources: &Resources) -> Result<(), String> {
        if resources.has_state::<T>() {
            Ok(())
        } else {
            Err(format!(
                "needs `State<{0}>` but the service has no state of type `{0}`: register it with `Service::state` or `run!(state = ...)`",
                std::any::type_name::<T>()
            ))
        }
    }
}

/// tchu-tchu's request context: the payload's top-level `user`, `company` and `user_company`
/// fields, whatever their application-defined shapes.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct AuthContext {
    /// The acting user.
    #[serde(default)]
    pub user: Option<Value>,
    /// The user's company.
    #[serde(default)]
    pub company: Option<Value>,
    /// The user-company membership.
    #[serde(default)]
    pub user_company: Option<Value>,
}

impl AuthContext {
    /// tchu-tchu's `is_authorized()`: all three fields present and not null.
    pub fn is_authorized(&self) -> bool {
        self.user.is_some() && self.company.is_some() && self.user_company.is_some()
    }
}

/// Request context carried in the payload, deserialised into `T` (by default [`AuthContext`]).
///
/// A user-defined `T` picks the fields it declares from the payload object.
#[derive(Debug, Clone)]
pub struct Context<T = AuthContext>(pub T);

impl<T> Deref for Context<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + Send + 'static> FromMessage for Context<T> {
    type Rpc = NoReply;

    fn from_message(incoming: &Incoming) -> Result<Self, HandlerError> {
        incoming.message.decode::<T>().map(Context).map_err(|e| {
            HandlerError::rejected(format!(
                "request context `{}` not found in the payload: {e}",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// The AMQP routing key of the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingKey(pub String);

impl Deref for RoutingKey {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl FromMessage for RoutingKey {
    type Rpc = NoReply;

    fn from_message(incoming: &Incoming) -> Result<Self, HandlerError> {
        Ok(RoutingKey(incoming.message.routing_key.clone()))
    }
}

/// Which run of the handler this is for the message: 1 for the first, 2 for the first retry...
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attempt(pub u32);

impl FromMessage for Attempt {
    type Rpc = NoReply;

    fn from_message(incoming: &Incoming) -> Result<Self, HandlerError> {
        Ok(Attempt(incoming.attempt))
    }
}

/// The AMQP headers of the delivery, as JSON values.
#[derive(Debug, Clone, PartialEq)]
pub struct Headers(pub Map<String, Value>);

impl Deref for Headers {
    type Target = Map<String, Value>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl FromMessage for Headers {
    type Rpc = NoReply;

    fn from_message(incoming: &Incoming) -> Result<Self, HandlerError> {
        Ok(Headers(incoming.message.headers().clone()))
    }
}

/// The handler is not an RPC responder.
#[derive(Debug)]
pub struct NoReply;

/// The handler answers a request with `Result<R, E>` (or `R` when the event declared no error,
/// `E` then being [`DefaultError`]).
#[derive(Debug)]
pub struct Reply<R, E>(PhantomData<fn() -> (R, E)>);

/// Marks a request event that declared no `error` type: its error is [`RpcError`].
#[derive(Debug)]
pub struct DefaultError;

/// What kind of answer a handler gives; implemented by [`NoReply`] and [`Reply`].
pub trait RpcSpec {
    /// Whether the handler answers requests.
    const RESPONDER: bool;
}

impl RpcSpec for NoReply {
    const RESPONDER: bool = false;
}

impl<R, E> RpcSpec for Reply<R, E> {
    const RESPONDER: bool = true;
}

/// Combines the [`RpcSpec`]s of a handler's arguments: at most one is a [`Reply`].
pub trait Combine<B> {
    /// The combination.
    type Out: RpcSpec;
}

impl Combine<NoReply> for NoReply {
    type Out = NoReply;
}

impl<R, E> Combine<NoReply> for Reply<R, E> {
    type Out = Reply<R, E>;
}

impl<R, E> Combine<Reply<R, E>> for NoReply {
    type Out = Reply<R, E>;
}

/// What a handler may return. A broadcast handler returns `()` or `Result<(), E>` for any
/// error convertible to a boxed error (`tchu::Error`, `anyhow::Error`, `String`, ...). A responder
/// for a request event with `response = R, error = E` returns `Result<R, E>`; with no `error`
/// declared, `R` or `Result<R, RpcError>`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid return type for this tchu handler",
    label = "wrong return type for this handler",
    note = "a broadcast handler returns `()` or `Result<(), E>`; a responder to a request event declared with `response = R, error = E` returns `Result<R, E>` (or `R` when no error is declared)",
    note = "this handler's expected answer is `{S}`"
)]
pub trait IntoHandlerResult<S> {
    /// Converts the handler's return value.
    ///
    /// # Errors
    /// The handler's error as [`HandlerErrorKind::Failed`].
    fn into_handler_result(self) -> Result<Outcome, HandlerError>;
}

impl IntoHandlerResult<NoReply> for () {
    fn into_handler_result(self) -> Result<Outcome, HandlerError> {
        Ok(Outcome::Done)
    }
}

impl<E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static> IntoHandlerResult<NoReply>
    for Result<(), E>
{
    fn into_handler_result(self) -> Result<Outcome, HandlerError> {
        self.map(|()| Outcome::Done)
            .map_err(|e| HandlerError::failed(crate::error::boxed_error(e)))
    }
}

fn to_json<T: serde::Serialize>(v: &T, what: &str) -> Result<Value, HandlerError> {
    serde_json::to_value(v).map_err(|e| {
        HandlerError::new(
            HandlerErrorKind::Failed,
            format!("the {what} could not be serialised: {e}"),
        )
    })
}

impl<R: serde::Serialize, E: serde::Serialize> IntoHandlerResult<Reply<R, E>> for Result<R, E> {
    fn into_handler_result(self) -> Result<Outcome, HandlerError> {
        match self {
            Ok(r) => to_json(&r, "response").map(Outcome::Reply),
            Err(e) => to_json(&e, "business error").map(Outcome::BusinessError),
        }
    }
}

impl<R: serde::Serialize> IntoHandlerResult<Reply<R, DefaultError>> for R {
    fn into_handler_result(self) -> Result<Outcome, HandlerError> {
        to_json(&self, "response").map(Outcome::Reply)
    }
}

impl<R: serde::Serialize> IntoHandlerResult<Reply<R, DefaultError>> for Result<R, RpcError> {
    fn into_handler_result(self) -> Result<Outcome, HandlerError> {
        match self {
            Ok(r) => to_json(&r, "response").map(Outcome::Reply),
            Err(e) => to_json(&e, "business error").map(Outcome::BusinessError),
        }
    }
}

/// The first `Some` of a list, in `const` context; used by generated code.
pub const fn first_some(items: &[Option<&'static str>]) -> Option<&'static str> {
    let mut i = 0;
    while i < items.len() {
        if items[i].is_some() {
            return items[i];
        }
        i += 1;
    }
    None
}

/// Picks a handler's binding key at compile time; used by generated code.
///
/// `topics` holds, per argument, the event topic it decodes (if any). Panics (a compile error in
/// `const` context) when the handler has no event and no pattern, more than one event argument,
/// or a pattern that can never match its event's topic.
pub const fn resolve_pattern(
    explicit: Option<&'static str>,
    topics: &[Option<&'static str>],
) -> &'static str {
    let mut topic: Option<&'static str> = None;
    let mut i = 0;
    while i < topics.len() {
        if let Some(t) = topics[i] {
            if topic.is_some() {
                panic!("a tchu handler takes at most one event argument");
            }
            topic = Some(t);
        }
        i += 1;
    }
    match (explicit, topic) {
        (Some(p), Some(t)) => {
            if !tchu_core::pattern_matches(p, t) {
                panic!("the subscription pattern can never match the topic of the handler's event");
            }
            p
        }
        (Some(p), None) => p,
        (None, Some(t)) => t,
        (None, None) => panic!(
            "a handler without an event argument needs a topic pattern: `#[tchu::subscribe(\"user.*\")]`"
        ),
    }
}
