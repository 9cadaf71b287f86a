//! Catching up from the event log before consuming the live queue
//! ([`Service::replay_from`](super::Service::replay_from)).
//!
//! The cut: the queue is bound first, then a marker is written at the end of the log. Every
//! event after the binding is in the queue, every one before the marker is in the log: the
//! replay dispatches the log's events that match the bindings, in log order, up to the
//! marker, and only then does the service consume its queue. Events published between the
//! binding and the marker come twice with one message id: the inbox applies them once.
//!
//! One replica replays (the lock `<queue>.replay.lock`, an exclusive queue the broker drops
//! with its connection); the others wait for it, then go live. Progress is kept in
//! `<queue>.replay`: the offset below which every event is settled. A replay stopped or
//! killed resumes there; a finished one is recorded with its replay point, and the service's
//! next start with the same point goes live at once.

use super::consume::drain;
use crate::dispatch::{self, Dispatcher, Source};
use crate::error::{Error, Result};
use crate::error_chain;
use crate::transport::event_log::{LogStart, ReplayProgress};
use crate::transport::{Acker, Delivery, LogEvent, LogSession, ReplayedAck, Settled};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

/// Every how many events read the progress is saved and shown.
const CHECKPOINT_EVERY: u64 = 1000;
/// How long a replica waits before looking again whether the replay another holds is over,
/// or before trying again after an event was given back or the connection was lost.
const WAIT: Duration = Duration::from_secs(1);
/// The longest pause between attempts while the broker stays away.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// A replay point and the log it reads ([`Service::replay_from`](super::Service::replay_from)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReplayFrom {
    /// As given: `1h`, `2d`, an RFC 3339 time, `first` or `offset:N`.
    pub since: String,
    /// The event log's name.
    pub log: String,
}

/// How a catch-up ended.
pub(super) enum CaughtUp {
    /// Up to the marker (now or in an earlier run): go live.
    Done,
    /// The service was told to stop.
    Stopped,
}

/// Replays into the service, then returns: the caller consumes the live queue next.
pub(super) async fn catch_up(
    shared: &Arc<Dispatcher>,
    plan: &ReplayFrom,
    stop: &mut watch::Receiver<bool>,
    grace: Duration,
) -> Result<CaughtUp> {
    let queue = shared.topo.queue.as_str();
    let mut pause = WAIT;
    loop {
        match attempt(shared, plan, stop, grace).await {
            Ok(end) => return Ok(end),
            Err(Error::Closed) => return Err(Error::Closed),
            Err(e @ (Error::NotDeclared { .. } | Error::InvalidService { .. })) => return Err(e),
            Err(e) => {
                warn!(help = "tchu::troubleshooting#replay", %queue, error = %error_chain(&e), retry_in = ?pause, "replay interrupted; resuming where it stopped");
                tokio::select! {
                    Ok(()) = stop.changed() => return Ok(CaughtUp::Stopped),
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

/// One session: the lock, the progress, the passes over the log until the marker.
async fn attempt(
    shared: &Arc<Dispatcher>,
    plan: &ReplayFrom,
    stop: &mut watch::Receiver<bool>,
    grace: Duration,
) -> Result<CaughtUp> {
    let queue = shared.topo.queue.as_str();
    let Some(mut session) = shared.client.transport().log_session(queue).await? else {
        return Ok(CaughtUp::Done);
    };
    let mut waiting = false;
    while !session.lock(queue).await? {
        if !waiting {
            info!(%queue, "another replica is replaying the event log; waiting for it to finish");
            waiting = true;
        }
        tokio::select! {
            Ok(()) = stop.changed() => return Ok(CaughtUp::Stopped),
            () = tokio::time::sleep(WAIT) => {}
        }
    }
    let result = replay_locked(shared, &session, plan, stop, grace).await;
    session.close().await;
    result
}

async fn replay_locked(
    shared: &Arc<Dispatcher>,
    session: &LogSession,
    plan: &ReplayFrom,
    stop: &mut watch::Receiver<bool>,
    grace: Duration,
) -> Result<CaughtUp> {
    let queue = shared.topo.queue.as_str();
    let same = |p: &ReplayProgress| p.since == plan.since && p.log == plan.log;
    let mut progress = match session.load().await? {
        Some(p) if same(&p) && p.done => {
            info!(%queue, since = %plan.since, replayed = p.replayed, "the event log was replayed from this point already; consuming live");
            return Ok(CaughtUp::Done);
        }
        Some(p) if same(&p) => {
            info!(%queue, replayed = p.replayed, next = ?p.next, "resuming an interrupted replay");
            p
        }
        _ => {
            let start = LogStart::parse(&plan.since).map_err(|why| invalid(queue, &why))?;
            let marker = session.marker(&plan.log).await?;
            let mut p = ReplayProgress::new(&plan.log, &plan.since, marker, start);
            session.save(&mut p).await?;
            info!(%queue, log = %plan.log, since = %plan.since, "replaying the event log before consuming live");
            p
        }
    };
    loop {
        let mut pass = Pass::new(shared, session, &mut progress);
        let end = pass.run(stop, grace).await;
        session.save(&mut progress).await?;
        match end? {
            PassEnd::Reached => break,
            PassEnd::Stopped => return Ok(CaughtUp::Stopped),
            PassEnd::GivenBack => tokio::time::sleep(WAIT).await,
        }
    }
    progress.done = true;
    session.save(&mut progress).await?;
    info!(%queue, replayed = progress.replayed, read = progress.read, "replay done; consuming live");
    Ok(CaughtUp::Done)
}

fn invalid(queue: &str, why: &str) -> Error {
    Error::InvalidService {
        queue: queue.to_owned(),
        problems: vec![format!("replay_from {why}")],
    }
}

/// How one pass over the log ended.
enum PassEnd {
    /// At the marker, everything before it settled.
    Reached,
    /// An event was given back (it could be neither handled nor parked): read again from it.
    GivenBack,
    /// The service was told to stop.
    Stopped,
}

/// One read of the log from the progress's offset: the events dispatched as the queue's
/// would be, at most the prefetch at once, their settlements moving the progress on.
struct Pass<'a> {
    shared: &'a Arc<Dispatcher>,
    session: &'a LogSession,
    progress: &'a mut ReplayProgress,
    tasks: JoinSet<()>,
    /// Offsets dispatched and not yet settled.
    running: BTreeSet<u64>,
    /// The lowest offset given back in this pass.
    given_back: Option<u64>,
    /// The offset after the last one read.
    read_to: Option<u64>,
    /// Events read when the progress was saved last.
    saved_at: u64,
    settled: (
        mpsc::UnboundedSender<Settled>,
        mpsc::UnboundedReceiver<Settled>,
    ),
}

impl<'a> Pass<'a> {
    fn new(
        shared: &'a Arc<Dispatcher>,
        session: &'a LogSession,
        progress: &'a mut ReplayProgress,
    ) -> Self {
        Self {
            shared,
            session,
            saved_at: progress.read,
            progress,
            tasks: JoinSet::new(),
            running: BTreeSet::new(),
            given_back: None,
            read_to: None,
            settled: mpsc::unbounded_channel(),
        }
    }

    async fn run(&mut self, stop: &mut watch::Receiver<bool>, grace: Duration) -> Result<PassEnd> {
        let (log, prefetch) = (self.progress.log.clone(), self.shared.prefetch.max(1));
        let mut events = self
            .session
            .read(&log, self.progress.next, prefetch)
            .await?;
        let mut reached = false;
        let end = loop {
            if (reached || self.given_back.is_some()) && self.tasks.is_empty() {
                break Ok(if self.given_back.is_some() {
                    PassEnd::GivenBack
                } else {
                    PassEnd::Reached
                });
            }
            let room = self.tasks.len() < usize::from(prefetch);
            let reading = room && !reached && self.given_back.is_none();
            tokio::select! {
                Ok(()) = stop.changed() => break Ok(PassEnd::Stopped),
                e = events.next(), if reading => match e {
                    Ok(e) => reached = self.take(e),
                    Err(e) => break Err(e),
                },
                Some(s) = self.settled.1.recv() => self.settle(s),
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
            }
            if self.progress.read >= self.saved_at + CHECKPOINT_EVERY {
                self.checkpoint().await?;
            }
        };
        events.close().await;
        drain(&mut self.tasks, grace, &self.shared.topo.queue).await;
        while let Ok(s) = self.settled.1.try_recv() {
            self.settle(s);
        }
        if self.read_to.is_some() {
            self.progress.next = LogStart::Offset(self.low_water());
        }
        end
    }

    /// Takes one event of the log: dispatched when it matches the bindings. `true` at the
    /// replay's marker.
    fn take(&mut self, e: LogEvent) -> bool {
        self.read_to = Some(e.offset + 1);
        if let Some(marker) = &e.marker {
            return *marker == self.progress.marker;
        }
        self.progress.read += 1;
        let bindings = &self.shared.topo.bindings;
        let topic = e.msg.routing_key.as_str();
        if !bindings
            .iter()
            .any(|b| tchu_core::topic::pattern_matches(b, topic))
        {
            return false;
        }
        self.progress.replayed += 1;
        self.running.insert(e.offset);
        let acker = Acker::Replayed(ReplayedAck::new(e.offset, self.settled.0.clone()));
        let d = Delivery {
            msg: e.msg,
            redelivered: false,
            acker,
        };
        let dispatch = dispatch::handle(self.shared.clone(), d, Source::Service);
        self.tasks.spawn(Box::pin(dispatch));
        false
    }

    fn settle(&mut self, (offset, done): Settled) {
        self.running.remove(&offset);
        if !done {
            self.given_back = Some(self.given_back.map_or(offset, |g| g.min(offset)));
        }
    }

    /// The offset below which every event read is settled (once one was read).
    fn low_water(&self) -> u64 {
        let mut low = self.read_to.unwrap_or(0);
        if let Some(first) = self.running.first() {
            low = low.min(*first);
        }
        self.given_back.map_or(low, |g| low.min(g))
    }

    async fn checkpoint(&mut self) -> Result<()> {
        self.saved_at = self.progress.read;
        self.progress.next = LogStart::Offset(self.low_water());
        self.session.save(self.progress).await?;
        let queue = &self.shared.topo.queue;
        let (replayed, read) = (self.progress.replayed, self.progress.read);
        info!(%queue, replayed, read, next = ?self.progress.next, "replay progress");
        Ok(())
    }
}
