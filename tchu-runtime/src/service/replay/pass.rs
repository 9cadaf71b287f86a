//! One pass over the log: its events dispatched as the queue's would be, at most the prefetch
//! at once (one at a time while careful, after an unclean end), their settlements moving the
//! progress on.

use crate::dispatch::{self, Dispatcher, Source};
use crate::error::Result;
use crate::service::consume::drain;
use crate::transport::event_log::{LogStart, ReplayProgress};
use crate::transport::{Acker, Delivery, LogEvent, LogSession, ReplayedAck, Settled};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tchu_core::headers::DELIVERY_COUNT_HEADER;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

/// Every how many events read the progress is saved and shown.
pub(super) const CHECKPOINT_EVERY: u64 = 1000;
/// Events read beyond a checkpoint's worth that an ended run may have taken (markers, the
/// reader's channel): run one at a time too after an unclean end.
pub(super) const CAREFUL_MARGIN: u64 = 64;

/// How one pass over the log ended.
pub(super) enum PassEnd {
    /// At the marker, everything before it settled.
    Reached,
    /// An event was given back (it could be neither handled nor parked): read again from it.
    GivenBack,
    /// The service was told to stop.
    Stopped,
}

/// What one event of the log asks for.
enum Taken {
    /// The replay's own marker: the end.
    Marker,
    /// Another replay's marker, or a topic the service is not bound to.
    Skipped,
    // Boxed: a message is hundreds of bytes, the other answers none.
    Dispatch(Box<LogEvent>),
}

pub(super) struct Pass<'a> {
    shared: &'a Arc<Dispatcher>,
    session: &'a LogSession,
    progress: &'a mut ReplayProgress,
    /// Events still to read one at a time (after an unclean end).
    careful: &'a mut u64,
    tasks: JoinSet<()>,
    /// Offsets dispatched and not yet settled.
    running: BTreeSet<u64>,
    /// The lowest offset given back in this pass.
    given_back: Option<u64>,
    /// The offset after the last one read.
    read_to: Option<u64>,
    /// Events read when the progress was saved last.
    saved_at: u64,
    /// The oldest offset the log kept when a replay from a time began: a first event there
    /// means its retention may have dropped some of what was asked for.
    pub(super) kept_from: Option<u64>,
    settled: (
        mpsc::UnboundedSender<Settled>,
        mpsc::UnboundedReceiver<Settled>,
    ),
}

impl<'a> Pass<'a> {
    pub(super) fn new(
        shared: &'a Arc<Dispatcher>,
        session: &'a LogSession,
        progress: &'a mut ReplayProgress,
        careful: &'a mut u64,
    ) -> Self {
        Self {
            shared,
            session,
            saved_at: progress.read,
            progress,
            careful,
            tasks: JoinSet::new(),
            running: BTreeSet::new(),
            given_back: None,
            read_to: None,
            kept_from: None,
            settled: mpsc::unbounded_channel(),
        }
    }

    pub(super) async fn run(
        &mut self,
        stop: &mut watch::Receiver<bool>,
        grace: Duration,
    ) -> Result<PassEnd> {
        let (log, prefetch) = (self.progress.log.clone(), self.shared.prefetch.max(1));
        if let (LogStart::Offset(next), Some(marker)) =
            (self.progress.next, self.progress.marker_offset)
            && next > marker
        {
            return Ok(PassEnd::Reached);
        }
        let mut events = self
            .session
            .read(&log, self.progress.next, prefetch)
            .await?;
        let mut reached = false;
        let end = loop {
            // Settlements first: a task reports before it ends, but its end may be seen first.
            while let Ok(s) = self.settled.1.try_recv() {
                self.settle(s);
            }
            if (reached || self.given_back.is_some()) && self.tasks.is_empty() {
                break Ok(match self.given_back {
                    Some(_) => PassEnd::GivenBack,
                    None => PassEnd::Reached,
                });
            }
            let room = match *self.careful {
                0 => self.tasks.len() < usize::from(prefetch),
                _ => self.tasks.is_empty() && self.running.is_empty(),
            };
            let reading = room && !reached && self.given_back.is_none();
            tokio::select! {
                Ok(()) = stop.changed() => break Ok(PassEnd::Stopped),
                e = events.next(), if reading => match e {
                    Ok(e) => match self.take(e) {
                        Taken::Marker => reached = true,
                        Taken::Skipped => {}
                        Taken::Dispatch(e) => {
                            if let Err(e) = self.dispatch(*e).await {
                                break Err(e);
                            }
                        }
                    },
                    Err(e) => break Err(e),
                },
                Some(s) = self.settled.1.recv() => self.settle(s),
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
            }
            if self.progress.read >= self.saved_at + CHECKPOINT_EVERY
                && let Err(e) = self.checkpoint().await
            {
                break Err(e);
            }
        };
        events.close().await;
        drain(&mut self.tasks, grace, &self.shared.topo.queue).await;
        while let Ok(s) = self.settled.1.try_recv() {
            self.settle(s);
        }
        if self.read_to.is_some() {
            self.progress.next = LogStart::Offset(self.low_water());
            self.progress.suspect = None;
        }
        end
    }

    /// Reads one event of the log: what it asks for.
    fn take(&mut self, e: LogEvent) -> Taken {
        if self.read_to.is_none() {
            self.first_read(e.offset);
        }
        self.read_to = Some(e.offset + 1);
        *self.careful = self.careful.saturating_sub(1);
        // At the marker, or past it (a replay point after it: nothing before it to replay).
        if self.progress.marker_offset.is_some_and(|m| e.offset >= m) {
            return Taken::Marker;
        }
        if let Some(marker) = &e.marker {
            return match *marker == self.progress.marker {
                true => Taken::Marker,
                false => Taken::Skipped,
            };
        }
        self.progress.read += 1;
        let bindings = &self.shared.topo.bindings;
        let topic = e.msg.routing_key.as_str();
        match bindings
            .iter()
            .any(|b| tchu_core::topic::pattern_matches(b, topic))
        {
            true => Taken::Dispatch(Box::new(e)),
            false => Taken::Skipped,
        }
    }

    /// Dispatches one event. While careful, it runs alone, saved first as the suspect: run
    /// again after the process ended under it, it goes through admission as a quarantined
    /// message does, with the times it ended the process counted, and is parked as `crashed`
    /// past the redelivery limit instead of ending it once more.
    async fn dispatch(&mut self, mut e: LogEvent) -> Result<()> {
        let mut source = Source::Service;
        if *self.careful > 0 {
            if self.progress.suspect != Some(e.offset) {
                self.progress.crashes = 0;
            }
            self.progress.suspect = Some(e.offset);
            self.progress.next = LogStart::Offset(e.offset);
            self.save().await?;
            if self.progress.crashes > 0 {
                let count = u64::from(self.progress.crashes);
                e.msg
                    .headers
                    .insert(DELIVERY_COUNT_HEADER.into(), count.into());
                source = Source::Quarantine;
            }
        }
        dispatch::mark_replayed(&self.shared.signing, &mut e.msg, &e.at);
        self.progress.replayed += 1;
        self.running.insert(e.offset);
        let acker = Acker::Replayed(ReplayedAck::new(e.offset, self.settled.0.clone()));
        let d = Delivery {
            msg: e.msg,
            redelivered: false,
            acker,
        };
        let dispatch = dispatch::handle(self.shared.clone(), d, source);
        self.tasks.spawn(Box::pin(dispatch));
        Ok(())
    }

    /// Says where the replay really began when the log's retention decided it.
    fn first_read(&self, offset: u64) {
        let queue = &self.shared.topo.queue;
        if let LogStart::Offset(next) = self.progress.next
            && offset > next
        {
            warn!(help = "tchu::troubleshooting#replay", %queue, from = next, to = offset, "the log no longer keeps the events the replay was to resume at: its retention dropped them before they were replayed");
        }
        if let Some(kept) = self.kept_from.filter(|k| *k > 0 && offset <= *k) {
            let since = &self.progress.since;
            warn!(help = "tchu::troubleshooting#replay", %queue, offset = kept, %since, "the log keeps events from offset {kept} only (its retention dropped the older ones): the replay began there, at the oldest event it keeps, which may be later than {since}");
        }
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

    /// Saves the progress as it stands while the pass runs.
    async fn save(&mut self) -> Result<()> {
        self.saved_at = self.progress.read;
        self.progress.running = true;
        self.progress.high = self.read_to;
        self.session.save(self.progress).await
    }

    async fn checkpoint(&mut self) -> Result<()> {
        self.progress.next = LogStart::Offset(self.low_water());
        self.progress.suspect = None;
        self.save().await?;
        let queue = &self.shared.topo.queue;
        let (replayed, read) = (self.progress.replayed, self.progress.read);
        let to = self.progress.marker_offset;
        info!(%queue, replayed, read, next = ?self.progress.next, to, "replay progress");
        Ok(())
    }
}
