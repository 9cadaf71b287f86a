//! A service's schedules at run time: the task that fires due occurrences (one per service
//! replica, all sharing the store), and the record of how each occurrence's handler went.

use super::Compiled;
use super::Outcome;
use super::occurrence::{self, Payload};
use super::plan::Plan;
use super::store::{MemoryRows, Store};
use crate::client::Client;
use crate::error::{Error, Result, error_chain};
use crate::handler::{Handler, HandlerError, Incoming};
use crate::headers::{OCCURRENCE_HEADER, Signer};
use crate::inbox::Inbox;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::{Instrument, debug, info, warn};

/// How long a replica sleeps at most between looks at the store: a schedule changed by
/// another replica, or a row freed by a replica that died holding it, is seen this late.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// How long a replica sleeps at least: an occurrence due but held by another replica (while
/// it sends it) is looked at again this soon, not in a busy loop.
const LOOK_AGAIN: Duration = Duration::from_millis(100);

/// Every how many looks a replica checks for rows another release left behind.
const ADOPT_EVERY: u32 = 30;

/// A service's schedules, their store, and where their occurrences go.
pub(crate) struct Schedules {
    service: String,
    compiled: Vec<Compiled>,
    store: Store,
    client: Client,
    sign: Signer,
}

impl Schedules {
    /// The schedules of `handlers`, kept beside the PostgreSQL inbox or, on the in-memory
    /// broker without one, in the broker. `None` when it has none. Start-up has already
    /// refused a service with schedules and neither (see `Service::validate`), and any whose
    /// expression or time zone does not parse.
    pub(crate) fn of(
        service: &str,
        handlers: &[Arc<Handler>],
        inbox: Option<&Inbox>,
        client: &Client,
        sign: Signer,
    ) -> Result<Option<Arc<Self>>> {
        let mut compiled = Vec::new();
        for spec in handlers.iter().filter_map(|h| h.schedule.as_ref()) {
            let s = Compiled::new(spec).map_err(|why| invalid(service, why))?;
            if s.has_future() {
                compiled.push(s);
            } else {
                let (queue, schedule) = (service, &s.name);
                warn!(help = "tchu::troubleshooting#schedule-missed", %queue, %schedule, spec = %s.described, "schedule: no occurrence to come; it will not run");
            }
        }
        if compiled.is_empty() {
            return Ok(None);
        }
        let store = store_of(inbox, client).ok_or_else(|| invalid(service, NEEDS_STORE.into()))?;
        let service = service.to_owned();
        let client = client.clone();
        Ok(Some(Arc::new(Self {
            service,
            compiled,
            store,
            client,
            sign,
        })))
    }

    /// Adds the schedules' rows to the store (its table is created with the inbox's).
    pub(crate) async fn register(&self) -> Result<()> {
        self.store.register(&self.service, &self.compiled).await?;
        for s in &self.compiled {
            let (queue, missed) = (&self.service, s.missed.as_str());
            info!(%queue, schedule = %s.name, spec = %s.described, missed, "schedule");
        }
        Ok(())
    }

    /// Fires due occurrences until `stop`: looks at the store when the next one is due, and
    /// at least every second. `stop` ends the wait between looks, never a look: an occurrence
    /// sent is moved on before the task ends.
    pub(crate) async fn run_until(&self, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        for look in 1u32.. {
            if look % ADOPT_EVERY == 0 {
                self.adopt_abandoned().await;
            }
            let wait = self.tick().await.clamp(LOOK_AGAIN, LOOK_EVERY);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut stop => return,
            }
        }
    }

    /// One look at the store: fires what is due, logs and counts it; returns how long until
    /// the next is due.
    async fn tick(&self) -> Duration {
        let send = |s: &Compiled, due, missed| {
            let msg = occurrence::message(&self.service, s, due, missed, &self.sign);
            let span = tracing::info_span!("tchu.schedule.fire", schedule = %s.name, %due, missed);
            async move {
                // The default exchange: to the service's queue, and no other.
                self.client.transport().publish("", &msg?, true).await
            }
            .instrument(span)
        };
        let looked = self.store.tick(&self.service, &self.compiled, send).await;
        for (name, plan) in &looked.done {
            self.count(name, plan);
        }
        if let Some(e) = &looked.failure {
            warn!(help = "tchu::troubleshooting#schedule-failure", queue = %self.service, error = %error_chain(e), "schedules: could not fire a due occurrence; trying again in a second");
            return LOOK_EVERY;
        }
        looked.wait.unwrap_or(LOOK_EVERY)
    }

    /// Takes over what a vanished release left (see `Store::adopt_abandoned`).
    async fn adopt_abandoned(&self) {
        let queue = &self.service;
        match self.store.adopt_abandoned(queue, &self.compiled).await {
            Ok(names) => {
                for schedule in names {
                    warn!(help = "tchu::troubleshooting#schedule-failure", %queue, %schedule, "schedule: another release registered another expression and left it overdue; this release runs it now");
                }
            }
            Err(e) => {
                warn!(help = "tchu::troubleshooting#schedule-failure", %queue, error = %error_chain(&e), "schedules: could not look for abandoned schedules")
            }
        }
    }

    /// Logs and counts what a look did to one schedule.
    fn count(&self, name: &str, plan: &Plan) {
        let queue = &self.service;
        match plan {
            Plan::Wait => {}
            Plan::Fire { due, missed: 0, .. } => {
                debug!(%queue, schedule = %name, %due, "schedule: occurrence sent");
                counted(name, "fired", 1);
            }
            Plan::Fire { due, missed, .. } => {
                warn!(help = "tchu::troubleshooting#schedule-missed", %queue, schedule = %name, %due, missed, "schedule: occurrences were missed (no replica ran); running the latest once");
                counted(name, "fired", 1);
                counted(name, "missed", u64::from(*missed));
            }
            Plan::Skip { skipped, next } => {
                warn!(help = "tchu::troubleshooting#schedule-missed", %queue, schedule = %name, skipped, %next, "schedule: occurrences were missed (no replica ran); skipped as its policy says");
                counted(name, "missed", u64::from(*skipped));
            }
        }
    }
}

/// Where the schedules are kept: beside the PostgreSQL inbox, else in the in-memory broker.
fn store_of(inbox: Option<&Inbox>, client: &Client) -> Option<Store> {
    #[cfg(feature = "postgres")]
    if let Some(pool) = inbox.and_then(Inbox::pg_pool) {
        return Some(Store::Postgres(pool.clone()));
    }
    #[cfg(not(feature = "postgres"))]
    let _ = inbox;
    let broker = client.transport().memory_broker()?;
    Some(Store::Memory(broker.shared::<MemoryRows>()))
}

fn invalid(service: &str, why: String) -> Error {
    Error::InvalidService {
        queue: service.to_owned(),
        problems: vec![why],
    }
}

/// Why a handler's schedule cannot run, if it cannot: its expression, time zone or name.
pub(crate) fn spec_problem(h: &Handler) -> Option<String> {
    Compiled::new(h.schedule.as_ref()?).err()
}

/// Why a service with schedules cannot start without a store (found first by start-up).
const NEEDS_STORE: &str = "it has schedules but no PostgreSQL inbox, where every replica \
    finds when each is due";

/// One more schedule event in `tchu_schedule_total{schedule, event}`.
fn counted(schedule: &str, event: &'static str, n: u64) {
    let schedule = schedule.to_owned();
    metrics::counter!("tchu_schedule_total", "schedule" => schedule, "event" => event).increment(n);
}

/// Records how the run of an occurrence of `h`'s schedule went: counted, and kept in the store
/// for `tchu schedule list`. A failure to record is logged; the run stands.
pub(crate) async fn finished(
    schedules: &Schedules,
    h: &Handler,
    incoming: &Incoming,
    result: &std::result::Result<crate::handler::Outcome, HandlerError>,
) {
    // Only what a replica sent (signed, checked at admission): a stranger's message rejected
    // by the extractor is not an occurrence of the schedule.
    let sent = incoming.message.headers().contains_key(OCCURRENCE_HEADER);
    let (Some(spec), Ok(p), true) = (&h.schedule, incoming.message.decode::<Payload>(), sent)
    else {
        return;
    };
    let (outcome, error) = match result {
        Ok(_) => (Outcome::Ok, None),
        Err(e) => (Outcome::Failed, Some(e.message())),
    };
    counted(&spec.name, outcome.as_str(), 1);
    let store = &schedules.store;
    let recorded = store
        .finished(
            &schedules.service,
            &spec.name,
            p.due_unix_ms,
            outcome,
            error,
        )
        .await;
    if let Err(e) = recorded {
        warn!(help = "tchu::troubleshooting#schedule-failure", schedule = %spec.name, error = %error_chain(&e), "schedules: could not record how an occurrence went");
    }
}
