//! The two transports behind one enum: RabbitMQ through lapin, and the in-memory broker.
//!
//! Everything above this module speaks [`WireMessage`]; only here do lapin types appear.

use crate::amqp_conv;
use crate::error::{Error, Result, redact_url};
use crate::memory::{MemConsumer, MemoryBroker};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Confirmation, Connection, ConnectionProperties, ExchangeKind};
use std::sync::Arc;
use tchu_core::envelope::WireMessage;
use tracing::warn;

/// The topic exchange every tchu and tchu-tchu service shares.
pub const EXCHANGE: &str = "tchu_events";

#[derive(Clone)]
pub(crate) enum Transport {
    Amqp(Arc<Amqp>),
    Memory(MemoryBroker),
}

pub(crate) struct Amqp {
    pub(crate) conn: Connection,
    /// One confirm-mode channel shared by all publishes of a client: lapin multiplexes
    /// concurrent publishes on it and resolves each confirm separately.
    publisher: lapin::Channel,
    pub(crate) url: String,
}

fn short(s: &str, what: &str) -> Result<ShortString> {
    ShortString::try_new(s)
        .map_err(|_| Error::Config(format!("{what} `{s}` is longer than 255 bytes")))
}

impl Amqp {
    pub(crate) async fn connect(url: &str, name: &str) -> Result<Self> {
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from(format!("tchu:{name}")));
        let conn = Connection::connect(url, props)
            .await
            .map_err(|source| Error::Connect {
                url: redact_url(url),
                source,
            })?;
        let publisher = conn
            .create_channel()
            .await
            .map_err(Error::amqp("channel.open"))?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(Error::amqp("confirm.select"))?;
        declare_exchange(&publisher).await?;
        Ok(Self {
            conn,
            publisher,
            url: redact_url(url),
        })
    }

    pub(crate) async fn close(&self) {
        let _ = self.conn.close(200, "tchu client closed".into()).await;
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

/// The queues and bindings one service needs.
#[derive(Debug, Clone)]
pub(crate) struct Topology {
    pub queue: String,
    pub dead_letter_queue: String,
    /// Binding keys on [`EXCHANGE`], the queue's own name first (as Celery binds it).
    pub bindings: Vec<String>,
    /// Retry delay tiers: `(queue name, TTL in ms)`, each dead-lettering back to `queue`.
    pub delay_queues: Vec<(String, u64)>,
}

impl Transport {
    /// Publishes and waits for the broker's confirm. With `mandatory`, a message no queue
    /// takes is an [`Error::Unroutable`].
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        msg: &WireMessage,
        mandatory: bool,
    ) -> Result<()> {
        match self {
            Transport::Memory(b) => b.publish(exchange, msg, mandatory),
            Transport::Amqp(a) => publish_confirmed(&a.publisher, exchange, msg, mandatory).await,
        }
    }

    /// Publishes without waiting for the confirm: for RPC replies, which are transient and
    /// whose loss the caller's deadline already covers; waiting would add a round trip to
    /// every call.
    pub(crate) async fn send_unconfirmed(&self, exchange: &str, msg: &WireMessage) -> Result<()> {
        match self {
            Transport::Memory(b) => b.publish(exchange, msg, false),
            Transport::Amqp(a) => {
                let confirm = a
                    .publisher
                    .basic_publish(
                        short(exchange, "exchange")?,
                        short(&msg.routing_key, "routing key")?,
                        BasicPublishOptions::default(),
                        &msg.body,
                        amqp_conv::to_properties(msg),
                    )
                    .await
                    .map_err(Error::amqp("basic.publish"))?;
                // Awaited off the caller's path: a dropped confirm future would stay in
                // lapin's bookkeeping for the channel's lifetime.
                tokio::spawn(async move {
                    if let Ok(lapin::Confirmation::Nack(_)) = confirm.await {
                        warn!("the broker refused an RPC reply; the caller will time out");
                    }
                });
                Ok(())
            }
        }
    }

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
                let ch = a
                    .conn
                    .create_channel()
                    .await
                    .map_err(Error::amqp("channel.open"))?;
                declare_exchange(&ch).await?;
                // Durable, no arguments: the shape tchu-tchu gives its service queues, so a
                // Python process re-declaring it never meets a 406.
                let durable = QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                for q in [&topo.queue, &topo.dead_letter_queue] {
                    ch.queue_declare(short(q, "queue name")?, durable, FieldTable::default())
                        .await
                        .map_err(Error::amqp("queue.declare"))?;
                }
                for (name, ttl) in &topo.delay_queues {
                    // Plain TTL + dead-letter queues: no plugin, RabbitMQ 3.x and 4.x alike. One
                    // TTL per queue keeps expiry in FIFO order.
                    let mut args = FieldTable::default();
                    args.insert(
                        "x-message-ttl".into(),
                        AMQPValue::LongInt(i32::try_from(*ttl).unwrap_or(i32::MAX)),
                    );
                    args.insert(
                        "x-dead-letter-exchange".into(),
                        AMQPValue::LongString("".into()),
                    );
                    args.insert(
                        "x-dead-letter-routing-key".into(),
                        AMQPValue::LongString(topo.queue.as_str().into()),
                    );
                    ch.queue_declare(short(name, "queue name")?, durable, args)
                        .await
                        .map_err(Error::amqp("queue.declare (delay tier)"))?;
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
        }
    }

    pub(crate) async fn consume(&self, queue: &str, prefetch: u16) -> Result<Deliveries> {
        match self {
            Transport::Memory(b) => Ok(Deliveries::Memory(b.consume(queue)?)),
            Transport::Amqp(a) => {
                let ch = a
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
        }
    }
}

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

impl Deliveries {
    pub(crate) async fn next(&mut self) -> Option<Result<Delivery>> {
        match self {
            Deliveries::Memory(c) => c.next().await.map(Ok),
            Deliveries::Amqp { consumer, .. } => {
                let d = consumer.next().await?;
                Some(d.map_err(Error::amqp("basic.deliver")).map(|d| Delivery {
                    msg: amqp_conv::from_delivery(d.routing_key.as_str(), &d.properties, d.data),
                    redelivered: d.redelivered,
                    acker: Acker::Amqp(d.acker),
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

pub(crate) struct Delivery {
    pub msg: WireMessage,
    pub redelivered: bool,
    pub acker: Acker,
}

pub(crate) enum Acker {
    Amqp(lapin::Acker),
    Memory(Box<crate::memory::MemAck>),
}

impl Acker {
    pub(crate) async fn ack(self) -> Result<()> {
        match self {
            Acker::Amqp(a) => a
                .ack(BasicAckOptions::default())
                .await
                .map(drop)
                .map_err(Error::amqp("basic.ack")),
            Acker::Memory(a) => {
                a.settle(None);
                Ok(())
            }
        }
    }

    /// Gives the message back to the queue, for when it could not be handled or parked safely.
    pub(crate) async fn requeue(self, msg: WireMessage) -> Result<()> {
        match self {
            Acker::Amqp(a) => a
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .map(drop)
                .map_err(Error::amqp("basic.nack")),
            Acker::Memory(a) => {
                a.settle(Some(msg));
                Ok(())
            }
        }
    }
}
