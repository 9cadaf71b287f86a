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
//!
//! The crash guard: found `running` at a start, the progress says the replayer ended without
//! stopping. What it may have been running then runs one event at a time, each saved as the
//! suspect before it runs; an event the process ended under, again and again, is parked as
//! `crashed` past the redelivery limit, as a live message is ([`pass`]).

mod pass;

use crate::dispatch::Dispatcher;
use crate::error::{Error, Result};
use crate::error_chain;
use crate::transport::LogSession;
use crate::transport::event_log::{LogStart, ReplayProgress};
use pass::{Pass, PassEnd};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

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

impl ReplayFrom {
    /// Whether `p` is the progress of a replay from this point, of this log.
    fn same(&self, p: &ReplayProgress) -> bool {
        p.since == self.since && p.log == self.log
    }
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
    let result = match locked(&mut session, queue, plan, stop).await {
        Ok(Lock::Taken) => replay_locked(shared, &session, plan, stop, grace).await,
        Ok(Lock::Done) => Ok(CaughtUp::Done),
        Ok(Lock::Stopped) => Ok(CaughtUp::Stopped),
        Err(e) => Err(e),
    };
    session.close().await;
    result
}

/// What waiting for the lock came to.
enum Lock {
    Taken,
    /// The replay from this point is done: nothing to take it for.
    Done,
    /// The service was told to stop meanwhile.
    Stopped,
}

/// Takes the lock, unless a finished replay says there is nothing to do.
async fn locked(
    session: &mut LogSession,
    queue: &str,
    plan: &ReplayFrom,
    stop: &mut watch::Receiver<bool>,
) -> Result<Lock> {
    let mut waiting = false;
    loop {
        // Read without the lock, trusted only when it says done (replicas starting after the
        // replay go live at once; the replayer reads it again under the lock).
        if let Some(p) = session.load().await?
            && plan.same(&p)
            && p.done
        {
            info!(%queue, since = %plan.since, replayed = p.replayed, "the event log was replayed from this point already; consuming live");
            return Ok(Lock::Done);
        }
        if session.lock(queue).await? {
            return Ok(Lock::Taken);
        }
        if !waiting {
            info!(%queue, "another replica is replaying the event log; waiting for it to finish");
            waiting = true;
        }
        tokio::select! {
            Ok(()) = stop.changed() => return Ok(Lock::Stopped),
            () = tokio::time::sleep(WAIT) => {}
        }
    }
}

async fn replay_locked(
    shared: &Arc<Dispatcher>,
    session: &LogSession,
    plan: &ReplayFrom,
    stop: &mut watch::Receiver<bool>,
    grace: Duration,
) -> Result<CaughtUp> {
    let queue = shared.topo.queue.as_str();
    let (mut careful, mut kept_from) = (0, None);
    let loaded = session.load().await?;
    let last_seq = loaded.as_ref().map_or(0, |p| p.seq);
    let mut progress = match loaded {
        Some(p) if plan.same(&p) && p.done => return Ok(CaughtUp::Done),
        Some(mut p) if plan.same(&p) => {
            info!(%queue, replayed = p.replayed, next = ?p.next, "resuming an interrupted replay");
            careful = after_unclean_end(&mut p, queue);
            p
        }
        _ => {
            let start = LogStart::parse(&plan.since).map_err(|why| invalid(queue, &why))?;
            let (marker, marker_offset) = session.marker(&plan.log).await?;
            let mut p = ReplayProgress::new(&plan.log, &plan.since, marker, start);
            p.marker_offset = marker_offset;
            p.seq = last_seq;
            session.save(&mut p).await?;
            // Read before the replay: a start there, for a time, may be later than asked.
            if let LogStart::Time(_) = start {
                kept_from = Some(session.oldest(&plan.log).await?);
            }
            info!(%queue, log = %plan.log, since = %plan.since, "replaying the event log before consuming live");
            p
        }
    };
    loop {
        // Found so at a start, the replay ended without stopping.
        progress.running = true;
        session.save(&mut progress).await?;
        let mut pass = Pass::new(shared, session, &mut progress, &mut careful);
        pass.kept_from = kept_from.take();
        let end = pass.run(stop, grace).await?;
        // Done in the same save as its last offset: a progress past the marker and not done
        // would be resumed after the marker, and never meet it.
        progress.running = false;
        progress.done = matches!(end, PassEnd::Reached);
        session.save(&mut progress).await?;
        match end {
            PassEnd::Reached => break,
            PassEnd::Stopped => return Ok(CaughtUp::Stopped),
            PassEnd::GivenBack => tokio::time::sleep(WAIT).await,
        }
    }
    info!(%queue, replayed = progress.replayed, read = progress.read, "replay done; consuming live");
    Ok(CaughtUp::Done)
}

/// After an unclean end: counts one more crash of the event that was running alone, if one
/// was, and returns how many events to read one at a time (what the ended run may have been
/// running: up to a checkpoint's worth past what it had read when it saved).
fn after_unclean_end(p: &mut ReplayProgress, queue: &str) -> u64 {
    if !p.running {
        return 0;
    }
    let next = match p.next {
        LogStart::Offset(n) => Some(n),
        _ => None,
    };
    p.crashes = match p.suspect {
        Some(s) if Some(s) == next => p.crashes.saturating_add(1),
        _ => 0,
    };
    let behind = match (p.high, next) {
        (Some(high), Some(next)) => high.saturating_sub(next),
        _ => 0,
    };
    warn!(help = "tchu::troubleshooting#replay", %queue, next = ?p.next, suspect = ?p.suspect, crashes = p.crashes, "the last replay ended without stopping (killed, or an event ended the process): what it may have been running runs one event at a time");
    behind + pass::CHECKPOINT_EVERY + pass::CAREFUL_MARGIN
}

fn invalid(queue: &str, why: &str) -> Error {
    Error::InvalidService {
        queue: queue.to_owned(),
        problems: vec![format!("replay_from {why}")],
    }
}
