//! A service's end of a replay from the event log (`Service::replay_from`): the lock that lets
//! one replica replay, the progress kept in `<queue>.replay`, the marker, and the log's events
//! as messages the dispatcher reads like the queue's.

use super::log::{LogReader, LogStart, ReplayCheckpoint, ReplayProgress, lock_replay};
use super::{Amqp, Live};
use crate::error::Result;
use std::sync::Arc;
use tchu_core::envelope::WireMessage;

/// One service's replay session, on the connection current when it opened.
pub(crate) struct LogSession {
    live: Arc<Live>,
    /// Confirmed: the checkpoint and the marker are written on it.
    control: lapin::Channel,
    checkpoint: ReplayCheckpoint,
    /// The channel that declared the lock, once taken, and the lock's name.
    lock: Option<(lapin::Channel, String)>,
}

impl LogSession {
    pub(crate) async fn open(amqp: &Amqp, queue: &str) -> Result<Self> {
        let live = amqp.live_now().await?;
        let control = live.channel().await?;
        let confirm = lapin::options::ConfirmSelectOptions::default();
        (control.confirm_select(confirm).await).map_err(crate::Error::amqp("confirm.select"))?;
        let checkpoint = ReplayCheckpoint::open(&control, &format!("{queue}.replay")).await?;
        Ok(Self {
            live,
            control,
            checkpoint,
            lock: None,
        })
    }

    /// Takes the lock on replaying into `queue`; `false` while another replica holds it.
    pub(crate) async fn lock(&mut self, queue: &str) -> Result<bool> {
        let channel = self.live.channel().await?;
        let taken = lock_replay(&channel, queue).await?;
        if taken {
            self.lock = Some((channel, format!("{queue}.replay.lock")));
        }
        Ok(taken)
    }

    pub(crate) async fn load(&self) -> Result<Option<ReplayProgress>> {
        self.checkpoint.load(&self.control).await
    }

    pub(crate) async fn save(&self, p: &mut ReplayProgress) -> Result<()> {
        self.checkpoint.save(&self.control, p).await
    }

    /// Writes the marker the replay stops at, at the end of `log`: its token, and its offset
    /// when it could be read back.
    pub(crate) async fn marker(&self, log: &str) -> Result<(String, Option<u64>)> {
        let token = super::log::write_marker(&self.control, log).await?;
        let offset = super::log::find_marker(&self.live, log, &token).await?;
        Ok((token, offset))
    }

    /// The offset of the oldest event `log` keeps (it holds one at least: the marker).
    pub(crate) async fn oldest(&self, log: &str) -> Result<u64> {
        super::log::oldest_offset(self.live.channel().await?, log).await
    }

    /// Reads `log` from `start`, at most `window` events ahead of what was taken.
    pub(crate) async fn read(&self, log: &str, start: LogStart, window: u16) -> Result<LogEvents> {
        let channel = self.live.channel().await?;
        let reader = LogReader::open(channel, log, start, window).await?;
        let (to, from) = tokio::sync::mpsc::channel(usize::from(window.max(1)));
        let task = tokio::spawn(read_into(reader, log.to_owned(), to));
        Ok(LogEvents { from, task })
    }

    /// Lets go of the lock (deletes it: an exclusive queue lives as long as its connection,
    /// the service's own) and closes the session's channels.
    pub(crate) async fn close(self) {
        if let Some((lock, name)) = self.lock {
            let delete = lapin::options::QueueDeleteOptions::default();
            let _ = lock.queue_delete(name.as_str().into(), delete).await;
            let _ = lock.close(200, "replay over".into()).await;
        }
        let _ = self.control.close(200, "replay over".into()).await;
    }
}

/// The log's events in order, from a starting point. Read by a task of their own: taking
/// one (a receive) may be cancelled, reading one (a delivery, then its acknowledgement) may not.
pub(crate) struct LogEvents {
    from: tokio::sync::mpsc::Receiver<Result<LogEvent>>,
    task: tokio::task::JoinHandle<()>,
}

/// One event of the log: a marker, or a message as the service's queue would have had it
/// (its topic the routing key it was published with).
pub(crate) struct LogEvent {
    /// Where it was read: `<log>@<offset>`.
    pub at: String,
    pub offset: u64,
    pub marker: Option<String>,
    pub msg: WireMessage,
}

/// Reads the log into `to` until it is dropped or the reader fails (the failure sent last).
async fn read_into(
    mut reader: LogReader,
    log: String,
    to: tokio::sync::mpsc::Sender<Result<LogEvent>>,
) {
    loop {
        // Cancelled only when nobody takes events any more.
        let entry = tokio::select! {
            entry = reader.next() => entry,
            () = to.closed() => break,
        };
        let event = entry.map(|entry| {
            let marker = entry.marker();
            let d = entry.delivery;
            let mut msg =
                super::convert::from_delivery(d.routing_key.as_str(), &d.properties, d.data);
            msg.headers.remove("x-stream-offset");
            LogEvent {
                at: format!("{log}@{}", entry.offset),
                offset: entry.offset,
                marker,
                msg,
            }
        });
        let failed = event.is_err();
        if to.send(event).await.is_err() || failed {
            break;
        }
    }
    reader.close().await;
}

impl LogEvents {
    /// The next event (cancel-safe).
    pub(crate) async fn next(&mut self) -> Result<LogEvent> {
        match self.from.recv().await {
            Some(event) => event,
            None => Err(crate::Error::Closed),
        }
    }

    /// Stops reading; the reader's channel closes.
    pub(crate) async fn close(self) {
        drop(self.from);
        let _ = self.task.await;
    }
}
