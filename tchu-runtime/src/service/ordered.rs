//! The consume loop of the ordered queue: each delivery waits for its lanes (one per ordered
//! handler and key), so the messages of one key run one after the other in queue order and
//! those of different keys side by side, up to the prefetch. A redelivered message (its
//! consumer's process ended, or its connection) runs alone, and the ones after it too until
//! they are through: the first a new consumer receives is then the one that was running.

use crate::dispatch::order::{self, Planned};
use crate::dispatch::{self, Dispatcher, Source};
use crate::error::{Error, Result};
use crate::error_chain;
use crate::transport::{Deliveries, Delivery};
use futures_lite::FutureExt;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

/// How many deliveries of the ordered queue the broker may send ahead of what runs, per
/// delivery allowed to run: the later messages of a key waiting for its retry sit there,
/// and the other keys must still find room.
pub(crate) const WINDOW_PER_PREFETCH: u16 = 8;

/// The number of the task running a delivery alone.
const ALONE_RUN: u64 = u64::MAX;

/// A delivery waiting for its turn.
struct Waiting {
    delivery: Delivery,
    planned: Planned,
}

/// What the loop holds between events.
struct Lanes {
    shared: Arc<Dispatcher>,
    hasher: RandomState,
    /// Tasks return the number the delivery was given on arrival.
    tasks: JoinSet<u64>,
    next: u64,
    waiting: HashMap<u64, Waiting>,
    /// Each lane's deliveries by arrival; the first runs (or is ready to).
    lanes: HashMap<u64, VecDeque<u64>>,
    /// The lanes of each delivery waiting or running.
    lanes_of: HashMap<u64, Vec<u64>>,
    /// At the front of all their lanes, waiting for room to run.
    ready: VecDeque<u64>,
    /// Redelivered deliveries and the ones after them: run one at a time, alone.
    serial: VecDeque<Waiting>,
    /// Whether the task running is one of `serial`.
    alone: bool,
    /// No delivery came yet from this consumer.
    first: bool,
}

pub(super) async fn ordered_loop(
    shared: Arc<Dispatcher>,
    queue: String,
    mut deliveries: Deliveries,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> Result<()> {
    let mut l = Lanes::new(shared.clone());
    loop {
        let lost = tokio::select! {
            Ok(()) = stop.changed() => break,
            d = deliveries.next() => match d {
                Some(Ok(d)) => {
                    if l.first && !restore(&shared, &queue, &mut stop).await {
                        break;
                    }
                    l.arrive(d);
                    None
                }
                Some(Err(e)) => Some(e.to_string()),
                None => Some("the broker cancelled the consumer".to_owned()),
            },
            Some(done) = l.tasks.join_next(), if !l.tasks.is_empty() => {
                if let Ok(n) = done {
                    l.done(n);
                }
                None
            }
        };
        if let Some(reason) = lost {
            match l.lost(&queue, reason, &mut stop).await? {
                Some(d) => deliveries = d,
                None => return Ok(()),
            }
        }
        l.start_what_can();
    }
    deliveries.cancel().await;
    super::consume::drain(&mut l.tasks, grace, &queue).await;
    deliveries.close().await;
    info!(%queue, "stopped");
    Ok(())
}

impl Lanes {
    fn new(shared: Arc<Dispatcher>) -> Self {
        Self {
            shared,
            hasher: RandomState::new(),
            tasks: JoinSet::new(),
            next: 0,
            waiting: HashMap::new(),
            lanes: HashMap::new(),
            lanes_of: HashMap::new(),
            ready: VecDeque::new(),
            serial: VecDeque::new(),
            alone: false,
            first: true,
        }
    }

    /// Admits a delivery and queues it in its lanes, or behind the redelivered ones.
    fn arrive(&mut self, mut delivery: Delivery) {
        let first = std::mem::replace(&mut self.first, false);
        let redelivered = delivery.redelivered && !self.shared.client.is_memory();
        let planned = order::plan(
            &self.shared,
            &mut delivery.msg,
            first && redelivered,
            &self.hasher,
        );
        let mut w = Waiting { delivery, planned };
        if redelivered || !self.serial.is_empty() {
            self.serial.push_back(w);
            return;
        }
        let n = self.next;
        self.next += 1;
        let lanes = std::mem::take(&mut w.planned.lanes);
        let mut front_of_all = true;
        for lane in &lanes {
            let q = self.lanes.entry(*lane).or_default();
            q.push_back(n);
            front_of_all &= q.len() == 1;
        }
        self.lanes_of.insert(n, lanes);
        self.waiting.insert(n, w);
        if front_of_all {
            self.ready.push_back(n);
        }
    }

    /// A delivery is settled: the next of each of its lanes may be ready.
    fn done(&mut self, n: u64) {
        if n == ALONE_RUN {
            self.alone = false;
            return;
        }
        for lane in self.lanes_of.remove(&n).unwrap_or_default() {
            let Some(q) = self.lanes.get_mut(&lane) else {
                continue;
            };
            q.pop_front();
            let Some(&next) = q.front() else {
                self.lanes.remove(&lane);
                continue;
            };
            let at_front = |lanes: &HashMap<u64, VecDeque<u64>>, l: &u64| {
                lanes.get(l).and_then(VecDeque::front) == Some(&next)
            };
            if (self.lanes_of.get(&next))
                .is_some_and(|ls| ls.iter().all(|l| at_front(&self.lanes, l)))
            {
                self.ready.push_back(next);
            }
        }
    }

    /// Starts what is ready, within the prefetch; a redelivered delivery once nothing runs.
    fn start_what_can(&mut self) {
        // Nothing starts beside a delivery running alone.
        if self.alone {
            return;
        }
        let room = usize::from(self.shared.prefetch.max(1));
        while self.tasks.len() < room
            && let Some(n) = self.ready.pop_front()
        {
            if let Some(w) = self.waiting.remove(&n) {
                self.spawn(n, w);
            }
        }
        if self.tasks.is_empty()
            && self.waiting.is_empty()
            && let Some(w) = self.serial.pop_front()
        {
            self.alone = true;
            self.spawn(ALONE_RUN, w);
        }
    }

    fn spawn(&mut self, n: u64, w: Waiting) {
        let shared = self.shared.clone();
        let Waiting {
            delivery,
            mut planned,
        } = w;
        // Its handler runs alone in the process, as a quarantined message does (see
        // `super::quarantine`), or beside the others; not the waits between retries.
        planned.circumstances.alone = self.alone;
        let run = dispatch::handle(shared, delivery, Source::Ordered(Box::new(planned)));
        // A bug's panic must not leave the delivery's lanes taken for good.
        let run = AssertUnwindSafe(run).catch_unwind();
        self.tasks.spawn(Box::pin(async move {
            if run.await.is_err() {
                error!(
                    help = "tchu::troubleshooting#dispatch-bug",
                    "ordered delivery task panicked"
                );
            }
            n
        }));
    }

    /// The consumer is gone, and with its channel every delivery taken (the broker gives them
    /// back, in order, to whichever consumer is active next). What still runs is stopped: a
    /// run going on beside the next consumer's would break the order of its key.
    async fn lost(
        &mut self,
        queue: &str,
        reason: String,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<Deliveries>> {
        if self.shared.client.is_memory() {
            let queue = queue.to_owned();
            return Err(Error::ConsumerLost { queue, reason });
        }
        warn!(help = "tchu::troubleshooting#reconnecting", %queue, %reason, "ordered consumer lost; re-consuming when the broker is back");
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let shared = self.shared.clone();
        *self = Self::new(shared);
        let window = window(self.shared.prefetch);
        super::consume::consume_again_on(&self.shared, (queue, window), stop).await
    }
}

/// Reads which keys are held from the dead-letter queue, before the first delivery a consumer
/// runs: another replica may have parked messages while this one stood by. Tried until it
/// works (running without would let a held key's messages overtake), then once more a moment
/// later, adding what a tool reading the queue at the same time kept out of sight. `false`
/// when the service was told to stop meanwhile.
async fn restore(shared: &Dispatcher, queue: &str, stop: &mut watch::Receiver<bool>) -> bool {
    let mut pause = Duration::from_millis(100);
    loop {
        match order::restore(shared, true).await {
            Ok(held) => {
                info!(%queue, held, "held keys read from the dead-letter queue");
                break;
            }
            Err(e) => {
                warn!(help = "tchu::troubleshooting#key-held", %queue, error = %error_chain(&e), "cannot read the dead-letter queue for held keys; trying again before running anything");
                tokio::select! {
                    Ok(()) = stop.changed() => return false,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
    tokio::time::sleep(RECHECK_AFTER).await;
    if let Err(e) = order::restore(shared, false).await {
        warn!(help = "tchu::troubleshooting#key-held", %queue, error = %error_chain(&e), "the second read of held keys failed");
    }
    true
}

/// How long after the first read of held keys the second is.
const RECHECK_AFTER: Duration = Duration::from_millis(300);

/// The broker's prefetch for the ordered queue: [`WINDOW_PER_PREFETCH`] times the service's.
pub(crate) fn window(prefetch: u16) -> u16 {
    prefetch.max(1).saturating_mul(WINDOW_PER_PREFETCH)
}
