//! The two transports behind one enum: RabbitMQ through lapin, and the in-memory broker.
//!
//! Everything above this module speaks [`WireMessage`]; only here do lapin types appear.

use crate::amqp_conv;
use crate::broker_url::BrokerUrl;
use crate::error::{Error, Result};
#[cfg(feature = "service")]
use crate::memory::MemConsumer;
use crate::memory::MemoryBroker;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicPublishOptions, BasicRejectOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions,
};
#[cfg(feature = "service")]
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::{Confirmation, Connection, ConnectionProperties, ExchangeKind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tchu_core::envelope::WireMessage;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{info, warn};

/// The delay tier queue of `queue` holding messages for `tier_ms`.
#[cfg(feature = "service")]
pub(crate) fn delay_queue_name(queue: &str, tier_ms: u64) -> String {
    format!("{queue}.delay.{tier_ms}ms")
}

/// The topic exchange every tchu and tchu-tchu service shares.
pub const EXCHANGE: &str = "tchu_events";

#[derive(Clone)]
pub(crate) enum Transport {
    Amqp(Arc<Amqp>),
    Memory(MemoryBroker),
}

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
    publish_timeout_ms: AtomicU64,
}

/// One established connection and its confirm-mode publisher channel.
pub(crate) struct Live {
    pub(crate) conn: Connection,
    /// One confirm-mode channel shared by all publishes of a client: lapin multiplexes
    /// concurrent publishes on it and resolves each confirm separately.
    /// Replaced when the broker closes it to refuse one publish (a 403, a 406).
    publisher: std::sync::Mutex<lapin::Channel>,
    #[cfg(feature = "service")]
    /// A channel without confirms for RPC replies: transient answers whose loss the caller's
    /// deadline covers, so waiting for (or tracking) a confirm per reply would be wasted work.
    /// Replaced when the broker closes it to refuse one reply.
    replier: std::sync::Mutex<lapin::Channel>,
    /// Increases with every reconnection.
    pub(crate) generation: u64,
    /// The broker address, password redacted.
    pub(crate) url: String,
    /// The broker address it connected to.
    #[cfg(feature = "service")]
    address: BrokerUrl,
    /// Connection events, subscribed to right after connecting so that no failure is missed
    /// (lapin only emits events while a listener exists); the supervisor takes it.
    events: std::sync::Mutex<Option<EventStream>>,
}

impl Live {
    /// The channel publishes go out on.
    pub(crate) fn publisher(&self) -> lapin::Channel {
        self.publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the publisher channel after the broker closed it, unless another task already
    /// did. The connection and everything else on it (consumers, replies) stay as they are.
    async fn reopen_publisher(&self, broken: &lapin::Channel) -> Result<()> {
        let fresh = self
            .conn
            .create_channel()
            .await
            .map_err(Error::amqp("channel.open"))?;
        fresh
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(Error::amqp("confirm.select"))?;
        swap_if(&self.publisher, broken, fresh).await;
        Ok(())
    }

    #[cfg(feature = "service")]
    fn replier(&self) -> lapin::Channel {
        self.replier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    #[cfg(feature = "service")]
    async fn reopen_replier(&self, broken: &lapin::Channel) -> Result<()> {
        let fresh = self
            .conn
            .create_channel()
            .await
            .map_err(Error::amqp("channel.open"))?;
        swap_if(&self.replier, broken, fresh).await;
        Ok(())
    }
}

/// Puts `fresh` in `slot` if it still holds `broken`; otherwise closes `fresh`.
async fn swap_if(
    slot: &std::sync::Mutex<lapin::Channel>,
    broken: &lapin::Channel,
    fresh: lapin::Channel,
) {
    let spare = {
        let mut current = slot.lock().unwrap_or_else(|e| e.into_inner());
        if current.id() == broken.id() {
            *current = fresh;
            None
        } else {
            Some(fresh)
        }
    };
    if let Some(spare) = spare {
        let _ = spare.close(200, "not needed".into()).await;
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

type EventStream = std::pin::Pin<Box<dyn futures_lite::Stream<Item = lapin::Event> + Send>>;

fn short(s: &str, what: &str) -> Result<ShortString> {
    ShortString::try_new(s)
        .map_err(|_| Error::Config(format!("{what} `{s}` is longer than 255 bytes")))
}

async fn open(url: &BrokerUrl, name: &str, ca_pem: Option<&str>, generation: u64) -> Result<Live> {
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(format!("tchu:{name}")));
    let tls = url.is_tls();
    if tls && !cfg!(feature = "tls") {
        return Err(Error::Config(format!(
            "{url} is an amqps:// address: build tchu with its `tls` feature"
        )));
    }
    let connect_error = |source| Error::Connect {
        url: url.to_string(),
        source,
    };
    let uri = url.uri().clone();
    let conn = match ca_pem {
        Some(pem) if tls => {
            let config = lapin::tcp::OwnedTLSConfig {
                identity: None,
                cert_chain: Some(pem.to_owned()),
            };
            let runtime = lapin::runtime::default_runtime().map_err(connect_error)?;
            Connection::connect_uri_with_config(uri, props, config, runtime).await
        }
        _ => Connection::connect_uri(uri, props).await,
    }
    .map_err(connect_error)?;
    let events: EventStream = Box::pin(conn.events_listener());
    let publisher = conn
        .create_channel()
        .await
        .map_err(Error::amqp("channel.open"))?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(Error::amqp("confirm.select"))?;
    declare_exchange(&publisher).await?;
    // RPC replies of a service go out on their own channel; a producer never opens it.
    #[cfg(feature = "service")]
    let replier = conn
        .create_channel()
        .await
        .map_err(Error::amqp("channel.open"))?;
    Ok(Live {
        conn,
        publisher: std::sync::Mutex::new(publisher),
        #[cfg(feature = "service")]
        replier: std::sync::Mutex::new(replier),
        generation,
        url: url.to_string(),
        #[cfg(feature = "service")]
        address: url.clone(),
        events: std::sync::Mutex::new(Some(events)),
    })
}

/// Tries every address once, starting at `first`; the first that answers wins.
async fn open_any(
    urls: &[BrokerUrl],
    name: &str,
    ca_pem: Option<&str>,
    first: usize,
    generation: u64,
) -> Result<(Live, usize)> {
    let mut last = None;
    for i in 0..urls.len() {
        let idx = (first + i) % urls.len();
        match open(&urls[idx], name, ca_pem, generation).await {
            Ok(live) => return Ok((live, idx)),
            Err(e) => {
                warn!(url = %urls[idx], error = %e, "broker unreachable");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::Config("no broker address given".into())))
}

impl Amqp {
    /// Connects to the first reachable address (a list fails over in order; see
    /// [`BrokerUrl::parse_list`]).
    pub(crate) async fn connect(
        urls: &str,
        name: &str,
        ca_pem: Option<String>,
    ) -> Result<Arc<Self>> {
        let urls = BrokerUrl::parse_list(urls)?;
        let (live, idx) = open_any(&urls, name, ca_pem.as_deref(), 0, 1).await?;
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
            publish_timeout_ms: AtomicU64::new(30_000),
        });
        tokio::spawn(supervise(
            Arc::downgrade(&me),
            me.broken.clone(),
            me.broken_gen.clone(),
            me.closing.clone(),
            idx,
        ));
        Ok(me)
    }

    /// How long publishes (and other operations needing the connection) wait for it.
    pub(crate) fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn set_publish_timeout(&self, d: Duration) {
        self.publish_timeout_ms.store(
            d.as_millis().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// The current broker address (redacted), or `reconnecting`.
    pub(crate) fn url(&self) -> String {
        self.live
            .borrow()
            .as_ref()
            .map_or_else(|| "reconnecting".into(), |l| l.url.clone())
    }

    /// The live connection, waiting for a reconnection until `deadline`.
    pub(crate) async fn live(&self, deadline: Instant) -> Result<Arc<Live>> {
        self.live_after(0, deadline).await
    }

    /// A live connection newer than `generation`, waiting until `deadline`.
    pub(crate) async fn live_after(&self, generation: u64, deadline: Instant) -> Result<Arc<Live>> {
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

    /// The generation of the live connection, if any.
    pub(crate) fn generation(&self) -> Option<u64> {
        self.live.borrow().as_ref().map(|l| l.generation)
    }

    pub(crate) async fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.broken.notify_one();
        // Wakes everyone waiting for a connection: they see `closing` and give up.
        if let Some(l) = self.live.send_replace(None) {
            let _ = l.conn.close(200, "tchu client closed".into()).await;
        }
    }
}

/// Watches the live connection; on loss, reconnects with jittered exponential backoff and
/// publishes the new connection. Ends when the client is closed or dropped.
async fn supervise(
    me: Weak<Amqp>,
    broken: Arc<Notify>,
    broken_gen: Arc<AtomicU64>,
    closing: Arc<AtomicBool>,
    mut idx: usize,
) {
    loop {
        let Some(live) = me.upgrade().and_then(|amqp| amqp.live.borrow().clone()) else {
            return;
        };
        let events = live.events.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut events) = events else { return };
        let reason = loop {
            // The status check catches a loss that happened before the listener existed.
            if !live.conn.status().connected() {
                break "connection closed".to_owned();
            }
            tokio::select! {
                ev = events.next() => match ev {
                    // lapin also reports a single channel's closure here: only a connection
                    // that is down needs a reconnect.
                    Some(lapin::Event::Error(e)) if !live.conn.status().connected() => break e.to_string(),
                    Some(_) => continue,
                    None => break "connection closed".to_owned(),
                },
                () = broken.notified() => {
                    if broken_gen.load(Ordering::SeqCst) == live.generation {
                        break "the publisher channel failed".to_owned();
                    }
                }
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        };
        if closing.load(Ordering::SeqCst) {
            return;
        }
        let Some(amqp) = me.upgrade() else { return };
        amqp.live.send_replace(None);
        warn!(url = %live.url, reason = %reason, "broker connection lost; reconnecting");
        let (urls, name, ca) = (amqp.urls.clone(), amqp.name.clone(), amqp.ca_pem.clone());
        drop(amqp);
        let generation = live.generation;
        // Whatever still runs on the old connection (consumers, reply channels) must end with it.
        tokio::spawn(async move {
            let _ = live.conn.close(320, "tchu reconnecting".into()).await;
        });
        let mut delay = Duration::from_millis(100);
        loop {
            // Full jitter keeps a fleet of services from reconnecting in lockstep.
            tokio::time::sleep(delay.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
            if closing.load(Ordering::SeqCst) || me.strong_count() == 0 {
                return;
            }
            match open_any(
                &urls,
                &name,
                ca.as_deref(),
                (idx + 1) % urls.len(),
                generation + 1,
            )
            .await
            {
                Ok((new, i)) => {
                    let amqp = me.upgrade();
                    if closing.load(Ordering::SeqCst) || amqp.is_none() {
                        let _ = new.conn.close(200, "tchu client closed".into()).await;
                        return;
                    }
                    idx = i;
                    info!(url = %new.url, generation = new.generation, "reconnected to the broker");
                    if let Some(amqp) = amqp {
                        amqp.live.send_replace(Some(Arc::new(new)));
                    }
                    break;
                }
                Err(e) => {
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "reconnection failed");
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

impl Drop for Amqp {
    fn drop(&mut self) {
        // A client dropped without `close()`: stop the supervisor's reconnection attempts.
        self.closing.store(true, Ordering::SeqCst);
        self.broken.notify_one();
    }
}

async fn declare_exchange(ch: &lapin::Channel) -> Result<()> {
    // Exactly tchu-tchu's declaration (topic, durable, no arguments): any difference makes the
    // broker answer 406 PRECONDITION_FAILED to whichever side declares second.
    ch.exchange_declare(
        EXCHANGE.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(Error::amqp("exchange.declare"))
}

/// Publishes on a confirm-mode channel and waits for the broker's answer. With `mandatory`, a
/// message no queue takes is an [`Error::Unroutable`].
pub(crate) async fn publish_confirmed(
    ch: &lapin::Channel,
    exchange: &str,
    msg: &WireMessage,
    mandatory: bool,
) -> Result<()> {
    let confirm = ch
        .basic_publish(
            short(exchange, "exchange")?,
            short(&msg.routing_key, "routing key")?,
            BasicPublishOptions {
                mandatory,
                ..Default::default()
            },
            &msg.body,
            amqp_conv::to_properties(msg),
        )
        .await
        .map_err(Error::amqp("basic.publish"))?
        .await
        .map_err(Error::amqp("publisher confirm"))?;
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(Error::Unroutable {
            topic: msg.routing_key.clone(),
        }),
        Confirmation::Nack(_) => Err(Error::Nacked {
            topic: msg.routing_key.clone(),
        }),
    }
}

#[cfg(feature = "service")]
/// The queues and bindings one service needs.
#[derive(Debug, Clone)]
pub(crate) struct Topology {
    pub queue: String,
    pub dead_letter_queue: String,
    /// Binding keys on [`EXCHANGE`], the queue's own name first (as Celery binds it).
    pub bindings: Vec<String>,
    /// Retry delay tiers: `(queue name, TTL in ms)`, each dead-lettering back to `queue`.
    pub delay_queues: Vec<(String, u64)>,
    /// Quorum queues (replicated on a cluster) instead of classic ones.
    pub quorum: bool,
}

#[cfg(feature = "service")]
impl Topology {
    /// Every queue it declares: the service queue, its dead-letter queue, the delay tiers.
    pub(crate) fn queue_names(&self) -> Vec<String> {
        let mut v = vec![self.queue.clone(), self.dead_letter_queue.clone()];
        v.extend(self.delay_queues.iter().map(|(n, _)| n.clone()));
        v
    }

    /// The arguments queue `name` is declared with: the one description that declaring,
    /// `topology --json` and `check` all use.
    ///
    /// Classic service and dead-letter queues have none (tchu-tchu's shape, so a Python process
    /// re-declaring them never meets a 406). Delay tiers are TTL queues dead-lettering back to
    /// the service queue (no plugin, RabbitMQ 3.x and 4.x alike; one TTL per queue keeps expiry
    /// in FIFO order). Quorum queues add their type, and the service queue dead-letters into
    /// `<queue>.dlq`: RabbitMQ 4.x gives quorum queues a delivery limit (20 by default) and
    /// drops what passes it unless the queue has a dead-letter target. Quorum dead-lettering is
    /// at-least-once (`x-dead-letter-strategy`, which needs `x-overflow: reject-publish`): the
    /// default, at-most-once, can lose a retry copy when its target is unavailable.
    pub(crate) fn queue_arguments(&self, name: &str) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::json;
        let mut args = serde_json::Map::new();
        if self.quorum {
            args.insert("x-queue-type".into(), json!("quorum"));
        }
        let tier = self.delay_queues.iter().find(|(n, _)| n == name);
        let target = match tier {
            Some((_, ttl)) => {
                args.insert("x-message-ttl".into(), json!(ttl));
                Some(&self.queue)
            }
            None if self.quorum && name == self.queue => Some(&self.dead_letter_queue),
            None => None,
        };
        if let Some(target) = target {
            args.insert("x-dead-letter-exchange".into(), json!(""));
            args.insert("x-dead-letter-routing-key".into(), json!(target));
            if self.quorum {
                args.insert("x-dead-letter-strategy".into(), json!("at-least-once"));
                args.insert("x-overflow".into(), json!("reject-publish"));
            }
        }
        args
    }

    fn queue_args(&self, name: &str) -> FieldTable {
        amqp_conv::map_to_table(&self.queue_arguments(name))
    }
}

/// Declares a queue only if it is missing: a passive declaration first (it needs no majority
/// on a RabbitMQ 4 cluster, and it does not fail on a queue declared earlier with other
/// arguments), then an active one. The passive declaration of a missing queue closes its
/// channel: the channel to go on with is returned.
#[cfg(feature = "service")]
async fn ensure_queue(
    conn: &Connection,
    ch: lapin::Channel,
    topo: &Topology,
    name: &str,
) -> Result<lapin::Channel> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match ch
        .queue_declare(short(name, "queue name")?, passive, FieldTable::default())
        .await
    {
        Ok(_) => Ok(ch),
        Err(e) if channel_refused(&e) => {
            let ch = conn
                .create_channel()
                .await
                .map_err(Error::amqp("channel.open"))?;
            declare_queue(&ch, topo, name).await?;
            Ok(ch)
        }
        Err(e) => Err(Error::amqp("queue.declare")(e)),
    }
}

#[cfg(feature = "service")]
async fn declare_queue(ch: &lapin::Channel, topo: &Topology, name: &str) -> Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(short(name, "queue name")?, durable, topo.queue_args(name))
        .await
        .map(drop)
        .map_err(Error::amqp("queue.declare"))
}

impl Transport {
    /// What a service's signing key is derived from when `TCHU_SIGNING_KEY` is not set: the
    /// broker credentials (every replica of a service has them; a publisher with other
    /// credentials does not), or a fixed value in memory.
    #[cfg(feature = "service")]
    pub(crate) fn signing_secret(&self) -> Vec<u8> {
        match self {
            Transport::Memory(_) => b"tchu in-memory broker".to_vec(),
            Transport::Amqp(a) => {
                let uri = a.urls[0].uri();
                let info = &uri.authority.userinfo;
                format!("{}\0{}\0{}", info.username, info.password, uri.vhost).into_bytes()
            }
        }
    }

    /// What the broker of the current connection says it is (see [`crate::broker_info`]).
    #[cfg(feature = "service")]
    pub(crate) async fn broker_info(&self) -> Option<crate::BrokerInfo> {
        let address = match self {
            Transport::Memory(_) => return None,
            Transport::Amqp(a) => a.live.borrow().as_ref()?.address.clone(),
        };
        crate::broker_info(&address).await
    }

    /// The largest frame the broker takes on the current connection (a message's headers
    /// must fit in one); `None` in memory or while disconnected.
    #[cfg(feature = "service")]
    pub(crate) fn frame_max(&self) -> Option<usize> {
        match self {
            Transport::Memory(_) => None,
            Transport::Amqp(a) => a
                .live
                .borrow()
                .as_ref()
                .map(|l| l.conn.configuration().frame_max() as usize)
                .filter(|f| *f > 0),
        }
    }

    /// Publishes and waits for the broker's confirm. With `mandatory`, a message no queue
    /// takes is an [`Error::Unroutable`].
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        msg: &WireMessage,
        mandatory: bool,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let result = self.publish_inner(exchange, msg, mandatory).await;
        crate::observe::published(started, &result);
        result
    }

    async fn publish_inner(
        &self,
        exchange: &str,
        msg: &WireMessage,
        mandatory: bool,
    ) -> Result<()> {
        match self {
            Transport::Memory(b) => b.publish(exchange, msg, mandatory),
            Transport::Amqp(a) => {
                let deadline = Instant::now() + a.publish_timeout();
                let mut live = a.live(deadline).await?;
                let mut refusals = 0;
                loop {
                    let channel = live.publisher();
                    let attempt = tokio::time::timeout_at(
                        deadline,
                        publish_confirmed(&channel, exchange, msg, mandatory),
                    );
                    let Ok(result) = attempt.await else {
                        // No confirm in time (a blocked broker, a dead socket): not sent.
                        return Err(Error::Disconnected {
                            waited: a.publish_timeout(),
                        });
                    };
                    match result {
                        // The broker closed the channel to refuse a publish, this one or another
                        // in flight on it: a fresh channel, and one more try tells which. The
                        // connection and its consumers are not disturbed.
                        Err(Error::Amqp { op, source })
                            if channel_refused(&source) && live.conn.status().connected() =>
                        {
                            if let Err(e) = live.reopen_publisher(&channel).await {
                                warn!(error = %e, "could not reopen the publisher channel; reconnecting");
                                a.report_broken(live.generation);
                                live = a.live_after(live.generation, deadline).await?;
                                continue;
                            }
                            refusals += 1;
                            if refusals > 1 {
                                return Err(Error::Refused { op, source });
                            }
                        }
                        // The connection failed under the publish: the broker may or may not
                        // have it, so publish again once reconnected (at-least-once); an
                        // unconfirmed publish is never reported as sent.
                        Err(Error::Amqp { op, source }) => {
                            warn!(%op, error = %source, "publish failed; retrying after reconnection");
                            a.report_broken(live.generation);
                            live = a.live_after(live.generation, deadline).await?;
                        }
                        other => return other,
                    }
                }
            }
        }
    }

    #[cfg(feature = "service")]
    /// Publishes without waiting for the confirm: for RPC replies, which are transient and
    /// whose loss the caller's deadline already covers; waiting would add a round trip to
    /// every call.
    pub(crate) async fn send_unconfirmed(&self, exchange: &str, msg: &WireMessage) -> Result<()> {
        match self {
            Transport::Memory(b) => b.publish(exchange, msg, false),
            Transport::Amqp(a) => {
                let live = a.live(Instant::now() + a.publish_timeout()).await?;
                // A channel without confirms: nothing to track per reply. A reply the broker
                // refused closes it only later (nothing waits for a confirm), so the reply
                // after it finds it closed: it reopens the channel and goes out on the new one.
                let mut tries = 2;
                loop {
                    let channel = live.replier();
                    let sent = channel
                        .basic_publish(
                            short(exchange, "exchange")?,
                            short(&msg.routing_key, "routing key")?,
                            BasicPublishOptions::default(),
                            &msg.body,
                            amqp_conv::to_properties(msg),
                        )
                        .await;
                    let e = match sent {
                        Ok(_) => return Ok(()),
                        Err(e) => e,
                    };
                    tries -= 1;
                    if !channel_refused(&e) || tries == 0 {
                        return Err(Error::Amqp {
                            op: "basic.publish",
                            source: e,
                        });
                    }
                    live.reopen_replier(&channel).await?;
                }
            }
        }
    }

    #[cfg(feature = "service")]
    pub(crate) async fn declare(&self, topo: &Topology) -> Result<()> {
        match self {
            Transport::Memory(b) => {
                b.declare_queue(&topo.queue);
                b.declare_queue(&topo.dead_letter_queue);
                for (name, ttl) in &topo.delay_queues {
                    b.declare_delay_queue(
                        name,
                        std::time::Duration::from_millis(*ttl),
                        &topo.queue,
                    );
                }
                for key in &topo.bindings {
                    b.bind(&topo.queue, key);
                }
                Ok(())
            }
            Transport::Amqp(a) => {
                let live = a.live(Instant::now() + a.publish_timeout()).await?;
                let result: Result<()> = async {
                    let mut ch = live
                        .conn
                        .create_channel()
                        .await
                        .map_err(Error::amqp("channel.open"))?;
                    declare_exchange(&ch).await?;
                    for q in topo.queue_names() {
                        ch = ensure_queue(&live.conn, ch, topo, &q).await?;
                    }
                    for key in &topo.bindings {
                        ch.queue_bind(
                            short(&topo.queue, "queue name")?,
                            EXCHANGE.into(),
                            short(key, "binding key")?,
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await
                        .map_err(Error::amqp("queue.bind"))?;
                    }
                    let _ = ch.close(200, "topology declared".into()).await;
                    Ok(())
                }
                .await;
                match &result {
                    // A refusal (a queue declared elsewhere with other arguments answers 406)
                    // closed only the declaring channel: the connection is fine.
                    Err(Error::Amqp { source, .. }) if channel_refused(source) => {}
                    // A channel failure on a connection that looks up: reconnect, don't spin.
                    Err(Error::Amqp { .. }) => a.report_broken(live.generation),
                    _ => {}
                }
                result
            }
        }
    }

    /// Declares only the given parts of `topo` (`check --fix`): each on its own channel, so a
    /// refusal (a queue that exists with other arguments answers 406) costs that part alone.
    /// Returns the parts that failed, with why.
    #[cfg(feature = "service")]
    pub(crate) async fn declare_parts(
        &self,
        topo: &Topology,
        exchange: bool,
        queues: &[String],
        bindings: &[String],
    ) -> Result<Vec<(String, Error)>> {
        let Transport::Amqp(a) = self else {
            self.declare(topo).await?;
            return Ok(Vec::new());
        };
        let live = a.live(Instant::now() + a.publish_timeout()).await?;
        let mut failed = Vec::new();
        let mut parts: Vec<(String, Option<&str>, Option<&str>)> = Vec::new();
        if exchange {
            parts.push((format!("exchange `{EXCHANGE}`"), None, None));
        }
        parts.extend(
            queues
                .iter()
                .map(|q| (format!("queue `{q}`"), Some(q.as_str()), None)),
        );
        parts.extend(
            bindings
                .iter()
                .map(|k| (format!("binding `{k}`"), None, Some(k.as_str()))),
        );
        for (what, queue, key) in parts {
            let r: Result<()> = async {
                let ch = live
                    .conn
                    .create_channel()
                    .await
                    .map_err(Error::amqp("channel.open"))?;
                match (queue, key) {
                    (Some(q), _) => declare_queue(&ch, topo, q).await?,
                    (_, Some(k)) => {
                        ch.queue_bind(
                            short(&topo.queue, "queue name")?,
                            EXCHANGE.into(),
                            short(k, "binding key")?,
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await
                        .map_err(Error::amqp("queue.bind"))?;
                    }
                    _ => declare_exchange(&ch).await?,
                }
                let _ = ch.close(200, "declared".into()).await;
                Ok(())
            }
            .await;
            if let Err(e) = r {
                failed.push((what, e));
            }
        }
        Ok(failed)
    }

    #[cfg(feature = "service")]
    /// Removes bindings of `queue` on [`EXCHANGE`] (`check --fix` for stale ones).
    pub(crate) async fn unbind(&self, queue: &str, keys: &[String]) -> Result<()> {
        match self {
            Transport::Memory(b) => {
                for key in keys {
                    b.unbind(queue, key);
                }
                Ok(())
            }
            Transport::Amqp(a) => {
                let live = a.live(Instant::now() + a.publish_timeout()).await?;
                let ch = live
                    .conn
                    .create_channel()
                    .await
                    .map_err(Error::amqp("channel.open"))?;
                for key in keys {
                    ch.queue_unbind(
                        short(queue, "queue name")?,
                        EXCHANGE.into(),
                        short(key, "binding key")?,
                        FieldTable::default(),
                    )
                    .await
                    .map_err(Error::amqp("queue.unbind"))?;
                }
                let _ = ch.close(200, "unbound".into()).await;
                Ok(())
            }
        }
    }

    #[cfg(feature = "service")]
    pub(crate) async fn consume(&self, queue: &str, prefetch: u16) -> Result<Deliveries> {
        match self {
            Transport::Memory(b) => Ok(Deliveries::Memory(b.consume(queue)?)),
            Transport::Amqp(a) => {
                let live = a.live(Instant::now() + a.publish_timeout()).await?;
                let result: Result<Deliveries> = async {
                    let ch = live
                        .conn
                        .create_channel()
                        .await
                        .map_err(Error::amqp("channel.open"))?;
                    ch.basic_qos(prefetch, BasicQosOptions::default())
                        .await
                        .map_err(Error::amqp("basic.qos"))?;
                    let tag = format!("tchu-{}", uuid::Uuid::new_v4());
                    let consumer = ch
                        .basic_consume(
                            short(queue, "queue name")?,
                            short(&tag, "consumer tag")?,
                            BasicConsumeOptions::default(),
                            FieldTable::default(),
                        )
                        .await
                        .map_err(Error::amqp("basic.consume"))?;
                    Ok(Deliveries::Amqp {
                        channel: ch,
                        consumer: Box::new(consumer),
                        tag,
                    })
                }
                .await;
                match &result {
                    // A refusal (a queue declared elsewhere with other arguments answers 406)
                    // closed only the declaring channel: the connection is fine.
                    Err(Error::Amqp { source, .. }) if channel_refused(source) => {}
                    // A channel failure on a connection that looks up: reconnect, don't spin.
                    Err(Error::Amqp { .. }) => a.report_broken(live.generation),
                    _ => {}
                }
                result
            }
        }
    }
}

#[cfg(feature = "service")]
/// A stream of deliveries from one queue.
pub(crate) enum Deliveries {
    Amqp {
        channel: lapin::Channel,
        // Boxed: lapin's consumer is large and the enum lives in the service loop.
        consumer: Box<lapin::Consumer>,
        tag: String,
    },
    Memory(MemConsumer),
}

#[cfg(feature = "service")]
impl Deliveries {
    pub(crate) async fn next(&mut self) -> Option<Result<Delivery>> {
        match self {
            Deliveries::Memory(c) => c.next().await.map(Ok),
            Deliveries::Amqp { consumer, .. } => {
                let d = consumer.next().await?;
                Some(d.map_err(Error::amqp("basic.deliver")).map(|d| Delivery {
                    msg: amqp_conv::from_delivery(d.routing_key.as_str(), &d.properties, d.data),
                    redelivered: d.redelivered,
                    acker: Acker::Amqp(AmqpAck(Some(d.acker))),
                }))
            }
        }
    }

    /// Stops the broker from sending more; deliveries already received stay valid.
    pub(crate) async fn cancel(&mut self) {
        if let Deliveries::Amqp { channel, tag, .. } = self {
            let _ = channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
        }
    }

    pub(crate) async fn close(self) {
        if let Deliveries::Amqp { channel, .. } = self {
            let _ = channel.close(200, "tchu service stopped".into()).await;
        }
    }
}

// Without services only the in-memory RPC replies use deliveries.
#[cfg_attr(not(feature = "service"), allow(dead_code))]
pub(crate) struct Delivery {
    pub msg: WireMessage,
    pub redelivered: bool,
    pub acker: Acker,
}

/// A delivery's acknowledger that gives the message back if it is dropped unsettled: a panic
/// in tchu's own dispatch code (outside the handler, whose panics are caught) then costs a
/// redelivery after a pause, never a message stuck unacknowledged until the channel closes.
pub(crate) struct AmqpAck(Option<lapin::Acker>);

impl Drop for AmqpAck {
    fn drop(&mut self) {
        let Some(acker) = self.0.take() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if std::thread::panicking() {
            tracing::error!(
                "a delivery was dropped unsettled by a panic in tchu's dispatch (a bug); giving it back to the queue in a second"
            );
        } else {
            // A delivery task aborted at the end of the shutdown grace period.
            tracing::debug!("unsettled delivery given back to the queue");
        }
        rt.spawn(async move {
            // A pause, so a message that keeps hitting the bug does not spin.
            tokio::time::sleep(Duration::from_secs(1)).await;
            // `basic.reject`: from RabbitMQ 4.3 only a reject counts toward a quorum queue's
            // delivery limit, which is what ends a loop tchu cannot end itself.
            let _ = acker.reject(BasicRejectOptions { requeue: true }).await;
        });
    }
}

#[cfg_attr(not(feature = "service"), allow(dead_code))]
pub(crate) enum Acker {
    Amqp(AmqpAck),
    Memory(Box<crate::memory::MemAck>),
}

#[cfg_attr(not(feature = "service"), allow(dead_code))]
impl Acker {
    pub(crate) async fn ack(self) -> Result<()> {
        match self {
            Acker::Amqp(mut a) => {
                a.0.take()
                    .expect("settled once")
                    .ack(BasicAckOptions::default())
                    .await
                    .map(drop)
                    .map_err(Error::amqp("basic.ack"))
            }
            Acker::Memory(a) => {
                a.settle(None);
                Ok(())
            }
        }
    }

    /// Gives the message back to the queue, for when it could not be handled or parked safely.
    pub(crate) async fn requeue(self, msg: WireMessage) -> Result<()> {
        match self {
            Acker::Amqp(mut a) => {
                a.0.take()
                    .expect("settled once")
                    .reject(BasicRejectOptions { requeue: true })
                    .await
                    .map(drop)
                    .map_err(Error::amqp("basic.reject"))
            }
            Acker::Memory(a) => {
                a.settle(Some(msg));
                Ok(())
            }
        }
    }
}
