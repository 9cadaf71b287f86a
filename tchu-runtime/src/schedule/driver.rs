//! A service's schedules at run time: the task that fires due occurrences (one per service
//! replica, all sharing the store), and the record of how each occurrence's handler went.

use super::Compiled;
use super::occurrence::{self, Payload};
use super::plan::Plan;
use super::store::{MemoryRows, Outcome, Store};
use crate::client::Client;
use crate::error::{Error, Result, error_chain};
use crate::handler::{Handler, HandlerError, Incoming};
use crate::inbox::Inbox;
use chrono::{DateTime, Utc};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// How long a replica sleeps at most between looks at the store: a schedule changed by
/// another replica, or a row freed by a replica that died holding it, is seen this late.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// A service's schedules, their store, and where their occurrences go.
pub(crate) struct Schedules {
    service: String,
    compiled: Vec<Compiled>,
    store: Store,
    client: Client,
}

impl Schedules {
    /// The schedules of `handlers`, kept beside the PostgreSQL inbox or, on the in-memory
    /// broker without one, in the broker. `None` when it has none. Start-up has already
    /// refused a service with schedules and neither (see `Service::validate`).
    pub(crate) fn of(
        service: &str,
        handlers: &[Arc<Handler>],
        inbox: Option<&Inbox>,
        client: &Client,
    ) -> Result<Option<Arc<Self>>> {
        let compiled = handlers
            .iter()
            .filter_map(|h| h.schedule.as_ref())
            .map(Compiled::new)
            .collect::<std::result::Result<Vec<_>, String>>()
            .map_err(|why| Error::InvalidService {
                queue: service.to_owned(),
                problems: vec![why],
            })?;
        if compiled.is_empty() {
            return Ok(None);
        }
        #[cfg(feature = "postgres")]
        let pool = inbox.and_then(Inbox::pg_pool).cloned();
        #[cfg(not(feature = "postgres"))]
        let _ = inbox;
        let store = match client.transport().memory_broker() {
            #[cfg(feature = "postgres")]
            _ if pool.is_some() => Store::Postgres(pool.expect("checked above")),
            Some(broker) => Store::Memory(broker.shared::<MemoryRows>()),
            None => {
                return Err(Error::InvalidService {
                    queue: service.to_owned(),
                    problems: vec![NEEDS_STORE.to_owned()],
                });
            }
        };
        Ok(Some(Arc::new(Self {
            service: service.to_owned(),
            compiled,
            store,
            client: client.clone(),
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
    /// at least every second.
    pub(crate) async fn run_until(&self, stop: impl Future<Output = ()>) {
        let fire = async {
            loop {
                let wait = match self.tick().await {
                    Ok(Some(next)) => (next - Utc::now()).to_std().unwrap_or_default(),
                    Ok(None) => LOOK_EVERY,
                    Err(e) => {
                        warn!(help = "tchu::troubleshooting#schedule-failure", queue = %self.service, error = %error_chain(&e), "schedules: could not fire a due occurrence; trying again in a second");
                        LOOK_EVERY
                    }
                };
                tokio::time::sleep(wait.min(LOOK_EVERY)).await;
            }
        };
        tokio::select! {
            () = fire => {}
            () = stop => {}
        }
    }

    /// One look at the store: fires what is due, counts it; returns when the next is due.
    async fn tick(&self) -> Result<Option<DateTime<Utc>>> {
        let send = |s: &Compiled, due: DateTime<Utc>, missed: u32| {
            let msg = occurrence::message(&self.service, s, due, missed);
            async move {
                let msg = msg?;
                let exchange = crate::transport::EXCHANGE;
                self.client.transport().publish(exchange, &msg, true).await
            }
        };
        let (done, next) = self.store.tick(&self.service, &self.compiled, send).await?;
        for (name, plan) in done {
            self.count(&name, &plan);
        }
        Ok(next)
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

/// Why a handler's schedule cannot run, if it cannot: its expression, time zone or name.
pub(crate) fn spec_problem(h: &Handler) -> Option<String> {
    Compiled::new(h.schedule.as_ref()?).err()
}

/// Why a service with schedules cannot start without a store.
const NEEDS_STORE: &str = "it has schedules but no PostgreSQL inbox, where every replica \
    finds when each is due (so that each occurrence runs once): \
    `Service::inbox(Inbox::postgres(pool))` or `run!(inbox = ...)`";

/// One more schedule event in `tchu_schedule_total{schedule, event}`.
fn counted(schedule: &str, event: &'static str, n: u64) {
    let schedule = schedule.to_owned();
    metrics::counter!("tchu_schedule_total", "schedule" => schedule, "event" => event).increment(n);
}

/// Records how an occurrence's run went: counted, and kept in the store for `tchu schedule
/// list`. A failure to record is logged; the run stands.
pub(crate) async fn finished(
    schedules: &Schedules,
    incoming: &Incoming,
    result: &std::result::Result<crate::handler::Outcome, HandlerError>,
) {
    let Ok(p) = incoming.message.decode::<Payload>() else {
        return;
    };
    let (outcome, error) = match result {
        Ok(_) => (Outcome::Ok, None),
        Err(e) => (Outcome::Failed, Some(e.message())),
    };
    counted(&p.schedule, outcome.as_str(), 1);
    let store = &schedules.store;
    let recorded = store
        .finished(
            &schedules.service,
            &p.schedule,
            p.due_unix_ms,
            outcome,
            error,
        )
        .await;
    if let Err(e) = recorded {
        warn!(help = "tchu::troubleshooting#schedule-failure", schedule = %p.schedule, error = %error_chain(&e), "schedules: could not record how an occurrence went");
    }
}
