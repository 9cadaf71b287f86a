//! Consuming a service queue, and settling each delivery.

use super::{Amqp, short};
use crate::error::{Error, Result};
use crate::transport::Delivery;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use std::time::Duration;

/// A consumer on one queue, on a channel of its own.
pub(crate) struct AmqpDeliveries {
    channel: lapin::Channel,
    // Boxed: lapin's consumer is large and the stream lives in the service loop.
    consumer: Box<lapin::Consumer>,
    tag: String,
}

/// Starts consuming `queue` with `prefetch` unacknowledged deliveries at most.
pub(crate) async fn consume(amqp: &Amqp, queue: &str, prefetch: u16) -> Result<AmqpDeliveries> {
    let live = amqp.live_now().await?;
    let result = async {
        let channel = live.channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(Error::amqp("basic.qos"))?;
        let tag = format!("tchu-{}", uuid::Uuid::new_v4());
        let consumer = channel
            .basic_consume(
                short(queue, "queue name")?,
                short(&tag, "consumer tag")?,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(Error::amqp("basic.consume"))?;
        Ok(AmqpDeliveries {
            channel,
            consumer: Box::new(consumer),
            tag,
        })
    }
    .await;
    amqp.after_failure(&live, &result);
    result
}

impl AmqpDeliveries {
    pub(crate) async fn next(&mut self) -> Option<Result<Delivery>> {
        let d = self.consumer.next().await?;
        Some(d.map_err(Error::amqp("basic.deliver")).map(|d| Delivery {
            msg: super::convert::from_delivery(d.routing_key.as_str(), &d.properties, d.data),
            redelivered: d.redelivered,
            acker: crate::transport::Acker::Amqp(AmqpAck(Some(d.acker))),
        }))
    }

    /// Whether the channel is still open (its deliveries can still be acknowledged).
    pub(crate) fn connected(&self) -> bool {
        self.channel.status().connected()
    }

    /// Stops the broker from sending more; deliveries already received stay valid.
    pub(crate) async fn cancel(&mut self) {
        let _ = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }

    pub(crate) async fn close(self) {
        let _ = self.channel.close(200, "tchu service stopped".into()).await;
    }
}

/// Takes messages one at a time (`basic.get`), on a channel of its own: a message taken is the
/// only one this channel holds unacknowledged.
pub(crate) struct AmqpTaker {
    channel: lapin::Channel,
}

/// A channel to take messages from, one at a time.
pub(crate) async fn taker(amqp: &Amqp) -> Result<AmqpTaker> {
    let live = amqp.live_now().await?;
    let result = live.channel().await;
    amqp.after_failure(&live, &result);
    Ok(AmqpTaker { channel: result? })
}

impl AmqpTaker {
    /// The next message of `queue`, or `None` when it is empty.
    pub(crate) async fn take(&self, queue: &str) -> Result<Option<Delivery>> {
        let got = self
            .channel
            .basic_get(short(queue, "queue name")?, BasicGetOptions::default())
            .await
            .map_err(Error::amqp("basic.get"))?;
        Ok(got.map(|m| {
            let d = m.delivery;
            Delivery {
                msg: super::convert::from_delivery(d.routing_key.as_str(), &d.properties, d.data),
                redelivered: d.redelivered,
                acker: crate::transport::Acker::Amqp(AmqpAck(Some(d.acker))),
            }
        }))
    }

    pub(crate) async fn close(self) {
        let _ = self.channel.close(200, "taken".into()).await;
    }
}

/// A delivery's acknowledger that gives the message back if it is dropped unsettled: a panic
/// in tchu's own dispatch code (outside the handler, whose panics are caught) then costs a
/// redelivery after a pause, never a message stuck unacknowledged until the channel closes.
pub(crate) struct AmqpAck(Option<lapin::Acker>);

impl AmqpAck {
    /// Leaves the delivery unsettled on its channel, which gives it back when it closes.
    pub(crate) fn leave(mut self) {
        self.0 = None;
    }

    pub(crate) async fn ack(mut self) -> Result<()> {
        let acker = self.0.take().expect("settled once");
        let settle = acker.ack(BasicAckOptions::default());
        until_poisoned("basic.ack", &acker, settle).await
    }

    pub(crate) async fn requeue(mut self) -> Result<()> {
        let acker = self.0.take().expect("settled once");
        let settle = acker.reject(BasicRejectOptions { requeue: true });
        until_poisoned("basic.reject", &acker, settle).await
    }
}

/// How often a settlement still pending looks whether its channel died.
const POISON_CHECK: Duration = Duration::from_millis(500);

/// Waits for a settlement until it is sent or its channel is closed. Measured: lapin 4.12 can
/// leave one pending for good when the connection dies as it is sent (a broker restart
/// mid-stream: the command queues behind the stop of lapin's internal task, which nobody reads
/// again), and a task that never ends holds up everything that waits for the running ones (the
/// quarantine, the shutdown grace). No fixed timeout: a connection the broker blocked (a
/// memory alarm) writes nothing for as long as it lasts, and the settlement must wait for it.
async fn until_poisoned(
    op: &'static str,
    acker: &lapin::Acker,
    settle: impl std::future::Future<Output = lapin::Result<bool>>,
) -> Result<()> {
    let closed = async {
        while !acker.poisoned() {
            tokio::time::sleep(POISON_CHECK).await;
        }
    };
    tokio::select! {
        settled = settle => match settled {
            Ok(true) => Ok(()),
            // Not sent: the channel was already closed.
            Ok(false) => Err(Error::Unsettled { op }),
            Err(e) => Err(Error::Amqp { op, source: e.into() }),
        },
        () = closed => Err(Error::Unsettled { op }),
    }
}

impl Drop for AmqpAck {
    fn drop(&mut self) {
        let Some(acker) = self.0.take() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if std::thread::panicking() {
            tracing::error!(
                help = "tchu::troubleshooting#dispatch-bug",
                "a delivery was dropped unsettled by a panic in tchu's dispatch (a bug); \
                 giving it back to the queue in a second"
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

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    /// A delivery taken from a fresh exclusive queue on the real broker, with its channel.
    async fn taken() -> (Connection, lapin::Channel, lapin::Acker) {
        let url = std::env::var(crate::BROKER_URL_ENV)
            .unwrap_or_else(|_| crate::DEFAULT_BROKER_URL.into());
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("RabbitMQ on 127.0.0.1:5672 (see README)");
        let channel = conn.create_channel().await.unwrap();
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare("".into(), exclusive, FieldTable::default())
            .await
            .unwrap();
        channel
            .basic_publish(
                "".into(),
                queue.name().as_str().into(),
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default(),
            )
            .await
            .unwrap();
        let got = loop {
            let get = channel.basic_get(queue.name().as_str().into(), BasicGetOptions::default());
            if let Some(m) = get.await.unwrap() {
                break m;
            }
        };
        (conn, channel, got.delivery.acker)
    }

    #[tokio::test]
    async fn a_settlement_left_pending_ends_when_its_channel_closes() {
        let (_conn, channel, acker) = taken().await;
        channel.close(200, "gone".into()).await.unwrap();
        // What lapin 4.12 does to a settlement queued as the connection dies: nothing, ever.
        let never = std::future::pending::<lapin::Result<bool>>();
        let ended =
            tokio::time::timeout(POISON_CHECK * 4, until_poisoned("basic.ack", &acker, never));
        let outcome = ended.await.expect("ended once the channel closed");
        assert!(matches!(outcome, Err(Error::Unsettled { op: "basic.ack" })));
    }

    #[tokio::test]
    async fn an_acknowledgement_on_a_closed_channel_is_an_error_not_a_success() {
        let (_conn, channel, acker) = taken().await;
        channel.close(200, "gone".into()).await.unwrap();
        // lapin answers `Ok(false)`: nothing was sent, the broker will redeliver.
        let outcome = AmqpAck(Some(acker)).ack().await;
        assert!(matches!(outcome, Err(Error::Unsettled { op: "basic.ack" })));
    }
}
