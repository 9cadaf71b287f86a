//! [`Handler`]: one handler as a service runs it, whether `#[tchu::subscribe]` registered it
//! at link time or the program built it at run time with [`Handler::on`].

use super::{
    DedupKey, FromMessage, HandlerDescriptor, HandlerFuture, Incoming, IntoHandlerResult,
    Resources, RetryOnFn, RpcSpec,
};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use tchu_core::pattern_matches;
use tchu_core::retry::{AckPolicy, RetryPolicy};
use tchu_core::topic::validate_pattern;

type CallFn = dyn Fn(Arc<Incoming>) -> HandlerFuture + Send + Sync;

/// Where a handler was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandlerOrigin {
    /// `#[tchu::subscribe]`, registered at link time.
    Attribute,
    /// [`Handler::on`], built by the program at run time.
    Runtime,
}

impl HandlerOrigin {
    /// `"attribute"` or `"runtime"`, as `topology` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attribute => "attribute",
            Self::Runtime => "runtime",
        }
    }
}

/// A handler as a service runs it: how to call it and the rules it runs by.
///
/// The attribute form `#[tchu::subscribe]` makes one at link time. [`Handler::on`] makes one
/// at run time, for handlers that capture configuration, are chosen by configuration, or exist
/// only in a test; [`crate::Service::handler`] adds it to a service. Both kinds take the same
/// extractors, follow the same retry and acknowledgement rules, pass the same start-up checks,
/// and are listed together by `topology` and the AsyncAPI export.
///
/// ```
/// # use tchu_runtime::{Handler, Message, RetryPolicy};
/// # use std::time::Duration;
/// let audit = Handler::on_pattern::<Message>("orders.#", |msg| async move {
///     println!("{} {}", msg.topic(), msg.payload());
/// })
/// .with_name("audit.orders")
/// .with_retry(RetryPolicy::fixed(3, Duration::from_secs(1)))
/// .with_metadata("owner", "platform");
/// assert_eq!(audit.pattern(), "orders.#");
/// ```
#[derive(Clone)]
pub struct Handler {
    pub(crate) name: Cow<'static, str>,
    pub(crate) module: Cow<'static, str>,
    pub(crate) pattern: Cow<'static, str>,
    pub(crate) event: Option<&'static str>,
    pub(crate) event_topic: Option<&'static str>,
    pub(crate) file: &'static str,
    pub(crate) line: u32,
    pub(crate) origin: HandlerOrigin,
    pub(crate) call: Arc<CallFn>,
    pub(crate) check: fn(&Resources) -> Result<(), String>,
    pub(crate) responder: bool,
    pub(crate) retry: Option<RetryPolicy>,
    /// Empty: every error retries.
    pub(crate) retry_on: Vec<RetryOnFn>,
    pub(crate) ack: AckPolicy,
    pub(crate) dedup: Option<DedupKey>,
    /// `ordered(key = ...)`: the payload path whose value orders its messages.
    pub(crate) ordered: Option<Cow<'static, str>>,
    /// `saga(key = ...)`: the saga its events move on.
    pub(crate) saga: Option<super::SagaSpec>,
    /// The schedule whose occurrences it runs.
    pub(crate) schedule: Option<super::ScheduleSpec>,
    pub(crate) metadata: BTreeMap<String, String>,
    /// How many typed event arguments it takes: more than one cannot be decoded.
    pub(crate) events: usize,
    /// The saga state it takes, and how many `Saga` arguments (run-time handlers: checked
    /// against its spec at start-up).
    pub(crate) takes_saga: (Option<&'static str>, usize),
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handler")
            .field("name", &self.name)
            .field("pattern", &self.pattern)
            .field("event", &self.event)
            .field("origin", &self.origin)
            .field("responder", &self.responder)
            .field("retry", &self.retry)
            .field("ack", &self.ack)
            .field("dedup", &self.dedup)
            .field("ordered", &self.ordered)
            .field("saga", &self.saga)
            .field("schedule", &self.schedule)
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

/// A function a run-time handler can be: `Fn(A) -> impl Future`, where `A` is one extractor
/// (an event, [`crate::Message`], ...) or a tuple of them, and the future's output is what the
/// attribute form may return (`()`, `Result<(), E>`, or the answer of a request event).
///
/// Implemented for every such closure and `async fn`; closures get their argument's type from
/// the `A` given to [`Handler::on`].
pub trait HandlerFn<A: FromMessage>:
    Fn(A) -> <Self as HandlerFn<A>>::Future + Send + Sync + 'static
{
    /// The future the function returns.
    type Future: Future<Output = <Self as HandlerFn<A>>::Output> + Send + 'static;
    /// What the future yields.
    type Output: IntoHandlerResult<A::Rpc>;
}

impl<A, F, Fut> HandlerFn<A> for F
where
    A: FromMessage,
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoHandlerResult<A::Rpc>,
{
    type Future = Fut;
    type Output = Fut::Output;
}

impl Handler {
    /// A handler taking `A`: an event type, any other extractor, or a tuple of extractors
    /// (`(OrderPlaced, State<Db>, Attempt)`). It binds to the event's topic; handlers without
    /// an event argument need [`Handler::on_pattern`]. Its default name is `on:<pattern>`.
    #[track_caller]
    pub fn on<A: FromMessage>(handler: impl HandlerFn<A>) -> Self {
        let at = std::panic::Location::caller();
        let handler = Arc::new(handler);
        let pattern = A::TOPIC.unwrap_or_default();
        Self {
            name: Cow::Owned(format!("on:{pattern}")),
            module: Cow::Borrowed(""),
            pattern: Cow::Borrowed(pattern),
            event: A::EVENT,
            event_topic: A::TOPIC,
            file: at.file(),
            line: at.line(),
            origin: HandlerOrigin::Runtime,
            call: Arc::new(move |incoming: Arc<Incoming>| -> HandlerFuture {
                let handler = handler.clone();
                Box::pin(async move {
                    let arg = A::from_message(&incoming)?;
                    handler(arg).await.into_handler_result()
                })
            }),
            check: A::check,
            responder: <A::Rpc as RpcSpec>::RESPONDER,
            retry: None,
            retry_on: Vec::new(),
            ack: AckPolicy::Late,
            dedup: None,
            ordered: None,
            saga: None,
            schedule: None,
            metadata: BTreeMap::new(),
            events: A::EVENTS,
            takes_saga: (A::SAGA, A::SAGAS),
        }
    }

    /// A handler taking `A`, bound to a topic pattern (`"orders.*"`, `"audit.#"`). For a
    /// typed handler the pattern must be able to match the event's topic; the service checks
    /// it at start-up.
    #[track_caller]
    pub fn on_pattern<A: FromMessage>(
        pattern: impl Into<Cow<'static, str>>,
        handler: impl HandlerFn<A>,
    ) -> Self {
        Self::on(handler).with_pattern(pattern)
    }

    /// Binds it to a topic pattern instead of its event's topic; the default name follows.
    pub fn with_pattern(mut self, pattern: impl Into<Cow<'static, str>>) -> Self {
        let default_name = self.name == format!("on:{}", self.pattern);
        self.pattern = pattern.into();
        if default_name {
            self.name = Cow::Owned(format!("on:{}", self.pattern));
        }
        self
    }

    /// Its unique name within the service: retried and replayed copies are addressed to it,
    /// and metrics are labelled with it, so keep it stable across releases.
    pub fn with_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Its own retry policy, instead of the service's default.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Retries only errors of type `T` (anywhere in the error's chain of causes, as
    /// `retry(on(T))` does); call again to add types. Without it every error retries.
    pub fn retry_on<T: std::error::Error + 'static>(mut self) -> Self {
        self.retry_on.push(|e| e.is::<T>());
        self
    }

    /// When its deliveries are acknowledged (default: after it finishes).
    pub fn with_ack(mut self, ack: AckPolicy) -> Self {
        self.ack = ack;
        self
    }

    /// Moves a saga on (`saga(...)` of the attribute): the handler takes a
    /// [`Saga`](crate::Saga) of the spec's state. Under the service's inbox its steps are
    /// de-duplicated on the message id unless [`Handler::with_dedup`] says otherwise.
    pub fn with_saga(mut self, spec: super::SagaSpec) -> Self {
        self.saga = Some(spec);
        self
    }

    /// Its saga, if it moves one on.
    pub fn saga(&self) -> Option<&super::SagaSpec> {
        self.saga.as_ref()
    }

    /// A handler running the occurrences of a schedule (`#[tchu::schedule]` at run time, for
    /// schedules read from configuration): `A` takes an [`Occurrence`](crate::Occurrence), and
    /// any other extractor but an event. Named `schedule:<name>`.
    ///
    /// ```
    /// use tchu_runtime::{Handler, Occurrence, ScheduleSpec};
    ///
    /// let every_minute = ScheduleSpec::cron("sweep", "0 * * * * *");
    /// let sweep = Handler::every(every_minute, |run: Occurrence| async move {
    ///     tracing::info!(due = ?run.due(), "sweeping");
    /// });
    /// assert_eq!(sweep.name(), "schedule:sweep");
    /// ```
    #[track_caller]
    pub fn every<A: FromMessage>(spec: super::ScheduleSpec, handler: impl HandlerFn<A>) -> Self {
        let name = format!("schedule:{}", spec.name);
        Self::on(handler).with_schedule(spec).with_name(name)
    }

    /// Runs the occurrences of `spec`: binds it to the schedule's topic, which only its own
    /// service sends to it.
    pub fn with_schedule(mut self, spec: super::ScheduleSpec) -> Self {
        self.pattern = Cow::Owned(spec.topic());
        self.schedule = Some(spec);
        self
    }

    /// Its schedule, if it runs one.
    pub fn schedule(&self) -> Option<&super::ScheduleSpec> {
        self.schedule.as_ref()
    }

    /// Runs its effect once per key, through the service's inbox (`dedup` of the attribute).
    pub fn with_dedup(mut self, key: DedupKey) -> Self {
        self.dedup = Some(key);
        self
    }

    /// Runs its messages in order per key (`ordered(key = ...)` of the attribute): those whose
    /// payload has the same value at `path` (`"account_id"`, `"order.id"`) one after the other,
    /// in the order they were published, across replicas, retries and dead letters; messages
    /// of other keys in parallel. See the README, "In order per key".
    pub fn with_ordered(mut self, path: impl Into<Cow<'static, str>>) -> Self {
        self.ordered = Some(path.into());
        self
    }

    /// Adds a name/value pair of metadata, shown by `topology --json` and in the AsyncAPI
    /// document (an owner, a runbook, a tier).
    pub fn with_metadata(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(name.into(), value.into());
        self
    }

    /// Its unique name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its binding key: the event's topic or the explicit pattern.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The event type's name, for typed handlers.
    pub fn event(&self) -> Option<&'static str> {
        self.event
    }

    /// The event type's topic, for typed handlers.
    pub fn event_topic(&self) -> Option<&'static str> {
        self.event_topic
    }

    /// `module_path!()` of an attribute handler; empty for a run-time one.
    pub fn module(&self) -> &str {
        &self.module
    }

    /// Where it was declared: the attribute, or the call that built it.
    pub fn source(&self) -> (&'static str, u32) {
        (self.file, self.line)
    }

    /// Whether it came from the attribute or was built at run time.
    pub fn origin(&self) -> HandlerOrigin {
        self.origin
    }

    /// Whether it answers RPC requests.
    pub fn is_responder(&self) -> bool {
        self.responder
    }

    /// Its own retry policy; `None` takes the service's default.
    pub fn retry(&self) -> Option<RetryPolicy> {
        self.retry
    }

    /// When its deliveries are acknowledged.
    pub fn ack(&self) -> AckPolicy {
        self.ack
    }

    /// What its inbox de-duplicates on, if it has one.
    pub fn dedup(&self) -> Option<&DedupKey> {
        self.dedup.as_ref()
    }

    /// The payload path its messages are ordered by, for an ordered handler.
    pub fn ordered(&self) -> Option<&str> {
        self.ordered.as_deref()
    }

    /// Its metadata, by name.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// A saga spec without the matching `Saga` argument, or the other way round.
    fn saga_mismatch(&self) -> Option<String> {
        let (takes, count) = self.takes_saga;
        match (&self.saga, takes) {
            _ if count > 1 => Some("takes more than one `Saga`: a step moves one saga on".into()),
            (Some(spec), Some(name)) if spec.name != name => Some(format!(
                "takes `Saga` of `{name}` but its saga spec names `{}`",
                spec.name
            )),
            (Some(spec), None) => Some(format!(
                "moves saga `{}` on but takes no `Saga` argument",
                spec.name
            )),
            (None, Some(name)) => Some(format!(
                "takes `Saga` of `{name}` without a saga spec: `Handler::with_saga`"
            )),
            _ => None,
        }
    }

    /// What is wrong with how it runs its schedule, if it runs one (the spec itself is
    /// checked by `crate::schedule`).
    fn schedule_problem(&self) -> Option<String> {
        let spec = self.schedule.as_ref()?;
        let clash = if self.events > 0 {
            "takes an event argument"
        } else if self.saga.is_some() {
            "moves a saga on"
        } else if self.ordered.is_some() {
            "is ordered"
        } else if self.ack == AckPolicy::Early {
            "is acknowledged early"
        } else if self.pattern != spec.topic() {
            "has a pattern of its own"
        } else {
            return None;
        };
        Some(format!(
            "runs schedule `{}` and {clash}: a schedule's handler takes an `Occurrence` and \
             other extractors, and its occurrences come only from its schedule",
            spec.name
        ))
    }

    /// What the attribute's compile-time checks would have refused: found at start-up for a
    /// run-time handler.
    pub(crate) fn shape_problem(&self) -> Option<String> {
        if self.name.is_empty() {
            return Some("has an empty name".into());
        }
        if let Some(super::DedupKey::Field(path)) = &self.dedup
            && (path.is_empty() || path.split('.').any(str::is_empty))
        {
            return Some(format!(
                "dedup key `{path}`: name a payload field, `order_id`, or a dotted path like `order.id`"
            ));
        }
        if let Some(path) = &self.ordered
            && (path.is_empty() || path.split('.').any(str::is_empty))
        {
            return Some(format!(
                "ordered key `{path}`: name a payload field, `account_id`, or a dotted path like `account.id`"
            ));
        }
        if let Some(spec) = &self.saga
            && (spec.key.is_empty() || spec.key.split('.').any(str::is_empty))
        {
            return Some(format!(
                "saga key `{}`: name a payload field, `order_id`, or a dotted path like `order.id`",
                spec.key
            ));
        }
        if let Some(why) = self.saga_mismatch() {
            return Some(why);
        }
        if let Some(why) = self.schedule_problem() {
            return Some(why);
        }
        if self.saga.is_some() && self.ack == AckPolicy::Early {
            return Some(
                "combines `saga` with early acknowledgement: a saga step is acknowledged after \
                 it committed"
                    .into(),
            );
        }
        if self.ordered.is_some() && self.ack == AckPolicy::Early {
            return Some(
                "combines `ordered` with early acknowledgement: an ordered message stays \
                 unacknowledged until it ran, so that a crash hands it to the next replica in order"
                    .into(),
            );
        }
        if let Some(why) = self.retry.as_ref().and_then(RetryPolicy::problem) {
            return Some(format!("retry policy: {why}"));
        }
        if self.metadata.keys().any(String::is_empty) {
            return Some("has a metadata entry with an empty name".into());
        }
        if self.events > 1 {
            return Some("takes more than one event argument".into());
        }
        if self.pattern.is_empty() {
            return Some(
                "has no event argument and no pattern: `Handler::on_pattern(\"user.*\", ...)`"
                    .into(),
            );
        }
        if let Err(e) = validate_pattern(&self.pattern) {
            return Some(format!("pattern `{}`: {e}", self.pattern));
        }
        match self.event_topic {
            Some(t) if !pattern_matches(&self.pattern, t) => Some(format!(
                "pattern `{}` can never match the topic `{t}` of its event",
                self.pattern
            )),
            _ => None,
        }
    }
}

impl From<&'static HandlerDescriptor> for Handler {
    fn from(h: &'static HandlerDescriptor) -> Self {
        let call = h.call;
        Self {
            name: Cow::Borrowed(h.name),
            module: Cow::Borrowed(h.module),
            pattern: Cow::Borrowed(h.pattern),
            event: h.event,
            event_topic: h.event_topic,
            file: h.file,
            line: h.line,
            origin: HandlerOrigin::Attribute,
            call: Arc::new(call),
            check: h.check,
            responder: h.responder,
            retry: h.retry,
            retry_on: h.retry_on.into_iter().collect(),
            ack: h.ack,
            dedup: h.dedup.clone(),
            ordered: h.ordered.map(Cow::Borrowed),
            saga: h.saga,
            schedule: h.schedule.clone(),
            metadata: h
                .metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            events: usize::from(h.event_topic.is_some()),
            // The attribute built the spec from the argument's own type.
            takes_saga: (h.saga.map(|s| s.name), usize::from(h.saga.is_some())),
        }
    }
}
