//! RabbitMQ through lapin: a supervised connection ([`Amqp`]) and what runs on it.
//!
//! The only place lapin types appear. Each concern has its module: [`connection`] opens one
//! connection and its long-lived channels, [`supervise`] replaces it when it is lost,
//! [`publish`] sends with confirms, [`topology`] declares, [`consume`] receives and settles,
//! [`replies`] is the caller's end of RPC, [`convert`] maps messages to AMQP properties,
//! [`guard`] keeps frames lapin's parser would refuse away from it, [`direct`] is the public
//! door for operator tools.

#[cfg(feature = "service")]
pub(super) mod catch_up;
mod connection;
#[cfg(feature = "service")]
pub(super) mod consume;
pub(super) mod convert;
pub(super) mod delay;
pub mod direct;
pub(crate) mod guard;
#[cfg(feature = "service")]
pub mod log;
pub(super) mod publish;
pub(super) mod replies;
mod supervise;
#[cfg(feature = "service")]
pub(super) mod topology;

use crate::broker_url::BrokerUrl;
use crate::error::{Error, Result};
use connection::Live;
use lapin::types::ShortString;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::info;

/// A supervised AMQP connection: when it is lost, a background task reconnects (trying every
/// broker address in turn, with jittered backoff) and publishes the new [`Live`] connection;
/// everything else waits for it, bounded by its own deadline.
pub(crate) struct Amqp {
    urls: Vec<BrokerUrl>,
    name: String,
    /// An extra CA (PEM) trusted for `amqps://` addresses.
    ca_pem: Option<String>,
    live: watch::Sender<Option<Arc<Live>>>,
    /// Tells the supervisor a channel broke on a connection that still looks up; the generation
    /// it broke on is in `broken_gen`, so a late report cannot tear down a newer connection.
    broken: Arc<Notify>,
    broken_gen: Arc<AtomicU64>,
    closing: Arc<AtomicBool>,
    /// How long a publish waits for the connection to come back before failing.
    publish_timeout: Duration,
}

impl Amqp {
    /// Connects to the first reachable address (a list fails over in order; see
    /// [`BrokerUrl::parse_list`]).
    pub(crate) async fn connect(
        urls: &str,
        name: &str,
        ca_pem: Option<String>,
        publish_timeout: Duration,
    ) -> Result<Arc<Self>> {
        let urls = BrokerUrl::parse_list(urls)?;
        let (live, idx) = supervise::open_any(&urls, name, ca_pem.as_deref(), 0, 1).await?;
        info!(url = %live.url, "connected to the broker");
        let (tx, _) = watch::channel(Some(Arc::new(live)));
        let me = Arc::new(Self {
            urls,
            name: name.to_owned(),
            ca_pem,
            live: tx,
            broken: Arc::new(Notify::new()),
            broken_gen: Arc::new(AtomicU64::new(0)),
            closing: Arc::new(AtomicBool::new(false)),
            publish_timeout,
        });
        tokio::spawn(supervise::supervise(Arc::downgrade(&me), idx));
        Ok(me)
    }

    /// How long publishes (and other operations needing the connection) wait for it.
    pub(crate) fn publish_timeout(&self) -> Duration {
        self.publish_timeout
    }

    /// The current broker address (redacted), or `reconnecting`.
    pub(crate) fn url(&self) -> String {
        self.live
            .borrow()
            .as_ref()
            .map_or_else(|| "reconnecting".into(), |l| l.url.clone())
    }

    /// The live connection, waiting for a reconnection no longer than the publish timeout.
    pub(crate) async fn live_now(&self) -> Result<Arc<Live>> {
        self.live(Instant::now() + self.publish_timeout()).await
    }

    /// The live connection, waiting for a reconnection until `deadline`.
    pub(crate) async fn live(&self, deadline: Instant) -> Result<Arc<Live>> {
        self.live_after(0, deadline).await
    }

    /// A live connection newer than `generation`, waiting until `deadline`.
    pub(crate) async fn live_after(&self, generation: u64, deadline: Instant) -> Result<Arc<Live>> {
        // The common case, connected: no subscription to the watch.
        if !self.closing.load(Ordering::SeqCst)
            && let Some(l) = (self.live.borrow().as_ref()).filter(|l| l.generation > generation)
        {
            return Ok(l.clone());
        }
        let mut rx = self.live.subscribe();
        let started = Instant::now();
        loop {
            if self.closing.load(Ordering::SeqCst) {
                return Err(Error::Closed);
            }
            if let Some(l) = rx
                .borrow_and_update()
                .as_ref()
                .filter(|l| l.generation > generation)
            {
                return Ok(l.clone());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Closed),
                Err(_) => {
                    return Err(Error::Disconnected {
                        waited: started.elapsed(),
                    });
                }
            }
        }
    }

    /// The current connection, if there is one (no waiting).
    #[cfg(feature = "service")]
    pub(crate) fn current(&self) -> Option<Arc<Live>> {
        self.live.borrow().clone()
    }

    /// A channel of this generation failed: have the supervisor reconnect.
    pub(crate) fn report_broken(&self, generation: u64) {
        if self
            .live
            .borrow()
            .as_ref()
            .is_some_and(|l| l.generation == generation)
        {
            self.broken_gen.store(generation, Ordering::SeqCst);
            self.broken.notify_one();
        }
    }

    /// After an operation on a fresh channel failed: a refusal (a queue declared elsewhere with
    /// other arguments answers 406) closed only that channel and the connection is fine; any
    /// other channel failure on a connection that looks up makes it reconnect, not spin.
    pub(crate) fn after_failure<T>(&self, live: &Live, result: &Result<T>) {
        if let Err(Error::Amqp { source, .. }) = result
            && !channel_refused(source)
        {
            self.report_broken(live.generation);
        }
    }

    /// The generation of the live connection, if any.
    pub(crate) fn generation(&self) -> Option<u64> {
        self.live.borrow().as_ref().map(|l| l.generation)
    }

    /// What a service's signing key is derived from: the credentials of the first address
    /// (every replica of a service has them; a publisher with other credentials does not).
    #[cfg(feature = "service")]
    pub(crate) fn credentials_secret(&self) -> Vec<u8> {
        credentials_secret(&self.urls[0])
    }

    pub(crate) async fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.broken.notify_one();
        // Wakes everyone waiting for a connection: they see `closing` and give up.
        if let Some(l) = self.live.send_replace(None) {
            // A broker that never answers (a node paused or cut off) must not hold the caller:
            // past the bound the connection is dropped, which closes its socket.
            let closing = l.conn.close(200, "tchu client closed".into());
            let _ = tokio::time::timeout(CLOSE_WAIT, closing).await;
        }
    }
}

/// How long `close()` waits for the broker's answer before dropping the connection.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Drop for Amqp {
    fn drop(&mut self) {
        // A client dropped without `close()`: stop the supervisor's reconnection attempts.
        self.closing.store(true, Ordering::SeqCst);
        self.broken.notify_one();
    }
}

/// Whether the broker refused one operation by closing its channel (a soft error such as 403
/// ACCESS_REFUSED, 404 NOT_FOUND or 406 PRECONDITION_FAILED): the connection is fine.
pub(crate) fn channel_refused(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(a)
            if matches!(a.kind(), lapin::protocol::AMQPErrorKind::Soft(_))
    ) || matches!(e.kind(), lapin::ErrorKind::InvalidChannelState(..))
}

/// An AMQP short string (exchange, queue, routing key, consumer tag): at most 255 bytes.
fn short(s: &str, what: &'static str) -> Result<ShortString> {
    ShortString::try_new(s).map_err(|_| Error::NameTooLong {
        what,
        name: s.to_owned(),
    })
}

/// The signing secret of a broker address: its credentials and virtual host.
#[cfg(feature = "service")]
pub(crate) fn credentials_secret(url: &crate::BrokerUrl) -> Vec<u8> {
    let uri = url.uri();
    let info = &uri.authority.userinfo;
    format!("{}\0{}\0{}", info.username, info.password, uri.vhost).into_bytes()
}
