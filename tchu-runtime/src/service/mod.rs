//! A service: one durable queue, its bindings, and the dispatch of every delivery to the
//! matching handlers linked into the binary.
//!
//! Delivery policy: a message is acknowledged only after every matching handler finished.
//! A message that cannot be decoded, matches no handler, or fails a handler is parked in the
//! service's dead-letter queue `<queue>.dlq` with the reason in `x-tchu-*` headers, then
//! acknowledged: never requeued forever, never lost. A copy parked for a failed handler names
//! that handler, and a parked message sent back to the queue re-runs only that handler.

mod consume;
mod handlers;
mod health;
mod ordered;
mod quarantine;
mod replay;

pub use handlers::ORDERED_RETRY_WAIT_MAX;
pub use health::HEALTH_ADDR_ENV;
use replay::ReplayFrom;

use crate::client::Client;
use crate::dispatch::Dispatcher;
use crate::error::{Error, Result};
use crate::handler::{Handler, Resources};
use crate::inbox::Inbox;
use crate::schedule::Schedules;
use crate::transport::spec::OrderedQueue;
use crate::transport::{Topology, delay_queue_name};
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tchu_core::retry::{DELAY_TIERS_MS, RetryPolicy};
use tokio::sync::watch;
use tracing::{error, info, warn};

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
    settings: ServiceSettings,
    state: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    inbox: Option<Arc<Inbox>>,
    /// Handlers built at run time ([`Service::handler`]), after the attribute ones.
    runtime: Vec<Handler>,
    #[cfg(feature = "postgres")]
    relay: Option<crate::outbox::OutboxRelay>,
}

/// A service's settings, as its builder methods set them ([`Service::settings`] reads them).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceSettings {
    /// The queue name ([`Service::new`]).
    pub queue: String,
    /// [`Service::prefetch`].
    pub prefetch: u16,
    /// [`Service::handlers_in`]: module prefixes whose handlers run (empty: all).
    pub modules: Vec<String>,
    /// [`Service::shutdown_grace`].
    pub grace: Duration,
    /// [`Service::default_retry`].
    pub default_retry: RetryPolicy,
    /// [`Service::quorum`].
    pub quorum: bool,
    /// [`Service::version`].
    pub version: String,
    /// [`Service::redelivery_limit`], when set (else `TCHU_REDELIVERY_LIMIT` or the default).
    pub redelivery_limit: Option<u32>,
    /// [`Service::max_in_flight_bytes`].
    pub max_in_flight_bytes: usize,
    /// [`Service::replay_from`]: the replay point as given.
    pub replay_from: Option<String>,
    /// [`Service::event_log`].
    pub event_log: String,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("queue", &self.settings.queue)
            .field("prefetch", &self.settings.prefetch)
            .field("modules", &self.settings.modules)
            .finish_non_exhaustive()
    }
}

/// Prefetch used when none is set: enough to keep a handler pool busy, small enough that one
/// slow replica does not hoard work its siblings could do.
pub const DEFAULT_PREFETCH: u16 = 16;

/// The default of [`Service::max_in_flight_bytes`].
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 64 * 1024 * 1024;

/// Runs that end the process before a message is parked as `crashed`, unless configured
/// ([`Service::redelivery_limit`], `TCHU_REDELIVERY_LIMIT`).
pub const DEFAULT_REDELIVERY_LIMIT: u32 = 5;

/// Environment variable overriding [`DEFAULT_REDELIVERY_LIMIT`].
pub const REDELIVERY_LIMIT_ENV: &str = "TCHU_REDELIVERY_LIMIT";

impl Service {
    /// A service consuming from `queue`, running every handler linked into the binary.
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            settings: ServiceSettings {
                queue: queue.into(),
                prefetch: DEFAULT_PREFETCH,
                modules: Vec::new(),
                grace: Duration::from_secs(30),
                default_retry: RetryPolicy::NONE,
                quorum: false,
                version: "0.0.0".into(),
                redelivery_limit: None,
                max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
                replay_from: None,
                event_log: crate::amqp::log::DEFAULT_LOG.to_owned(),
            },
            state: HashMap::new(),
            inbox: None,
            runtime: Vec::new(),
            #[cfg(feature = "postgres")]
            relay: None,
        }
    }

    /// What the builder methods set.
    pub fn settings(&self) -> &ServiceSettings {
        &self.settings
    }

    /// The queue name.
    pub fn queue(&self) -> &str {
        &self.settings.queue
    }

    /// How many deliveries may be in progress at once (AMQP `basic.qos`). At least 1.
    pub fn prefetch(mut self, n: u16) -> Self {
        self.settings.prefetch = n.max(1);
        self
    }

    /// Runs only the handlers defined in this module or below it (a `module_path!()` prefix).
    /// Call several times to add modules. Lets one binary host several services.
    pub fn handlers_in(mut self, module: impl Into<String>) -> Self {
        self.settings.modules.push(module.into());
        self
    }

    /// The inbox of the service's `#[tchu::subscribe(dedup)]` handlers: each runs once per
    /// key. With a PostgreSQL inbox, handlers can also take the transaction as `Tx`.
    /// A service with `dedup` handlers and no inbox does not start.
    pub fn inbox(mut self, inbox: Inbox) -> Self {
        self.inbox = Some(Arc::new(inbox));
        self
    }

    /// Runs the outbox relay beside the service, on its connection, until the service
    /// stops: what [`crate::Outbox::publish`] stored is published in order.
    #[cfg(feature = "postgres")]
    pub fn relay_outbox(mut self, outbox: crate::Outbox) -> Self {
        self.relay = Some(outbox.relay());
        self
    }

    /// Registers shared state, handed to handlers taking a [`crate::State<T>`] argument.
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(TypeId::of::<T>(), Arc::new(value));
        self
    }

    /// Registers state already behind an `Arc`, so the caller keeps a handle to it.
    pub fn state_arc<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.state.insert(TypeId::of::<T>(), value);
        self
    }

    /// The former name of [`Service::state`].
    #[deprecated(
        since = "0.1.0",
        note = "builders take bare setters: use `Service::state`"
    )]
    pub fn with_state<T: Send + Sync + 'static>(self, value: T) -> Self {
        self.state(value)
    }

    /// The former name of [`Service::state_arc`].
    #[deprecated(
        since = "0.1.0",
        note = "builders take bare setters: use `Service::state_arc`"
    )]
    pub fn with_state_arc<T: Send + Sync + 'static>(self, value: Arc<T>) -> Self {
        self.state_arc(value)
    }

    /// Declares the service queue, its dead-letter queue and its delay tiers as quorum queues
    /// (replicated across a RabbitMQ cluster, RabbitMQ 3.10 or newer). A queue's type cannot
    /// change once declared: switching an existing service means a new queue name.
    pub fn quorum(mut self, quorum: bool) -> Self {
        self.settings.quorum = quorum;
        self
    }

    /// How many body bytes the deliveries in progress may hold together (default 64 MiB): the
    /// service takes no further delivery while they exceed it (one always goes, whatever its
    /// size), so a backlog of large messages is not all held, decoded and copied at once.
    pub fn max_in_flight_bytes(mut self, bytes: usize) -> Self {
        self.settings.max_in_flight_bytes = bytes;
        self
    }

    /// How many runs that end the process (or its connection) a message gets before it is
    /// parked with `x-tchu-error-kind: crashed` instead of run again: the first on the service
    /// queue, the others alone from the quarantine. At least 2 (a smaller value counts as 2).
    /// Default: `TCHU_REDELIVERY_LIMIT`, else [`DEFAULT_REDELIVERY_LIMIT`].
    pub fn redelivery_limit(mut self, limit: u32) -> Self {
        self.settings.redelivery_limit = Some(limit);
        self
    }

    /// The redelivery limit in force: the one set, else `TCHU_REDELIVERY_LIMIT`, else the default.
    fn effective_redelivery_limit(&self) -> u32 {
        let limit = self.settings.redelivery_limit.unwrap_or_else(|| {
            std::env::var(REDELIVERY_LIMIT_ENV)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(DEFAULT_REDELIVERY_LIMIT)
        });
        // With a single run, a message merely in flight beside a killer could not be told
        // from it: the run alone in the quarantine is what tells them apart.
        limit.max(2)
    }

    /// The retry policy of handlers that declare none (default: no retry).
    pub fn default_retry(mut self, policy: RetryPolicy) -> Self {
        self.settings.default_retry = policy;
        self
    }

    /// Whether any handler of the service may retry, so the delay tiers are needed.
    fn retries(&self) -> bool {
        self.handlers()
            .iter()
            .any(|h| h.retry.unwrap_or(self.settings.default_retry).max_attempts > 1)
    }

    /// Everything the service declares: queue, dead-letter queue, delay tiers, bindings.
    pub(crate) fn topology(&self) -> Topology {
        let delay_queues = if self.retries() {
            DELAY_TIERS_MS
                .iter()
                .map(|t| (delay_queue_name(&self.settings.queue, *t), *t))
                .collect()
        } else {
            Vec::new()
        };
        Topology {
            queue: self.settings.queue.clone(),
            dead_letter_queue: self.dead_letter_queue(),
            quarantine_queue: format!("{}.quarantine", self.settings.queue),
            bindings: self.bindings(),
            delay_queues,
            quorum: self.settings.quorum,
            ordered: self.ordered_queue(),
        }
    }

    /// The ordered queue's name: `<queue>.ordered`.
    pub fn ordered_queue_name(&self) -> String {
        format!("{}.ordered", self.settings.queue)
    }

    fn ordered_queue(&self) -> Option<OrderedQueue> {
        let bindings = self.ordered_bindings();
        (!bindings.is_empty()).then(|| OrderedQueue {
            name: self.ordered_queue_name(),
            bindings,
        })
    }

    /// The service's version, shown by `topology` and in its AsyncAPI document
    /// (`tchu::run!()` passes the crate's version).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.settings.version = version.into();
        self
    }

    /// How long shutdown waits for in-flight handlers (default 30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.settings.grace = grace;
        self
    }

    /// Catches up from the event log before consuming: at start, the past events of the log
    /// (`tchu log declare` makes it) that match the service's bindings are dispatched in log
    /// order, from `since` up to a marker written once the queue is bound, and only then is the
    /// queue consumed. Nothing falls between the two; an event published while the replay
    /// begins comes twice with one id, and the inbox applies it once. `since` is a duration
    /// back from now (`1h`, `2d`), an RFC 3339 time, `first` or `offset:N`. Replayed messages
    /// say where they came from ([`Message::replayed_from`](crate::Message::replayed_from)).
    ///
    /// One replica replays, the others wait for it. Progress is kept in `<queue>.replay`: a
    /// replay stopped or killed resumes where it stopped, and once it finished, a start with
    /// the same `since` consumes live at once (another `since` replays again). RabbitMQ only;
    /// a start-up error on the in-memory broker or for a `since` that does not parse.
    pub fn replay_from(mut self, since: impl Into<String>) -> Self {
        self.settings.replay_from = Some(since.into());
        self
    }

    /// The event log [`Service::replay_from`] reads (default `tchu_events.log`).
    pub fn event_log(mut self, log: impl Into<String>) -> Self {
        self.settings.event_log = log.into();
        self
    }

    /// What [`Service::replay_from`] asks for, with the log it reads.
    fn replay(&self) -> Option<ReplayFrom> {
        let since = self.settings.replay_from.clone()?;
        let log = self.settings.event_log.clone();
        Some(ReplayFrom { since, log })
    }

    /// The dead-letter queue's name.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.settings.queue)
    }

    /// Declares the topology, starts consuming in the background, and returns a handle to stop.
    ///
    /// # Errors
    /// [`Error::InvalidService`] for a service with no handlers, duplicate names or missing state;
    /// broker errors while declaring or consuming.
    pub async fn start(self, client: &Client) -> Result<ServiceHandle> {
        let handlers: Vec<Arc<Handler>> = self.handlers().into_iter().map(Arc::new).collect();
        let resources = Arc::new(Resources {
            state: self.state.clone(),
            client: client.clone(),
            queue: self.settings.queue.clone(),
            transactional: self.inbox.as_ref().is_some_and(|i| i.is_transactional()),
        });
        self.validate(&handlers, &resources)?;
        let signing = Dispatcher::signing_key(client);
        let schedules = self.prepare_stores(&handlers, client, &signing).await?;
        let queue = &self.settings.queue;
        let topo = self.topology();
        log_definition(&topo, &handlers);
        // Logged for operators; RabbitMQ 4.x changes defaults tchu depends on (README,
        // "RabbitMQ versions").
        if let Some(broker) = client.transport().broker_info().await {
            info!(product = %broker.product, version = %broker.version, "broker");
        }
        client.transport().declare(&topo).await?;
        // Catching up first, the queue is consumed once the replay is over.
        let deliveries = match self.settings.replay_from {
            Some(_) => None,
            None => Some(
                (client.transport())
                    .consume(&self.settings.queue, self.settings.prefetch)
                    .await?,
            ),
        };
        info!(
            %queue,
            prefetch = self.settings.prefetch,
            handlers = handlers.len(),
            dead_letters = %topo.dead_letter_queue,
            "consuming"
        );
        let shared = Arc::new(Dispatcher {
            metrics: crate::dispatch::ServiceMetrics::new(&self.settings.queue, &handlers),
            handlers,
            service: Arc::from(self.settings.queue.as_str()),
            resources,
            client: client.clone(),
            topo: topo.clone(),
            default_retry: self.settings.default_retry,
            prefetch: self.settings.prefetch,
            signing,
            redelivery_limit: self.effective_redelivery_limit(),
            max_in_flight_bytes: self.settings.max_in_flight_bytes,
            inbox: self.inbox.clone(),
            holds: Default::default(),
            sagas: Default::default(),
            schedules: schedules.clone(),
        });
        let (stop, stopped) = watch::channel(false);
        let (state_tx, state) = watch::channel(match self.settings.replay_from {
            Some(_) => ServiceState::Replaying,
            None => ServiceState::Consuming,
        });
        let ordered = self.start_ordered(&shared, &stopped).await?;
        let consuming = live_after_replay(
            shared,
            (deliveries, self.replay()),
            stopped,
            self.settings.grace,
            state_tx,
        );
        let consuming = beside_ordered(consuming, ordered);
        let companions = self.companions(client, schedules);
        let task = tokio::spawn(companions.around(consuming));
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
        let handle = self.start(client).await?;
        health::serve_from_env(handle.watch_state(), handle.stop.subscribe()).await?;
        let ServiceHandle {
            stop,
            mut task,
            topo,
            ..
        } = handle;
        tokio::select! {
            _ = crate::signal::shutdown_signal() => {
                info!(queue = %topo.queue, "shutdown signal received; draining in-flight deliveries (a second signal stops at once)");
                let _ = stop.send(true);
            }
            res = &mut task => return joined(res),
        }
        tokio::select! {
            res = &mut task => joined(res),
            _ = crate::signal::shutdown_signal() => {
                // Unsettled deliveries go back to the queue when their channel closes.
                error!(help = "tchu::troubleshooting#interrupted", "second shutdown signal: stopping at once; unacknowledged deliveries go back to the queue");
                task.abort();
                Err(Error::Interrupted)
            }
        }
    }
}

impl Service {
    /// Prepares the stores the handlers need: the inbox (with the sagas' and schedules'
    /// tables), and the schedules' rows. Returns the schedules, when it has any.
    async fn prepare_stores(
        &self,
        handlers: &[Arc<Handler>],
        client: &Client,
        signing: &crate::dispatch::SigningKey,
    ) -> Result<Option<Arc<Schedules>>> {
        let queue = &self.settings.queue;
        let key = signing.clone();
        let sign: crate::headers::Signer = Arc::new(move |msg| key.sign(msg));
        let schedules = Schedules::of(queue, handlers, self.inbox.as_deref(), client, sign)?;
        if let Some(inbox) = &self.inbox {
            let tables = crate::inbox::Tables {
                sagas: handlers.iter().any(|h| h.saga.is_some()),
                schedules: schedules.is_some(),
            };
            inbox.prepare(tables).await?;
            info!(%queue, store = inbox.store_name(), "inbox");
            if let Some(w) = inbox.capacity_warning(self.settings.prefetch) {
                warn!(help = "tchu::troubleshooting#inbox-pool-small", %queue, "{w}");
            }
        }
        if let Some(s) = &schedules {
            s.register().await?;
        }
        Ok(schedules)
    }

    /// Consumes the ordered queue, when the service has ordered handlers, in a task of its own.
    async fn start_ordered(
        &self,
        shared: &Arc<Dispatcher>,
        stopped: &watch::Receiver<bool>,
    ) -> Result<Option<tokio::task::JoinHandle<Result<()>>>> {
        let Some(o) = &shared.topo.ordered else {
            return Ok(None);
        };
        let window = ordered::window(self.settings.prefetch);
        let deliveries = shared.client.transport().consume(&o.name, window).await?;
        info!(queue = %o.name, window, "consuming in order per key");
        let run = ordered::ordered_loop(
            shared.clone(),
            o.name.clone(),
            deliveries,
            stopped.clone(),
            self.settings.grace,
        );
        Ok(Some(tokio::spawn(run)))
    }
}

/// Logs the handlers and the bindings, for operators.
fn log_definition(topo: &Topology, handlers: &[Arc<Handler>]) {
    let queue = &topo.queue;
    for h in handlers {
        let event = h.event.unwrap_or("-");
        let origin = h.origin.as_str();
        info!(%queue, handler = %h.name, pattern = %h.pattern, event, origin, "handler");
    }
    for key in &topo.bindings {
        let exchange = crate::transport::EXCHANGE;
        info!(%queue, exchange, binding = %key, "binding");
    }
}

/// Consumes the queue, after catching up from the event log when the service replays.
async fn live_after_replay(
    shared: Arc<Dispatcher>,
    (deliveries, replay): (Option<crate::transport::Deliveries>, Option<ReplayFrom>),
    mut stopped: watch::Receiver<bool>,
    grace: Duration,
    state: watch::Sender<ServiceState>,
) -> Result<()> {
    let deliveries = match (deliveries, replay) {
        (Some(d), _) => Ok(Some(d)),
        (None, replay) => caught_up(&shared, replay, &mut stopped, grace).await,
    };
    let deliveries = match deliveries {
        Ok(Some(d)) => d,
        // Stopped meanwhile, or failed for good: a probe must not see a replay still going.
        other => {
            state.send_replace(ServiceState::Stopped);
            return other.map(drop);
        }
    };
    // Only a replay changes it: a probe watching for changes sees none otherwise.
    state.send_if_modified(|s| {
        std::mem::replace(s, ServiceState::Consuming) != ServiceState::Consuming
    });
    consume::consume_loop(shared, deliveries, stopped, grace, state).await
}

/// Catches up from the event log, then starts consuming the queue; `None` when the service
/// was told to stop meanwhile.
async fn caught_up(
    shared: &Arc<Dispatcher>,
    replay: Option<ReplayFrom>,
    stopped: &mut watch::Receiver<bool>,
    grace: Duration,
) -> Result<Option<crate::transport::Deliveries>> {
    if let Some(plan) = replay
        && let replay::CaughtUp::Stopped = replay::catch_up(shared, &plan, stopped, grace).await?
    {
        return Ok(None);
    }
    consume::consume_again(shared, stopped).await
}

/// Runs the service queue's consume loop beside the ordered queue's, if any: stopped by the
/// same signal, they drain together; when the first fails, the second is stopped.
async fn beside_ordered(
    consuming: impl Future<Output = Result<()>>,
    ordered: Option<tokio::task::JoinHandle<Result<()>>>,
) -> Result<()> {
    let outcome = consuming.await;
    let Some(ordered) = ordered else {
        return outcome;
    };
    if outcome.is_err() {
        ordered.abort();
    }
    match ordered.await {
        Ok(Err(e)) => {
            error!(help = "tchu::troubleshooting#reconnecting", error = %crate::error_chain(&e), "the ordered queue's consumer failed")
        }
        Err(e) if !e.is_cancelled() => {
            error!(help = "tchu::troubleshooting#dispatch-bug", error = %crate::error_chain(&e), "the ordered queue's consumer failed")
        }
        _ => {}
    }
    outcome
}

impl Service {
    /// The tasks that live as long as the service: the inbox's cleaning, the outbox relay, the
    /// schedules' firing.
    fn companions(&self, client: &Client, schedules: Option<Arc<Schedules>>) -> Companions {
        let (stop, stopped) = watch::channel(false);
        let stopping = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut tasks = Vec::new();
        if let Some(inbox) = self.inbox.clone() {
            let (stop, queue) = (stopping(stopped.clone()), self.settings.queue.clone());
            tasks.push(tokio::spawn(
                async move { inbox.keep_clean(&queue, stop).await },
            ));
        }
        {
            let (stop, client) = (stopping(stopped.clone()), client.clone());
            let topo = self.topology();
            tasks.push(tokio::spawn(async move {
                watch_lag(&client, &topo, stop).await
            }));
        }
        if let Some(schedules) = schedules {
            let stop = stopping(stopped.clone());
            tasks.push(tokio::spawn(async move { schedules.run_until(stop).await }));
        }
        #[cfg(feature = "postgres")]
        if let Some(relay) = self.relay.clone() {
            let (stop, client) = (stopping(stopped.clone()), client.clone());
            tasks.push(tokio::spawn(
                async move { relay.run_until(&client, stop).await },
            ));
        }
        Companions { stop, tasks }
    }
}

/// How often the queue's backlog is read.
const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// Keeps the backlog gauges current until `stop`: `tchu_queue_messages` and
/// `tchu_queue_consumers` of the service's queue, `tchu_dlq_messages` of its dead-letter
/// queue, from passive declarations (no management plugin needed).
async fn watch_lag(client: &Client, topo: &Topology, stop: impl Future<Output = ()>) {
    let queue = topo.queue.clone();
    let waiting = metrics::gauge!("tchu_queue_messages", "queue" => queue.clone());
    let consumers = metrics::gauge!("tchu_queue_consumers", "queue" => queue.clone());
    let parked = metrics::gauge!("tchu_dlq_messages", "queue" => queue.clone());
    let watch = async {
        loop {
            if let Some((n, c)) = client.transport().depth(&topo.queue).await {
                waiting.set(f64::from(n));
                consumers.set(f64::from(c));
            }
            if let Some((n, _)) = client.transport().depth(&topo.dead_letter_queue).await {
                parked.set(f64::from(n));
            }
            tokio::time::sleep(LAG_INTERVAL).await;
        }
    };
    tokio::select! {
        () = watch => {}
        () = stop => {}
    }
}

/// Tasks that run beside the consumer and stop after it: told to when it ends, for whatever
/// reason, then awaited, so a shutdown never cuts the relay mid-batch.
struct Companions {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Companions {
    async fn around(self, consuming: impl Future<Output = Result<()>>) -> Result<()> {
        let result = consuming.await;
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        result
    }
}

fn joined(res: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    res.map_err(Error::Task)?
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

/// Where a running service stands, for readiness and liveness probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceState {
    /// Consuming: ready.
    Consuming,
    /// The broker connection or the consumer was lost; re-declaring and re-consuming as soon
    /// as the broker is back. Alive, not ready.
    Reconnecting,
    /// Catching up from the event log ([`Service::replay_from`]), the queue not consumed yet.
    /// Alive and ready: it handles events, the past ones first.
    Replaying,
    /// Shut down, or failed for good.
    Stopped,
}
