//! The two transports behind one enum: RabbitMQ through lapin ([`amqp`]), and the in-memory
//! broker ([`memory`]).
//!
//! Everything above this module speaks [`WireMessage`] and calls [`Transport`]'s methods; no
//! other module matches on the variant, and only [`amqp`] names lapin types.

mod amqp;
pub(crate) mod memory;
pub(crate) mod spec;

use crate::error::Result;
use amqp::Amqp;
pub use memory::MemoryBroker;
#[cfg(feature = "service")]
pub(crate) use spec::{Topology, TopologyPart};
use std::sync::Arc;
use std::time::Duration;
use tchu_core::envelope::WireMessage;
use tokio::time::Instant;

#[cfg(feature = "service")]
pub(crate) use amqp::credentials_secret;

#[cfg(feature = "service")]
pub(crate) use amqp::catch_up::{LogEvent, LogSession};
/// Direct AMQP access for operator tools.
pub use amqp::direct;
/// The event log on RabbitMQ, for operator tools and a service's replay.
#[cfg(feature = "service")]
pub use amqp::log as event_log;

/// A delivery as a service receives it (Celery's headers typed), for the fuzz run.
#[cfg(test)]
pub(crate) use amqp::convert::from_delivery;
/// The frame guard, for the fuzz run.
#[cfg(test)]
pub(crate) use amqp::guard;
/// lapin connections through the frame guard, for the benches and tests.
#[doc(hidden)]
pub use amqp::guard::connect_guarded;

/// The topic exchange every tchu and tchu-tchu service shares.
pub const EXCHANGE: &str = "tchu_events";

/// The delay tier queue of `queue` holding messages for `tier_ms`.
#[cfg(feature = "service")]
pub(crate) fn delay_queue_name(queue: &str, tier_ms: u64) -> String {
    format!("{queue}.delay.{tier_ms}ms")
}

/// A broker: RabbitMQ, or the in-memory one.
#[derive(Clone)]
pub(crate) enum Transport {
    Amqp(Arc<Amqp>),
    Memory(MemoryBroker),
}

impl Transport {
    /// A supervised connection to RabbitMQ (see [`crate::BrokerUrl::parse_list`] for `urls`).
    pub(crate) async fn connect(
        urls: &str,
        name: &str,
        ca_pem: Option<String>,
        publish_timeout: Duration,
    ) -> Result<Self> {
        let amqp = Amqp::connect(urls, name, ca_pem, publish_timeout).await?;
        Ok(Self::Amqp(amqp))
    }

    /// The in-memory broker.
    pub(crate) fn memory(broker: &MemoryBroker) -> Self {
        Self::Memory(broker.clone())
    }

    /// The address in use (password redacted), `reconnecting`, or `memory`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Amqp(a) => a.url(),
            Self::Memory(_) => "memory".into(),
        }
    }

    pub(crate) fn is_memory(&self) -> bool {
        matches!(self, Self::Memory(_))
    }

    /// The in-memory broker, when it is one.
    #[cfg(feature = "service")]
    pub(crate) fn memory_broker(&self) -> Option<&MemoryBroker> {
        match self {
            Self::Memory(b) => Some(b),
            Self::Amqp(_) => None,
        }
    }

    /// The generation of the current connection (`None` while reconnecting); in memory always 0.
    pub(crate) fn generation(&self) -> Option<u64> {
        match self {
            Self::Amqp(a) => a.generation(),
            Self::Memory(_) => Some(0),
        }
    }

    /// Closes the connection; everything waiting for it gives up.
    pub(crate) async fn close(&self) {
        if let Self::Amqp(a) = self {
            a.close().await;
        }
    }

    /// Publishes and waits for the broker's confirm. With `mandatory`, a message no queue
    /// takes is an [`Error::Unroutable`](crate::Error::Unroutable).
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        msg: &WireMessage,
        mandatory: bool,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let result = match self {
            Self::Memory(b) => b.publish(exchange, msg, mandatory),
            Self::Amqp(a) => amqp::publish::publish(a, exchange, msg, mandatory).await,
        };
        crate::observe::published(started, &result);
        result
    }

    /// Publishes messages in order with `mandatory`, up to `window` confirms in flight: one
    /// result per message (see `amqp::publish::publish_batch`).
    pub(crate) async fn publish_batch(
        &self,
        exchange: &str,
        msgs: &[WireMessage],
        window: usize,
    ) -> Vec<Result<()>> {
        let started = std::time::Instant::now();
        let results = match self {
            Self::Memory(b) => msgs.iter().map(|m| b.publish(exchange, m, true)).collect(),
            Self::Amqp(a) => amqp::publish::publish_batch(a, exchange, msgs, window).await,
        };
        for result in &results {
            crate::observe::published(started, result);
        }
        results
    }

    /// Publishes into the delay route (declaring its levels on the first use, through
    /// `declared`) and waits for the confirm: the broker then holds the message until it is
    /// due. In memory, a timer holds it.
    pub(crate) async fn publish_delayed(
        &self,
        msg: WireMessage,
        route: &tchu_core::delay::DelayRoute,
        declared: &tokio::sync::OnceCell<()>,
    ) -> Result<()> {
        match self {
            Self::Memory(b) => {
                let (b, delay) = (b.clone(), Duration::from_millis(route.ms));
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    // As on RabbitMQ: a delayed event nobody is bound to when due is dropped.
                    let _ = b.publish(EXCHANGE, &msg, false);
                });
                Ok(())
            }
            Self::Amqp(a) => {
                declared
                    .get_or_try_init(|| amqp::delay::declare_levels(a))
                    .await?;
                let level = tchu_core::delay::level_name(route.top);
                match self.publish(&level, &msg, true).await {
                    // The levels went away since (deleted, a reset node, a failover to a broker
                    // that never had them): declared again, once.
                    Err(crate::Error::Refused { .. }) => {
                        amqp::delay::declare_levels(a).await?;
                        self.publish(&level, &msg, true).await
                    }
                    other => other,
                }
            }
        }
    }

    /// Opens the caller's end of RPC: where replies arrive and how requests go out.
    pub(crate) async fn open_replies(&self, deadline: Instant) -> Result<ReplyEndpoint> {
        match self {
            Self::Amqp(a) => amqp::replies::open(a, deadline).await,
            Self::Memory(b) => memory_replies(b),
        }
    }
}

/// Where an in-memory client's replies arrive: a queue of its own.
fn memory_replies(broker: &MemoryBroker) -> Result<ReplyEndpoint> {
    let queue = format!("tchu.reply.{}", uuid::Uuid::new_v4().simple());
    broker.declare_queue(&queue);
    let consumer = broker.consume(&queue)?;
    Ok(ReplyEndpoint {
        reply_to: queue,
        generation: 0,
        sender: ReplySender::Memory(broker.clone()),
        stream: ReplyStream::Memory(consumer),
    })
}

/// The caller's end of RPC on one connection.
pub(crate) struct ReplyEndpoint {
    /// The address replies are sent to (the requests' `reply_to`).
    pub reply_to: String,
    /// The connection generation it lives on.
    pub generation: u64,
    pub sender: ReplySender,
    pub stream: ReplyStream,
}

/// How requests go out: on RabbitMQ, on the channel that consumes the replies.
pub(crate) enum ReplySender {
    Amqp(amqp::replies::RequestChannel),
    Memory(MemoryBroker),
}

impl ReplySender {
    /// Publishes a request, mandatory and confirmed.
    pub(crate) async fn send(&self, exchange: &str, msg: &WireMessage) -> Result<()> {
        match self {
            Self::Amqp(ch) => ch.send(exchange, msg).await,
            Self::Memory(b) => b.publish(exchange, msg, true),
        }
    }
}

/// One reply taken off the reply address.
pub(crate) struct IncomingReply {
    pub correlation_id: Option<String>,
    pub body: Vec<u8>,
}

/// The replies arriving for a client.
pub(crate) enum ReplyStream {
    Amqp(amqp::replies::ReplyConsumer),
    Memory(memory::MemConsumer),
}

impl ReplyStream {
    /// The next reply; `None` or an error when the consumer ended.
    pub(crate) async fn next(&mut self) -> Option<Result<IncomingReply>> {
        match self {
            Self::Amqp(c) => c.next().await,
            Self::Memory(c) => {
                let d = c.next().await?;
                let reply = IncomingReply {
                    correlation_id: d.msg.properties.correlation_id.clone(),
                    body: d.msg.body.clone(),
                };
                let _ = d.acker.ack().await;
                Some(Ok(reply))
            }
        }
    }
}

#[cfg(feature = "service")]
impl Transport {
    /// What a service's signing key is derived from when `TCHU_SIGNING_KEY` is not set: the
    /// broker credentials (every replica of a service has them; a publisher with other
    /// credentials does not), or a fixed value in memory.
    pub(crate) fn signing_secret(&self) -> Vec<u8> {
        match self {
            Self::Memory(_) => b"tchu in-memory broker".to_vec(),
            Self::Amqp(a) => a.credentials_secret(),
        }
    }

    /// What the broker of the current connection says it is (see [`crate::broker_info`]).
    pub(crate) async fn broker_info(&self) -> Option<crate::BrokerInfo> {
        let Self::Amqp(a) = self else { return None };
        let address = a.current()?.address.clone();
        crate::broker_info(&address).await
    }

    /// The largest frame the broker takes on the current connection (a message's headers
    /// must fit in one); `None` in memory or while disconnected.
    pub(crate) fn frame_max(&self) -> Option<usize> {
        let Self::Amqp(a) = self else { return None };
        a.current()?.frame_max()
    }

    /// Publishes without waiting for the confirm: for RPC replies, which are transient and
    /// whose loss the caller's deadline already covers.
    pub(crate) async fn send_unconfirmed(&self, exchange: &str, msg: &WireMessage) -> Result<()> {
        match self {
            Self::Memory(b) => b.publish(exchange, msg, false),
            Self::Amqp(a) => amqp::publish::send_unconfirmed(a, exchange, msg).await,
        }
    }

    /// Declares the exchange, the queues and the bindings of `topo`.
    pub(crate) async fn declare(&self, topo: &Topology) -> Result<()> {
        match self {
            Self::Memory(b) => {
                b.declare_topology(topo);
                Ok(())
            }
            Self::Amqp(a) => amqp::topology::declare(a, topo).await,
        }
    }

    /// Messages waiting in `queue` and its consumers; `None` in memory (the in-memory broker
    /// has no backlog to watch) or when the broker cannot say.
    pub(crate) async fn depth(&self, queue: &str) -> Option<(u32, u32)> {
        match self {
            Self::Amqp(a) => amqp::topology::depth(a, queue).await.ok(),
            Self::Memory(_) => None,
        }
    }

    /// Declares only the given parts of `topo`, each on its own; returns those that failed.
    pub(crate) async fn declare_parts(
        &self,
        topo: &Topology,
        parts: &[TopologyPart],
    ) -> Result<Vec<(TopologyPart, crate::Error)>> {
        match self {
            Self::Memory(b) => {
                b.declare_topology(topo);
                Ok(Vec::new())
            }
            Self::Amqp(a) => amqp::topology::declare_parts(a, topo, parts).await,
        }
    }

    /// Removes bindings of `queue` on [`EXCHANGE`].
    pub(crate) async fn unbind(&self, queue: &str, keys: &[String]) -> Result<()> {
        match self {
            Self::Memory(b) => {
                keys.iter().for_each(|key| b.unbind(queue, key));
                Ok(())
            }
            Self::Amqp(a) => amqp::topology::unbind(a, queue, keys).await,
        }
    }

    /// A channel to take messages from one at a time (`basic.get`).
    #[cfg(feature = "service")]
    pub(crate) async fn taker(&self) -> Result<Taker> {
        match self {
            Self::Memory(b) => Ok(Taker::Memory(b.clone())),
            Self::Amqp(a) => Ok(Taker::Amqp(amqp::consume::taker(a).await?)),
        }
    }

    /// A replay session for `queue` on the event log; `None` in memory (the in-memory broker
    /// keeps no log).
    pub(crate) async fn log_session(&self, queue: &str) -> Result<Option<LogSession>> {
        match self {
            Self::Amqp(a) => Ok(Some(LogSession::open(a, queue).await?)),
            Self::Memory(_) => Ok(None),
        }
    }

    /// Starts consuming `queue`, with at most `prefetch` unacknowledged deliveries.
    pub(crate) async fn consume(&self, queue: &str, prefetch: u16) -> Result<Deliveries> {
        match self {
            Self::Memory(b) => Ok(Deliveries::Memory(b.consume(queue)?)),
            Self::Amqp(a) => Ok(Deliveries::Amqp(
                amqp::consume::consume(a, queue, prefetch).await?,
            )),
        }
    }
}

/// A stream of deliveries from one queue.
#[cfg(feature = "service")]
pub(crate) enum Deliveries {
    Amqp(amqp::consume::AmqpDeliveries),
    Memory(memory::MemConsumer),
}

#[cfg(feature = "service")]
impl Deliveries {
    pub(crate) async fn next(&mut self) -> Option<Result<Delivery>> {
        match self {
            Self::Memory(c) => c.next().await.map(Ok),
            Self::Amqp(c) => c.next().await,
        }
    }

    /// Whether the deliveries taken can still be acknowledged.
    pub(crate) fn connected(&self) -> bool {
        match self {
            Self::Memory(_) => true,
            Self::Amqp(c) => c.connected(),
        }
    }

    /// Stops the broker from sending more; deliveries already received stay valid.
    pub(crate) async fn cancel(&mut self) {
        if let Self::Amqp(c) = self {
            c.cancel().await;
        }
    }

    pub(crate) async fn close(self) {
        if let Self::Amqp(c) = self {
            c.close().await;
        }
    }
}

/// Takes messages from a queue one at a time. What is taken and neither acknowledged nor given
/// back returns to the queue when the taker is closed.
#[cfg(feature = "service")]
pub(crate) enum Taker {
    Amqp(amqp::consume::AmqpTaker),
    Memory(MemoryBroker),
}

#[cfg(feature = "service")]
impl Taker {
    /// The next message of `queue`, or `None` when it is empty.
    pub(crate) async fn take(&self, queue: &str) -> Result<Option<Delivery>> {
        match self {
            Self::Amqp(t) => t.take(queue).await,
            Self::Memory(b) => Ok(b.take_one(queue)),
        }
    }

    pub(crate) async fn close(self) {
        if let Self::Amqp(t) = self {
            t.close().await;
        }
    }
}

/// One message taken from a queue, to be settled once through its [`Acker`].
// Without services only the in-memory RPC replies use deliveries.
#[cfg_attr(not(feature = "service"), allow(dead_code))]
pub(crate) struct Delivery {
    pub msg: WireMessage,
    pub redelivered: bool,
    pub acker: Acker,
}

/// Settles one delivery.
#[cfg_attr(not(feature = "service"), allow(dead_code))]
pub(crate) enum Acker {
    #[cfg(feature = "service")]
    Amqp(amqp::consume::AmqpAck),
    Memory(Box<memory::MemAck>),
    /// An event replayed from the event log: the stream keeps it, so settling it only tells
    /// the replay whether its offset is done.
    #[cfg(feature = "service")]
    Replayed(ReplayedAck),
}

#[cfg_attr(not(feature = "service"), allow(dead_code))]
impl Acker {
    pub(crate) async fn ack(self) -> Result<()> {
        match self {
            #[cfg(feature = "service")]
            Self::Amqp(a) => a.ack().await,
            Self::Memory(a) => {
                a.settle(None);
                Ok(())
            }
            #[cfg(feature = "service")]
            Self::Replayed(a) => {
                a.report(true);
                Ok(())
            }
        }
    }

    /// Leaves the message to its channel: it goes back to the queue, in its place, when the
    /// channel closes (a [`Taker`]'s), instead of at once. In memory it goes back at once, to
    /// the head of the queue: leave several in reverse order to keep theirs.
    #[cfg(feature = "service")]
    pub(crate) fn leave(self) {
        match self {
            Self::Amqp(a) => a.leave(),
            Self::Memory(a) => drop(a),
            Self::Replayed(a) => a.report(false),
        }
    }

    /// Gives the message back to the queue, for when it could not be handled or parked safely.
    pub(crate) async fn requeue(self, msg: WireMessage) -> Result<()> {
        match self {
            #[cfg(feature = "service")]
            Self::Amqp(a) => a.requeue().await,
            Self::Memory(a) => {
                a.settle(Some(msg));
                Ok(())
            }
            #[cfg(feature = "service")]
            Self::Replayed(a) => {
                a.report(false);
                Ok(())
            }
        }
    }
}

/// How a replayed event was settled: its offset, and whether it is done (handled, retried
/// or parked) or was given back (it must be read again).
#[cfg(feature = "service")]
pub(crate) type Settled = (u64, bool);

/// The acknowledger of an event replayed from the event log: reports its settlement once,
/// and a given-back one when dropped unsettled (a task aborted at the end of the grace).
#[cfg(feature = "service")]
pub(crate) struct ReplayedAck {
    offset: u64,
    to: Option<tokio::sync::mpsc::UnboundedSender<Settled>>,
}

#[cfg(feature = "service")]
impl ReplayedAck {
    pub(crate) fn new(offset: u64, to: tokio::sync::mpsc::UnboundedSender<Settled>) -> Self {
        Self {
            offset,
            to: Some(to),
        }
    }

    fn report(mut self, done: bool) {
        if let Some(to) = self.to.take() {
            let _ = to.send((self.offset, done));
        }
    }
}

#[cfg(feature = "service")]
impl Drop for ReplayedAck {
    fn drop(&mut self) {
        if let Some(to) = self.to.take() {
            let _ = to.send((self.offset, false));
        }
    }
}
