//! A service: one durable queue, its bindings, and the dispatch of every delivery to the
//! matching handlers linked into the binary.
//!
//! Delivery policy: a message is acknowledged only after every matching handler finished.
//! A message that cannot be decoded, matches no handler, or fails a handler is parked in the
//! service's dead-letter queue `<queue>.dlq` with the reason in `x-tchu-*` headers, then
//! acknowledged: never requeued forever, never lost. A copy parked for a failed handler names
//! that handler, and a parked message sent back to the queue re-runs only that handler.

use crate::client::Client;
use crate::error::{Error, Result};
use crate::handler::{
    HandlerDescriptor, HandlerError, HandlerErrorKind, Incoming, Message, Outcome, Resources,
    registered_handlers,
};
use crate::observe::TraceContext;
use crate::transport::{Deliveries, Delivery, Topology};
use futures_lite::FutureExt;
use serde_json::Value;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tchu_core::envelope::{Decoded, Properties, WireMessage, decode};
use tchu_core::retry::{AckPolicy, DELAY_TIERS_MS, RetryPolicy, plan_hops};
use tchu_core::rpc::{ReplyEntry, encode_reply};
use tchu_core::{pattern_matches, topic::validate_pattern};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, error, info, info_span, warn};

/// Header naming the handler a parked message failed in; on redelivery only that handler runs.
pub const HANDLER_HEADER: &str = "x-tchu-handler";

/// A service definition: a queue name, the handlers it runs and the state they share.
///
/// ```no_run
/// # async fn demo() -> tchu_runtime::Result<()> {
/// let client = tchu_runtime::Client::from_env().await?;
/// tchu_runtime::Service::new("billing_queue")
///     .prefetch(32)
///     .run(&client) // until SIGINT or SIGTERM
///     .await
/// # }
/// ```
pub struct Service {
    queue: String,
    prefetch: u16,
    modules: Vec<String>,
    state: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    grace: Duration,
    default_retry: RetryPolicy,
    quorum: bool,
    version: String,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("modules", &self.modules)
            .finish_non_exhaustive()
    }
}

/// Prefetch used when none is set: enough to keep a handler pool busy, small enough that one
/// slow replica does not hoard work its siblings could do.
pub const DEFAULT_PREFETCH: u16 = 16;

impl Service {
    /// A service consuming from `queue`, running every handler linked into the binary.
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            prefetch: DEFAULT_PREFETCH,
            modules: Vec::new(),
            state: HashMap::new(),
            grace: Duration::from_secs(30),
            default_retry: RetryPolicy::NONE,
            quorum: false,
            version: "0.0.0".into(),
        }
    }

    /// The queue name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// How many deliveries may be in progress at once (AMQP `basic.qos`). At least 1.
    pub fn prefetch(mut self, n: u16) -> Self {
        self.prefetch = n.max(1);
        self
    }

    /// Runs only the handlers defined in this module or below it (a `module_path!()` prefix).
    /// Call several times to add modules. Lets one binary host several services.
    pub fn handlers_in(mut self, module: impl Into<String>) -> Self {
        self.modules.push(module.into());
        self
    }

    /// Registers shared state, handed to handlers taking a [`crate::State<T>`] argument.
    pub fn with_state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(TypeId::of::<T>(), Arc::new(value));
        self
    }

    /// Registers state already behind an `Arc`, so the caller keeps a handle to it.
    pub fn with_state_arc<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.state.insert(TypeId::of::<T>(), value);
        self
    }

    /// Declares the service queue, its dead-letter queue and its delay tiers as quorum queues
    /// (replicated across a RabbitMQ cluster, RabbitMQ 3.10 or newer). A queue's type cannot
    /// change once declared: switching an existing service means a new queue name.
    pub fn quorum(mut self, quorum: bool) -> Self {
        self.quorum = quorum;
        self
    }

    /// The retry policy of handlers that declare none (default: no retry).
    pub fn default_retry(mut self, policy: RetryPolicy) -> Self {
        self.default_retry = policy;
        self
    }

    /// Whether any handler of the service may retry, so the delay tiers are needed.
    fn retries(&self) -> bool {
        self.handlers()
            .iter()
            .any(|h| h.retry.unwrap_or(self.default_retry).max_attempts > 1)
    }

    /// Everything the service declares: queue, dead-letter queue, delay tiers, bindings.
    pub(crate) fn topology(&self) -> Topology {
        let delay_queues = if self.retries() {
            DELAY_TIERS_MS
                .iter()
                .map(|t| (delay_queue_name(&self.queue, *t), *t))
                .collect()
        } else {
            Vec::new()
        };
        Topology {
            queue: self.queue.clone(),
            dead_letter_queue: self.dead_letter_queue(),
            bindings: self.bindings(),
            delay_queues,
            quorum: self.quorum,
        }
    }

    /// The service's version, shown by `topology` and in its AsyncAPI document
    /// (`tchu::run!()` passes the crate's version).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    pub(crate) fn version_str(&self) -> &str {
        &self.version
    }

    pub(crate) fn default_retry_policy(&self) -> RetryPolicy {
        self.default_retry
    }

    pub(crate) fn prefetch_value(&self) -> u16 {
        self.prefetch
    }

    /// How long shutdown waits for in-flight handlers (default 30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The handlers this service runs, in name order.
    pub fn handlers(&self) -> Vec<&'static HandlerDescriptor> {
        registered_handlers()
            .into_iter()
            .filter(|h| {
                self.modules.is_empty()
                    || self.modules.iter().any(|m| {
                        h.module == m
                            || h.module
                                .strip_prefix(m.as_str())
                                .is_some_and(|r| r.starts_with("::"))
                    })
            })
            .collect()
    }

    /// The binding keys the service declares on `tchu_events`: its queue name (as Celery binds
    /// it), then each distinct handler pattern.
    pub fn bindings(&self) -> Vec<String> {
        let mut keys = vec![self.queue.clone()];
        for h in self.handlers() {
            if !keys.iter().any(|k| k == h.pattern) {
                keys.push(h.pattern.to_owned());
            }
        }
        keys
    }

    /// The dead-letter queue's name.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.queue)
    }

    fn validate(
        &self,
        handlers: &[&'static HandlerDescriptor],
        resources: &Resources,
    ) -> Result<()> {
        if self.queue.is_empty() || self.queue.len() > 250 {
            return Err(Error::Config(format!(
                "queue name `{}` must be 1 to 250 bytes",
                self.queue
            )));
        }
        if handlers.is_empty() {
            return Err(Error::Config(format!(
                "service `{}` has no handlers: add `#[tchu::subscribe]` functions{}",
                self.queue,
                if self.modules.is_empty() {
                    String::new()
                } else {
                    format!(" under {:?}", self.modules)
                }
            )));
        }
        let mut problems = Vec::new();
        for (i, h) in handlers.iter().enumerate() {
            if handlers[..i].iter().any(|o| o.name == h.name) {
                problems.push(format!("two handlers are named `{}`", h.name));
            }
            if let Err(e) = validate_pattern(h.pattern) {
                problems.push(format!(
                    "handler `{}`: pattern `{}`: {e}",
                    h.name, h.pattern
                ));
            }
            if let Err(e) = (h.check)(resources) {
                problems.push(format!("handler `{}` ({}:{}) {e}", h.name, h.file, h.line));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems.join("; ")))
        }
    }

    /// Declares the topology, starts consuming in the background, and returns a handle to stop.
    ///
    /// # Errors
    /// [`Error::Config`] for a service with no handlers, duplicate names or missing state;
    /// broker errors while declaring or consuming.
    pub async fn start(self, client: &Client) -> Result<ServiceHandle> {
        let handlers = self.handlers();
        let resources = Arc::new(Resources {
            state: self.state.clone(),
            client: client.clone(),
            queue: self.queue.clone(),
        });
        self.validate(&handlers, &resources)?;
        let topo = self.topology();
        for h in &handlers {
            info!(queue = %self.queue, handler = h.name, pattern = h.pattern, event = h.event.unwrap_or("-"), "handler");
        }
        for key in &topo.bindings {
            info!(queue = %self.queue, exchange = crate::transport::EXCHANGE, binding = %key, "binding");
        }
        client.transport().declare(&topo).await?;
        let deliveries = client
            .transport()
            .consume(&self.queue, self.prefetch)
            .await?;
        info!(queue = %self.queue, prefetch = self.prefetch, handlers = handlers.len(), dead_letters = %topo.dead_letter_queue, "consuming");
        let shared = Arc::new(Shared {
            metrics: crate::observe::ServiceMetrics::new(&self.queue, &handlers),
            handlers,
            resources,
            client: client.clone(),
            topo: topo.clone(),
            default_retry: self.default_retry,
            prefetch: self.prefetch,
        });
        let (stop, stopped) = watch::channel(false);
        let (state_tx, state) = watch::channel(ServiceState::Consuming);
        let task = tokio::spawn(consume_loop(
            shared, deliveries, stopped, self.grace, state_tx,
        ));
        Ok(ServiceHandle {
            stop,
            task,
            topo,
            state,
        })
    }

    /// Starts the service and runs it until SIGINT or SIGTERM, then shuts down gracefully.
    ///
    /// # Errors
    /// As [`Service::start`]. A lost broker connection is not an error: the service
    /// reconnects, re-declares its topology and consumes again.
    pub async fn run(self, client: &Client) -> Result<()> {
        let ServiceHandle {
            stop,
            mut task,
            topo,
            ..
        } = self.start(client).await?;
        tokio::select! {
            _ = shutdown_signal() => {
                info!(queue = %topo.queue, "shutdown signal received; draining in-flight deliveries (a second signal exits at once)");
                let _ = stop.send(true);
                tokio::spawn(async {
                    shutdown_signal().await;
                    error!("second shutdown signal: exiting at once; unacknowledged deliveries go back to the queue");
                    std::process::exit(130);
                });
            }
            res = &mut task => return joined(res),
        }
        joined(task.await)
    }
}

fn joined(res: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    res.map_err(|e| Error::Config(format!("service task failed: {e}")))?
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A running service. Dropping it leaves the service running; call [`ServiceHandle::shutdown`].
#[derive(Debug)]
#[must_use = "the handle is the only way to shut the service down gracefully"]
pub struct ServiceHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<()>>,
    topo: Topology,
    state: watch::Receiver<ServiceState>,
}

impl ServiceHandle {
    /// Where the service stands now: `Consuming` means ready.
    pub fn state(&self) -> ServiceState {
        *self.state.borrow()
    }

    /// Follows the service's state, for a readiness probe or a callback:
    /// `while rx.changed().await.is_ok() { report(*rx.borrow()) }`.
    pub fn watch_state(&self) -> watch::Receiver<ServiceState> {
        self.state.clone()
    }

    /// The queue consumed.
    pub fn queue(&self) -> &str {
        &self.topo.queue
    }

    /// The binding keys declared.
    pub fn bindings(&self) -> &[String] {
        &self.topo.bindings
    }

    /// Stops taking deliveries, lets in-flight handlers finish (within the grace period), and
    /// returns once the consumer is closed.
    ///
    /// # Errors
    /// The consumer's failure, if it had failed before.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    async fn wait(self) -> Result<()> {
        joined(self.task.await)
    }
}

struct Shared {
    handlers: Vec<&'static HandlerDescriptor>,
    resources: Arc<Resources>,
    client: Client,
    topo: Topology,
    default_retry: RetryPolicy,
    prefetch: u16,
    metrics: crate::observe::ServiceMetrics,
}

/// Where a running service stands, for readiness and liveness probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceState {
    /// Consuming: ready.
    Consuming,
    /// The broker connection or the consumer was lost; re-declaring and re-consuming as soon
    /// as the broker is back. Alive, not ready.
    Reconnecting,
    /// Shut down, or failed for good.
    Stopped,
}

enum LoopEvent {
    Stop,
    Delivery(Box<Delivery>),
    ConsumerLost(String),
    TaskDone,
}

async fn consume_loop(
    shared: Arc<Shared>,
    mut deliveries: Deliveries,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    state: watch::Sender<ServiceState>,
) -> Result<()> {
    let mut tasks = JoinSet::new();
    let set_state = |s: ServiceState| {
        if *state.borrow() != s {
            info!(queue = %shared.topo.queue, state = ?s, "service state");
            state.send_replace(s);
        }
    };
    let outcome = loop {
        let event = tokio::select! {
            // Only an explicit shutdown stops the service: `changed()` also errs when the handle
            // is dropped, and a dropped handle must not silently stop consuming.
            Ok(()) = stop.changed() => LoopEvent::Stop,
            d = deliveries.next() => match d {
                Some(Ok(d)) => LoopEvent::Delivery(Box::new(d)),
                Some(Err(e)) => LoopEvent::ConsumerLost(e.to_string()),
                None => LoopEvent::ConsumerLost("the broker cancelled the consumer".into()),
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    error!(error = %e, "delivery task failed");
                }
                LoopEvent::TaskDone
            }
        };
        match event {
            LoopEvent::Stop => break Ok(()),
            LoopEvent::TaskDone => {}
            LoopEvent::Delivery(d) => {
                tasks.spawn(handle_delivery(shared.clone(), *d));
            }
            LoopEvent::ConsumerLost(reason) => {
                if shared.client.is_memory() {
                    break Err(Error::Config(format!(
                        "consumer of `{}` lost: {reason}",
                        shared.topo.queue
                    )));
                }
                // In-flight deliveries of the lost channel cannot be acknowledged any more; the
                // broker redelivers them. Re-declare (the broker may have restarted without
                // durable state) and consume again.
                warn!(queue = %shared.topo.queue, %reason, "consumer lost; re-consuming when the broker is back");
                set_state(ServiceState::Reconnecting);
                deliveries = loop {
                    let attempt = async {
                        shared.client.transport().declare(&shared.topo).await?;
                        shared
                            .client
                            .transport()
                            .consume(&shared.topo.queue, shared.prefetch)
                            .await
                    };
                    tokio::select! {
                        Ok(()) = stop.changed() => {
                            set_state(ServiceState::Stopped);
                            return Ok(());
                        }
                        r = attempt => match r {
                            Ok(d) => break d,
                            Err(Error::Closed) => {
                                // The client was closed: nothing will come back.
                                set_state(ServiceState::Stopped);
                                return Err(Error::Closed);
                            }
                            Err(e) => {
                                warn!(queue = %shared.topo.queue, error = %e, "re-consume failed; trying again");
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                        }
                    }
                };
                set_state(ServiceState::Consuming);
            }
        }
    };
    deliveries.cancel().await;
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(queue = %shared.topo.queue, unfinished = tasks.len(), "grace period over; unfinished deliveries go back to the queue");
        tasks.abort_all();
    }
    deliveries.close().await;
    set_state(ServiceState::Stopped);
    info!(queue = %shared.topo.queue, "stopped");
    outcome
}

/// How long a message that could not be parked waits before it is given back to the queue.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// Header holding the part of a retry delay still to wait, in milliseconds (see `plan_hops`).
pub const DELAY_HEADER: &str = "x-tchu-delay-remaining";
/// Header holding which run of the targeted handler the message is for (1-based).
pub const ATTEMPT_HEADER: &str = "x-tchu-attempt";
/// Header keeping the routing key a message had before it went through a delay or DLQ queue.
pub const ORIGINAL_KEY_HEADER: &str = "x-tchu-original-routing-key";
/// Header on a retried copy: the error of the last failed run.
pub const LAST_ERROR_HEADER: &str = "x-tchu-last-error";
/// Dead-letter header: the service queue the message was parked from.
pub const QUEUE_HEADER: &str = "x-tchu-queue";
/// Dead-letter header: the failure kind (`failed`, `rejected`, `panicked`, `undecodable`,
/// `no_handler`, `too_large`).
pub const ERROR_KIND_HEADER: &str = "x-tchu-error-kind";
/// Dead-letter header: the failure's message.
pub const ERROR_HEADER: &str = "x-tchu-error";
/// Dead-letter header: when it was parked (ISO 8601, UTC).
pub const FAILED_AT_HEADER: &str = "x-tchu-failed-at";
/// Dead-letter header: how many runs the handler had.
pub const ATTEMPTS_HEADER: &str = "x-tchu-attempts";
/// Header the `tchu dlq replay` tool sets: how many times the message was replayed.
pub const REPLAYED_HEADER: &str = "x-tchu-replayed";

async fn handle_delivery(shared: Arc<Shared>, d: Delivery) {
    let span = info_span!(
        "tchu.delivery",
        queue = %shared.topo.queue,
        routing_key = %d.msg.routing_key,
        topic = tracing::field::Empty,
        id = tracing::field::Empty,
        attempt = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        redelivered = d.redelivered,
    );
    async move {
        let Delivery { mut msg, redelivered, acker } = d;
        // A retry still waiting: on to the next delay tier, without running anything.
        if let Some(left) = msg.headers.get(DELAY_HEADER).and_then(Value::as_u64).filter(|l| *l > 0) {
            match send_delayed(&shared, msg.clone(), left).await {
                Ok(()) => settle(acker.ack().await),
                Err(e) => {
                    error!(error = %e, "could not move a delayed retry on; requeueing it in a second");
                    tokio::time::sleep(REQUEUE_PAUSE).await;
                    settle(acker.requeue(msg).await);
                }
            }
            return;
        }
        let max = shared.client.max_message_bytes();
        if msg.body.len() > max {
            let reason = format!("the message is {} bytes, over the limit of {max} bytes", msg.body.len());
            error!(%reason, "oversized message; moving it to the dead-letter queue");
            settle_failures(&shared, Some(acker), msg, vec![Failure::dead(None, "too_large", reason)], 1).await;
            return;
        }
        if let Some(key) = msg.headers.get(ORIGINAL_KEY_HEADER).and_then(Value::as_str) {
            msg.routing_key = key.to_owned();
        }
        let env = match decode(&msg) {
            Ok(Decoded::Event(env)) => env,
            Ok(Decoded::ForeignTask { task }) => {
                debug!(task, "ignoring a Celery task that is not tchu's dispatcher");
                settle(acker.ack().await);
                return;
            }
            Err(e) => {
                error!(error = %e, "undecodable message; moving it to the dead-letter queue");
                let f = Failure::dead(None, "undecodable", e.to_string());
                settle_failures(&shared, Some(acker), msg, vec![f], 1).await;
                return;
            }
        };
        let span = tracing::Span::current();
        span.record("topic", env.topic.as_str());
        span.record("id", env.id.as_str());
        span.record("correlation_id", tracing::field::display(msg.properties.correlation_id.as_deref().unwrap_or(env.id.as_str())));
        // This service's handling is a new span of the sender's trace (or starts one).
        let trace = TraceContext::from_headers(&msg.headers).map_or_else(TraceContext::new_root, |t| t.child());
        span.record("trace_id", tracing::field::display(crate::observe::TraceIdHex(trace.trace_id)));
        let targeted = msg.headers.get(HANDLER_HEADER).and_then(Value::as_str);
        let attempt = match targeted {
            Some(_) => msg.headers.get(ATTEMPT_HEADER).and_then(Value::as_u64).map_or(1, |a| a.clamp(1, u64::from(u32::MAX)) as u32),
            None => 1,
        };
        span.record("attempt", attempt);
        let handlers: Vec<&'static HandlerDescriptor> = shared
            .handlers
            .iter()
            .copied()
            .filter(|h| match targeted {
                Some(name) => h.name == name,
                None => pattern_matches(h.pattern, &env.topic),
            })
            .collect();
        let reply_to = if env.is_rpc { msg.properties.reply_to.clone() } else { None };
        if handlers.is_empty() && targeted.is_none() && reply_to.is_some() {
            // The caller is told at once (tchu-tchu's `no_handlers` answer); nothing to park.
            warn!(topic = %env.topic, "RPC request no handler matches; answering `no_handlers`");
            send_reply(&shared, &msg, &env.id, &env.topic, &[]).await;
            settle(acker.ack().await);
            return;
        }
        // Only responders answer: a service whose matching handlers are all observers (an
        // audit log on `rpc.#`) runs them and stays silent, so its `null` can never be taken
        // for the responder's answer. A service with both answers with its responders' entries.
        let reply_to = reply_to.filter(|_| handlers.iter().any(|h| h.responder));
        if handlers.is_empty() {
            let reason = match targeted {
                Some(name) => format!("service `{}` has no handler named `{name}`", shared.topo.queue),
                None => format!("no handler of service `{}` matches topic `{}`", shared.topo.queue, env.topic),
            };
            warn!(%reason, "unhandled message; moving it to the dead-letter queue");
            settle_failures(&shared, Some(acker), msg, vec![Failure::dead(None, "no_handler", reason)], attempt).await;
            return;
        }
        // Early acknowledgement (Celery's default) only when every handler involved asked for it.
        let acker = if handlers.iter().all(|h| h.ack == AckPolicy::Early) {
            settle(acker.ack().await);
            None
        } else {
            Some(acker)
        };
        let incoming = Arc::new(Incoming {
            message: Message { envelope: env, routing_key: msg.routing_key.clone(), headers: msg.headers.clone(), redelivered },
            resources: shared.resources.clone(),
            attempt,
        });
        let results: Vec<(&HandlerDescriptor, Result<Outcome, HandlerError>)> = if handlers.len() == 1 {
            vec![(handlers[0], run_handler(&shared, handlers[0], incoming.clone(), &trace).await)]
        } else {
            // Several handlers run concurrently; one failing or panicking does not stop the rest.
            let mut set = JoinSet::new();
            for (i, h) in handlers.iter().enumerate() {
                let inc = incoming.clone();
                let h = *h;
                let (shared, trace) = (shared.clone(), trace.clone());
                set.spawn(async move { (i, run_handler(&shared, h, inc, &trace).await) }.in_current_span());
            }
            let mut out: Vec<Option<Result<Outcome, HandlerError>>> = vec![None; handlers.len()];
            while let Some(r) = set.join_next().await {
                if let Ok((i, r)) = r {
                    out[i] = Some(r);
                }
            }
            handlers
                .iter()
                .zip(out)
                .map(|(h, r)| (*h, r.unwrap_or_else(|| Err(HandlerError::new(HandlerErrorKind::Panicked, "handler task aborted")))))
                .collect()
        };
        let mut failures = Vec::new();
        let mut answers = Vec::new();
        for (h, r) in results {
            let handler = h.name.to_owned();
            match r {
                Ok(Outcome::Done) => debug!(handler = h.name, "handled"),
                Ok(Outcome::Reply(value)) => {
                    debug!(handler = h.name, "answered");
                    answers.push(ReplyEntry::Answered { handler, value, is_error: false });
                }
                Ok(Outcome::BusinessError(value)) => {
                    debug!(handler = h.name, "answered with a business error");
                    answers.push(ReplyEntry::Answered { handler, value, is_error: true });
                }
                Err(e) if h.responder && reply_to.is_some() => {
                    // The caller gets the failure; retrying or parking a request nobody will
                    // wait for helps no one.
                    error!(handler = h.name, topic = %incoming.message.topic(), kind = e.kind().as_str(), error = %e.message(), "responder failed; the caller is told");
                    answers.push(ReplyEntry::Failed { handler, error: e.message().to_owned() });
                }
                Err(e) => {
                    let policy = h.retry.unwrap_or(shared.default_retry);
                    let retryable = match e.kind() {
                        HandlerErrorKind::Panicked => true,
                        HandlerErrorKind::Rejected => false,
                        _ => h.retry_on.is_none_or(|on| e.causes().any(on)),
                    };
                    if retryable && policy.retries_after(attempt) {
                        let delay = policy.delay_for(attempt, fastrand::f64());
                        warn!(handler = h.name, topic = %incoming.message.topic(), attempt, max_attempts = policy.max_attempts, delay_ms = delay.as_millis() as u64, error = %e.message(), "handler failed; retrying");
                        failures.push(Failure { handler: Some(h.name), kind: e.kind().as_str(), reason: e.message().to_owned(), retry_in: Some(delay) });
                    } else {
                        error!(handler = h.name, topic = %incoming.message.topic(), kind = e.kind().as_str(), attempt, retryable, error = %e.message(), "handler failed; the message goes to the dead-letter queue");
                        failures.push(Failure::dead(Some(h.name), e.kind().as_str(), e.message().to_owned()));
                    }
                }
            }
        }
        if reply_to.is_some() {
            send_reply(&shared, &msg, incoming.message.id(), incoming.message.topic(), &answers).await;
        }
        if failures.is_empty() {
            if let Some(acker) = acker {
                settle(acker.ack().await);
            }
        } else {
            settle_failures(&shared, acker, msg, failures, attempt).await;
        }
    }
    .instrument(span)
    .await
}

/// Answers an RPC request in the Celery `rpc://` result shape (see `tchu_core::rpc`).
async fn send_reply(
    shared: &Shared,
    request: &WireMessage,
    task_id: &str,
    topic: &str,
    entries: &[ReplyEntry],
) {
    let Some(reply_to) = request.properties.reply_to.clone() else {
        return;
    };
    let reply = WireMessage {
        routing_key: reply_to,
        properties: Properties {
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            delivery_mode: Some(1),
            priority: Some(0),
            // v1 requests carry no correlation id: Celery then uses the task id, and so do we.
            correlation_id: Some(
                request
                    .properties
                    .correlation_id
                    .clone()
                    .unwrap_or_else(|| task_id.to_owned()),
            ),
            ..Properties::default()
        },
        headers: Default::default(),
        body: encode_reply(
            task_id,
            topic,
            entries,
            &tchu_core::time::now_iso8601(false),
        ),
    };
    // Not mandatory: a caller that gave up has no reply queue any more, which is not an error.
    if let Err(e) = shared.client.transport().send_unconfirmed("", &reply).await {
        error!(error = %e, "could not send the RPC reply; the caller will time out");
    }
}

async fn run_handler(
    shared: &Shared,
    h: &'static HandlerDescriptor,
    incoming: Arc<Incoming>,
    trace: &TraceContext,
) -> Result<Outcome, HandlerError> {
    let m = shared.metrics.handler(h.name);
    // A guard, so a task aborted at the end of the grace period still leaves the gauge right.
    struct InFlight<'a>(&'a metrics::Gauge);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.decrement(1.0);
        }
    }
    shared.metrics.in_flight.increment(1.0);
    let in_flight = InFlight(&shared.metrics.in_flight);
    let started = std::time::Instant::now();
    let result = crate::observe::in_trace(trace.clone(), call_handler(h, incoming)).await;
    drop(in_flight);
    if let Some(m) = m {
        m.duration.record(started.elapsed());
        match &result {
            Ok(_) => m.handled.increment(1),
            Err(e) => m.failed(e.kind()),
        }
    }
    result
}

async fn call_handler(
    h: &'static HandlerDescriptor,
    incoming: Arc<Incoming>,
) -> Result<Outcome, HandlerError> {
    match AssertUnwindSafe((h.call)(incoming)).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            Err(HandlerError::new(
                HandlerErrorKind::Panicked,
                format!("handler panicked: {text}"),
            ))
        }
    }
}

struct Failure {
    handler: Option<&'static str>,
    kind: &'static str,
    reason: String,
    /// `Some(delay)`: retry the handler after the delay; `None`: dead-letter.
    retry_in: Option<Duration>,
}

impl Failure {
    fn dead(handler: Option<&'static str>, kind: &'static str, reason: String) -> Self {
        Self {
            handler,
            kind,
            reason,
            retry_in: None,
        }
    }
}

fn settle(r: Result<()>) {
    if let Err(e) = r {
        // The broker redelivers an unacknowledged message: at worst a duplicate, never a loss.
        warn!(error = %e, "acknowledgement failed; the broker will redeliver");
    }
}

/// Sends one copy per failure, to a delay tier (retry) or to the dead-letter queue, then
/// acknowledges. If a copy cannot be sent, the whole message is requeued instead, so it is never
/// lost (handlers that had succeeded may then run again: at-least-once).
async fn settle_failures(
    shared: &Shared,
    acker: Option<crate::transport::Acker>,
    msg: WireMessage,
    failures: Vec<Failure>,
    attempt: u32,
) {
    let failed_at = tchu_core::time::now_iso8601(true);
    for f in &failures {
        let mut copy = msg.clone();
        // Parked and retried copies are persistent, whatever the original was.
        copy.properties.delivery_mode = Some(2);
        let h = &mut copy.headers;
        h.insert(ORIGINAL_KEY_HEADER.into(), msg.routing_key.clone().into());
        match f.handler {
            Some(name) => h.insert(HANDLER_HEADER.into(), name.into()),
            None => h.remove(HANDLER_HEADER),
        };
        let sent = match f.retry_in {
            Some(delay) => {
                h.insert(ATTEMPT_HEADER.into(), (attempt + 1).into());
                h.insert(LAST_ERROR_HEADER.into(), truncate(&f.reason, 4096).into());
                let sent = send_delayed(shared, copy, delay.as_millis() as u64).await;
                if let (Ok(()), Some(m)) =
                    (&sent, f.handler.and_then(|h| shared.metrics.handler(h)))
                {
                    m.retried.increment(1);
                }
                sent
            }
            None => {
                h.insert(QUEUE_HEADER.into(), shared.topo.queue.clone().into());
                h.insert(ERROR_KIND_HEADER.into(), f.kind.into());
                h.insert(ERROR_HEADER.into(), truncate(&f.reason, 4096).into());
                h.insert(FAILED_AT_HEADER.into(), failed_at.clone().into());
                h.insert(ATTEMPTS_HEADER.into(), attempt.into());
                // A replayed dead letter starts its retries afresh.
                h.remove(ATTEMPT_HEADER);
                h.remove(DELAY_HEADER);
                h.remove(LAST_ERROR_HEADER);
                copy.routing_key = shared.topo.dead_letter_queue.clone();
                let sent = shared.client.transport().publish("", &copy, true).await;
                if sent.is_ok() {
                    shared.metrics.dead_lettered(f.kind);
                }
                sent
            }
        };
        if let Err(e) = sent {
            match acker {
                Some(acker) => {
                    error!(error = %e, "could not park the message or schedule its retry; requeueing it in a second");
                    // A pause, so a broken broker link does not turn into a hot redelivery loop.
                    tokio::time::sleep(REQUEUE_PAUSE).await;
                    settle(acker.requeue(msg).await);
                }
                None => {
                    error!(error = %e, "could not park the message or schedule its retry; it was acknowledged early (`ack = \"early\"`) and is lost")
                }
            }
            return;
        }
    }
    if let Some(acker) = acker {
        settle(acker.ack().await);
    }
}

/// Parks a copy in the delay tier for the next hop of `delay_ms`, or straight back in the
/// service queue when nothing is left to wait.
async fn send_delayed(shared: &Shared, mut copy: WireMessage, delay_ms: u64) -> Result<()> {
    match plan_hops(delay_ms) {
        None => {
            copy.headers.remove(DELAY_HEADER);
            copy.routing_key = shared.topo.queue.clone();
        }
        Some((tier, rest)) => {
            copy.headers.insert(DELAY_HEADER.into(), rest.into());
            copy.routing_key = delay_queue_name(&shared.topo.queue, tier);
        }
    }
    shared.client.transport().publish("", &copy, true).await
}

/// The delay tier queue of `queue` holding messages for `tier_ms`.
pub fn delay_queue_name(queue: &str, tier_ms: u64) -> String {
    format!("{queue}.delay.{tier_ms}ms")
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Runs a service the way `tchu::run!()` does: reads the command line (see
/// [`crate::command`]); for `run` (the default) logs to stderr (unless a subscriber is already
/// installed), connects with [`Client::from_env`], and runs until SIGINT or SIGTERM. Any other
/// command prints its result and exits the process with the command's exit code.
///
/// # Errors
/// As [`Client::from_env`] and [`Service::run`].
pub async fn run_service(service: Service) -> Result<()> {
    // Lossy: a non-UTF-8 argument is then an unknown command, not a panic.
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match crate::command::Command::parse(&args) {
        Ok(crate::command::Command::Run) => {}
        Ok(cmd) => {
            let code = crate::command::execute(&service, &cmd).await;
            std::process::exit(code);
        }
        Err(msg) => {
            eprintln!("error: {msg}\n\n{}", crate::command::USAGE);
            std::process::exit(2);
        }
    }
    init_tracing();
    crate::observe::install_prometheus_from_env()?;
    let client = Client::from_env().await?;
    let res = service.run(&client).await;
    client.close().await;
    if let Err(e) = &res {
        error!(error = %e, "service stopped with an error");
    }
    res
}

/// Installs a `tracing` subscriber writing to stderr, filtered by `RUST_LOG` (default `info`),
/// unless one is already installed.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The queue name `run!()` uses: `TCHU_QUEUE` if set, else the one given, else the crate name.
pub fn queue_name(given: Option<&str>, crate_name: &str) -> String {
    std::env::var("TCHU_QUEUE")
        .ok()
        .filter(|q| !q.is_empty())
        .or_else(|| given.map(str::to_owned))
        .unwrap_or_else(|| crate_name.to_owned())
}

/// The prefetch `run!()` uses: `TCHU_PREFETCH` if set and valid, else the one given, else the default.
pub fn prefetch_from_env(given: Option<u16>) -> u16 {
    std::env::var("TCHU_PREFETCH")
        .ok()
        .and_then(|p| p.parse().ok())
        .or(given)
        .unwrap_or(DEFAULT_PREFETCH)
}
