//! The consume loop: one task per delivery, within the prefetch and the body budget;
//! redelivered deliveries held, and run alone through the quarantine ([`super::quarantine`]);
//! consuming again after a lost consumer; a graceful drain at the end.

use super::{ServiceState, quarantine};
use crate::dispatch::{self, Dispatcher, Source};
use crate::error::{Error, Result};
use crate::error_chain;
use crate::transport::{Deliveries, Delivery};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tracing::{error, info, warn};

/// How often the loop looks for messages waiting in the quarantine, and how long one look may
/// take (it must not hold up the loop while the broker is away).
const QUARANTINE_CHECK: Duration = Duration::from_secs(2);
const QUARANTINE_LOOK: Duration = Duration::from_secs(1);
/// After the quarantine could not be read, how long before it is tried again.
const QUARANTINE_RETRY: Duration = Duration::from_secs(30);
/// How long the handlers running when consuming stopped may take before a warning says why
/// nothing else is taken.
const QUIET_WARNING: Duration = Duration::from_secs(30);
/// How long deliveries sent before a `basic.cancel` took effect are waited for: they precede
/// its `cancel-ok` on the channel, so they are already in lapin's hands when it returned.
const LEFTOVERS: Duration = Duration::from_millis(20);

enum LoopEvent {
    Stop,
    Delivery(Box<Delivery>),
    ConsumerLost(String),
    TaskDone,
    QuarantineCheck,
    QuietTooLong,
}

/// What the loop holds between events.
struct Loop {
    shared: Arc<Dispatcher>,
    tasks: JoinSet<()>,
    body_bytes: Arc<AtomicUsize>,
    /// Redelivered deliveries, not run: they go to the quarantine once nothing runs.
    held: Vec<Delivery>,
    /// Consuming was cancelled so that nothing runs beside a redelivered message.
    quieting: bool,
    /// Since when, until the warning that it takes long.
    quiet_since: Option<Instant>,
    /// The quarantine could not be read: not looked into again before this.
    retry_at: Instant,
}

pub(super) async fn consume_loop(
    shared: Arc<Dispatcher>,
    mut deliveries: Deliveries,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    state: watch::Sender<ServiceState>,
) -> Result<()> {
    let mut l = Loop {
        shared: shared.clone(),
        tasks: JoinSet::new(),
        body_bytes: Arc::new(AtomicUsize::new(0)),
        held: Vec::new(),
        quieting: false,
        quiet_since: None,
        retry_at: Instant::now(),
    };
    let mut check = tokio::time::interval(QUARANTINE_CHECK);
    check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let set_state = |s: ServiceState| {
        if *state.borrow() != s {
            info!(queue = %shared.topo.queue, state = ?s, "service state");
            state.send_replace(s);
        }
    };
    let outcome = loop {
        match l.next_event(&mut deliveries, &mut stop, &mut check).await {
            LoopEvent::Stop => break Ok(()),
            LoopEvent::TaskDone => {}
            LoopEvent::Delivery(d) => l.take(*d, &mut deliveries).await,
            LoopEvent::QuarantineCheck => {
                let look = tokio::time::timeout(QUARANTINE_LOOK, quarantine::waiting(&shared));
                if Instant::now() >= l.retry_at && look.await == Ok(true) {
                    l.quiet(&mut deliveries).await;
                }
            }
            LoopEvent::QuietTooLong => {
                warn!(help = "tchu::troubleshooting#quarantine-waiting", queue = %shared.topo.queue, running = l.tasks.len(), "a redelivered message waits for the handlers running to finish; nothing else is taken meanwhile");
                l.quiet_since = None;
            }
            LoopEvent::ConsumerLost(reason) if shared.client.is_memory() => {
                let queue = shared.topo.queue.clone();
                break Err(Error::ConsumerLost { queue, reason });
            }
            LoopEvent::ConsumerLost(reason) => {
                set_state(ServiceState::Reconnecting);
                match l.consumer_lost(reason, &mut stop).await {
                    Ok(Some(d)) => deliveries = d,
                    other => {
                        set_state(ServiceState::Stopped);
                        return other.map(drop);
                    }
                }
                set_state(ServiceState::Consuming);
            }
        }
        if l.quieting && l.tasks.is_empty() {
            match l.isolate(deliveries, &mut stop).await {
                Ok(Some(d)) => deliveries = d,
                other => {
                    set_state(ServiceState::Stopped);
                    return other.map(drop);
                }
            }
        }
    };
    deliveries.cancel().await;
    drain(&mut l.tasks, grace, &shared.topo.queue).await;
    deliveries.close().await;
    set_state(ServiceState::Stopped);
    info!(queue = %shared.topo.queue, "stopped");
    outcome
}

impl Loop {
    async fn next_event(
        &mut self,
        deliveries: &mut Deliveries,
        stop: &mut watch::Receiver<bool>,
        check: &mut tokio::time::Interval,
    ) -> LoopEvent {
        let memory = self.shared.client.is_memory();
        let warn_at = self.quiet_since.unwrap_or_else(Instant::now) + QUIET_WARNING;
        // No more deliveries in progress than the prefetch: the broker bounds unacknowledged
        // ones, but `ack = "early"` deliveries are acknowledged before they run. Nor more body
        // bytes than the budget (one delivery always goes): the bodies of the deliveries in
        // progress, decoded and copied, are what a service holds.
        let room = self.tasks.len() < usize::from(self.shared.prefetch.max(1))
            && (self.tasks.is_empty()
                || self.body_bytes.load(Ordering::SeqCst) < self.shared.max_in_flight_bytes);
        tokio::select! {
            // Only an explicit shutdown stops the service: `changed()` also errs when the handle
            // is dropped, and a dropped handle must not silently stop consuming.
            Ok(()) = stop.changed() => LoopEvent::Stop,
            d = deliveries.next(), if room && !self.quieting => match d {
                Some(Ok(d)) => LoopEvent::Delivery(Box::new(d)),
                Some(Err(e)) => LoopEvent::ConsumerLost(e.to_string()),
                None => LoopEvent::ConsumerLost("the broker cancelled the consumer".into()),
            },
            Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                if let Err(e) = done {
                    error!(help = "tchu::troubleshooting#dispatch-bug", error = %error_chain(&e), "delivery task failed");
                }
                LoopEvent::TaskDone
            }
            _ = check.tick(), if !memory && !self.quieting => LoopEvent::QuarantineCheck,
            () = sleep_until(warn_at), if self.quiet_since.is_some() => LoopEvent::QuietTooLong,
        }
    }

    /// Runs a delivery, or holds it if it was redelivered (nothing may run beside it). In
    /// memory no process ends under a message, so nothing is held.
    async fn take(&mut self, d: Delivery, deliveries: &mut Deliveries) {
        if d.redelivered && !self.shared.client.is_memory() {
            self.held.push(d);
            self.quiet(deliveries).await;
        } else {
            self.spawn(d);
        }
    }

    fn spawn(&mut self, d: Delivery) {
        // Boxed: the future is kilobytes, and the runtime moves a task's future more than
        // once (measured: those moves cost more than the dispatch itself).
        let dispatch = dispatch_counted(self.shared.clone(), d, self.body_bytes.clone());
        self.tasks.spawn(Box::pin(dispatch));
    }

    /// Stops consuming so that what runs can finish and nothing starts beside the held.
    async fn quiet(&mut self, deliveries: &mut Deliveries) {
        if !self.quieting {
            self.quieting = true;
            self.quiet_since = Some(Instant::now());
            deliveries.cancel().await;
        }
    }

    /// With nothing running: takes what the broker sent before the cancel, moves the held
    /// deliveries to the quarantine, runs the quarantine's messages alone, and consumes again.
    /// `None` when the service was told to stop meanwhile.
    async fn isolate(
        &mut self,
        mut deliveries: Deliveries,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<Deliveries>> {
        let mut lost = false;
        loop {
            match tokio::time::timeout(LEFTOVERS, deliveries.next()).await {
                Ok(Some(Ok(d))) if d.redelivered => self.held.push(d),
                Ok(Some(Ok(d))) => self.spawn(d),
                Ok(Some(Err(_))) => {
                    lost = true;
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        while self.tasks.join_next().await.is_some() {}
        if lost || !deliveries.connected() {
            // Gone with their channel: the broker gives them back, and a copy would be a second.
            self.held.clear();
        }
        self.move_held().await;
        deliveries.close().await;
        (self.quieting, self.quiet_since) = (false, None);
        if !*stop.borrow() && !quarantine::run_alone(&self.shared, stop).await {
            self.retry_at = Instant::now() + QUARANTINE_RETRY;
        }
        if *stop.borrow() {
            return Ok(None);
        }
        let transport = self.shared.client.transport();
        match transport
            .consume(&self.shared.topo.queue, self.shared.prefetch)
            .await
        {
            Ok(d) => Ok(Some(d)),
            // Lost meanwhile: declare again, as after any lost consumer.
            Err(_) => consume_again(&self.shared, stop).await,
        }
    }

    /// Moves the held deliveries to the quarantine while nothing in the process runs, their
    /// confirms (a quorum queue's, written to disk) awaited together.
    async fn move_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let _alone = quarantine::alone().await;
        for d in self.held.drain(..) {
            let shared = self.shared.clone();
            self.tasks
                .spawn(async move { dispatch::quarantine(&shared, d).await });
        }
        while self.tasks.join_next().await.is_some() {}
    }

    /// The consumer is gone, and with its channel whatever was held (the broker gives it back).
    async fn consumer_lost(
        &mut self,
        reason: String,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<Deliveries>> {
        // In-flight deliveries of the lost channel cannot be acknowledged any more; the
        // broker redelivers them.
        warn!(help = "tchu::troubleshooting#reconnecting", queue = %self.shared.topo.queue, %reason, "consumer lost; re-consuming when the broker is back");
        self.held.clear();
        (self.quieting, self.quiet_since) = (false, None);
        consume_again(&self.shared, stop).await
    }
}

/// Dispatches a delivery, its body counted in `body_bytes` from now (before the task starts,
/// so the consume loop sees it at once) until it is done.
fn dispatch_counted(
    shared: Arc<Dispatcher>,
    d: Delivery,
    body_bytes: Arc<AtomicUsize>,
) -> impl std::future::Future<Output = ()> {
    /// Gives the bytes back however the task ends (aborted after the grace period included).
    struct Counted(Arc<AtomicUsize>, usize);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_sub(self.1, Ordering::SeqCst);
        }
    }
    let size = d.msg.body.len();
    body_bytes.fetch_add(size, Ordering::SeqCst);
    let counted = Counted(body_bytes, size);
    async move {
        let _beside = quarantine::beside_others().await;
        dispatch::handle(shared, d, Source::Service).await;
        drop(counted);
    }
}

/// Lets the deliveries in progress finish within the grace period; the rest go back to the
/// queue (their acknowledgers give them back when dropped).
pub(super) async fn drain<T: 'static>(tasks: &mut JoinSet<T>, grace: Duration, queue: &str) {
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(help = "tchu::troubleshooting#grace-period", %queue, unfinished = tasks.len(), "grace period over; unfinished deliveries go back to the queue");
        tasks.abort_all();
    }
}

/// Re-declares the topology (the broker may have restarted without durable state, or someone
/// deleted the queue) and consumes again, retrying until it works. `None` when the service was
/// told to stop meanwhile; an error when the client was closed (nothing will come back).
pub(super) async fn consume_again(
    shared: &Dispatcher,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Deliveries>> {
    consume_again_on(shared, (&shared.topo.queue, shared.prefetch), stop).await
}

/// As [`consume_again`], for one of the service's queues with its prefetch.
pub(super) async fn consume_again_on(
    shared: &Dispatcher,
    (queue, prefetch): (&str, u16),
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Deliveries>> {
    loop {
        let attempt = async {
            shared.client.transport().declare(&shared.topo).await?;
            shared.client.transport().consume(queue, prefetch).await
        };
        tokio::select! {
            Ok(()) = stop.changed() => return Ok(None),
            r = attempt => match r {
                Ok(d) => return Ok(Some(d)),
                Err(Error::Closed) => return Err(Error::Closed),
                Err(e) => {
                    warn!(help = "tchu::troubleshooting#reconnecting", %queue, error = %error_chain(&e), "re-consume failed; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
