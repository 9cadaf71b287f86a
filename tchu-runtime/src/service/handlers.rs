//! Which handlers a service runs (the attribute ones linked into the binary, then those added at
//! run time), the bindings they need, and the start-up checks every one of them passes.

use super::Service;
use crate::error::{Error, Result};
use crate::handler::{FromMessage, Handler, HandlerFn, Resources, registered_handlers};
use std::borrow::Cow;
use std::sync::Arc;

impl Service {
    /// Adds a handler built at run time: see [`Handler::on`]. It runs beside the attribute
    /// handlers, by the same rules, and is listed with them by `topology`.
    pub fn handler(mut self, handler: Handler) -> Self {
        self.runtime.push(handler);
        self
    }

    /// Adds a handler for `A` (an event type, or a tuple of extractors holding one), bound to
    /// its event's topic: `Service::new("billing").on::<OrderPlaced>(|ev| async move { ... })`.
    /// For a pattern, a name, retries or metadata, build a [`Handler`] and use
    /// [`Service::handler`].
    #[track_caller]
    pub fn on<A: FromMessage>(self, handler: impl HandlerFn<A>) -> Self {
        self.handler(Handler::on(handler))
    }

    /// Adds a handler for `A` bound to a topic pattern (`"orders.*"`, `"audit.#"`).
    #[track_caller]
    pub fn on_pattern<A: FromMessage>(
        self,
        pattern: impl Into<Cow<'static, str>>,
        handler: impl HandlerFn<A>,
    ) -> Self {
        self.handler(Handler::on_pattern(pattern, handler))
    }

    /// The handlers this service runs: the attribute ones in name order (only those under
    /// [`Service::handlers_in`] modules, when given), then the run-time ones in the order added.
    pub fn handlers(&self) -> Vec<Handler> {
        registered_handlers()
            .into_iter()
            .filter(|h| {
                self.settings.modules.is_empty()
                    || self.settings.modules.iter().any(|m| {
                        h.module == m
                            || h.module
                                .strip_prefix(m.as_str())
                                .is_some_and(|r| r.starts_with("::"))
                    })
            })
            .map(Handler::from)
            .chain(self.runtime.iter().cloned())
            .collect()
    }

    /// The binding keys of the service queue on `tchu_events`: its queue name (as Celery binds
    /// it), then each distinct pattern of its handlers that are not ordered. Schedules bind
    /// nothing: their occurrences come by the queue's name.
    pub fn bindings(&self) -> Vec<String> {
        let mut keys = vec![self.settings.queue.clone()];
        keys.extend(distinct_patterns(self.handlers(), false));
        keys
    }

    /// The binding keys of the ordered queue (`<queue>.ordered`): each distinct pattern of its
    /// ordered handlers. Empty when it has none (and then there is no ordered queue).
    pub fn ordered_bindings(&self) -> Vec<String> {
        distinct_patterns(self.handlers(), true)
    }

    /// Every reason the service cannot start, found before it touches the broker.
    pub(super) fn validate(&self, handlers: &[Arc<Handler>], resources: &Resources) -> Result<()> {
        let mut problems = Vec::new();
        if self.settings.queue.is_empty() || self.settings.queue.len() > 250 {
            problems.push("a queue name must be 1 to 250 bytes".to_owned());
        }
        if handlers.is_empty() {
            problems.push(format!(
                "it has no handlers: add `#[tchu::subscribe]` functions{}, or `Service::on`",
                if self.settings.modules.is_empty() {
                    String::new()
                } else {
                    format!(" under {:?}", self.settings.modules)
                }
            ));
        }
        for (i, h) in handlers.iter().enumerate() {
            let same_schedule = |o: &&Arc<Handler>| match (&o.schedule, &h.schedule) {
                (Some(a), Some(b)) => a.name == b.name,
                _ => false,
            };
            if let Some(o) = handlers[..i].iter().find(same_schedule) {
                problems.push(format!(
                    "two handlers run schedule `{}` ({}:{} and {}:{}): give one another name",
                    o.schedule.as_ref().map_or("", |s| &s.name),
                    o.file,
                    o.line,
                    h.file,
                    h.line
                ));
            }
            if let Some(o) = handlers[..i].iter().find(|o| o.name == h.name) {
                problems.push(format!(
                    "two handlers are named `{}` ({}:{} and {}:{}): give one another name \
                     (`name = \"...\"`, or `Handler::with_name`)",
                    h.name, o.file, o.line, h.file, h.line
                ));
            }
            problems.extend(self.handler_problem(h, resources));
        }
        if let Some(why) = self.settings.default_retry.problem() {
            problems.push(format!("the default retry policy: {why}"));
        }
        if let Some(replay) = &self.settings.replay_from {
            if let Err(why) = crate::transport::event_log::LogStart::parse(replay) {
                problems.push(format!("replay_from {why}"));
            }
            if resources.client.is_memory() {
                problems.push(
                    "replay_from reads RabbitMQ's event log (a stream); the in-memory broker \
                     keeps none"
                        .to_owned(),
                );
            }
            // Their events go through the ordered queue, in order per key across replicas: a
            // replay beside it would run a key's past events after its live ones.
            if let Some(h) = handlers.iter().find(|h| h.ordered.is_some()) {
                problems.push(format!(
                    "replay_from does not replay the events of ordered handlers (`{}`, {}:{}) \
                     yet, and would run a key's past events after its live ones: run this \
                     handler unordered, or in a service without replay_from",
                    h.name, h.file, h.line
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidService {
                queue: self.settings.queue.clone(),
                problems,
            })
        }
    }

    /// What is wrong with one handler in this service, if anything.
    fn handler_problem(&self, h: &Handler, resources: &Resources) -> Option<String> {
        let at = format!("handler `{}` ({}:{})", h.name, h.file, h.line);
        // Before the shape: a schedule's name is its pattern's last word.
        if let Some(why) = crate::schedule::spec_problem(h) {
            return Some(format!("{at}: {why}"));
        }
        if let Some(shape) = h.shape_problem() {
            return Some(format!("{at} {shape}"));
        }
        if h.dedup.is_some() && self.inbox.is_none() {
            return Some(format!(
                "{at} has `dedup` but the service has no inbox: \
                 `Service::inbox(Inbox::postgres(pool))` or `run!(inbox = ...)`"
            ));
        }
        if h.dedup.is_some() && h.ack == tchu_core::retry::AckPolicy::Early {
            // Acknowledged before the handler, a message lost in a crash never reaches the
            // inbox: "once" would silently become "at most once".
            return Some(format!(
                "{at} combines `dedup` with early acknowledgement: an inbox handler is \
                 acknowledged after its effect is recorded"
            ));
        }
        if h.saga.is_some() && !(resources.transactional || resources.client.is_memory()) {
            return Some(format!(
                "{at} moves a saga on but the service has no PostgreSQL inbox, where sagas are \
                 kept: `Service::inbox(Inbox::postgres(pool))` or `run!(inbox = ...)`"
            ));
        }
        if h.schedule.is_some() && !(resources.transactional || resources.client.is_memory()) {
            return Some(format!(
                "{at} runs a schedule but the service has no PostgreSQL inbox, where every \
                 replica finds when it is due (so that each occurrence runs once): \
                 `Service::inbox(Inbox::postgres(pool))` or `run!(inbox = ...)`"
            ));
        }
        if let Some(why) = self.ordered_retry_problem(h) {
            return Some(format!("{at} {why}"));
        }
        (h.check)(resources).err().map(|e| format!("{at} {e}"))
    }

    /// An ordered handler retries in place, its message unacknowledged meanwhile: its delays
    /// must end well before RabbitMQ's `consumer_timeout` (30 minutes by default) closes the
    /// channel of a delivery held longer.
    fn ordered_retry_problem(&self, h: &Handler) -> Option<String> {
        h.ordered.as_ref()?;
        let policy = h.retry.unwrap_or(self.settings.default_retry);
        let waits: std::time::Duration = (1..policy.max_attempts.max(1))
            .map(|attempt| policy.delay_for(attempt, 1.0))
            .sum();
        (waits > ORDERED_RETRY_WAIT_MAX).then(|| {
            format!(
                "is ordered and its retries wait up to {}s in all, over the {}s an ordered \
                 message may wait unacknowledged: fewer attempts or shorter delays",
                waits.as_secs(),
                ORDERED_RETRY_WAIT_MAX.as_secs()
            )
        })
    }
}

/// How long the retries of an ordered handler may wait in all, in place: a third of RabbitMQ's
/// default `consumer_timeout`, leaving room for the key's later messages waiting behind.
pub const ORDERED_RETRY_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// The distinct patterns of the handlers that are (or are not) ordered, in handler order.
fn distinct_patterns(handlers: Vec<Handler>, ordered: bool) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for h in handlers
        .into_iter()
        .filter(|h| h.ordered.is_some() == ordered && h.schedule.is_none())
    {
        if !keys.iter().any(|k| *k == h.pattern) {
            keys.push(h.pattern.into_owned());
        }
    }
    keys
}
