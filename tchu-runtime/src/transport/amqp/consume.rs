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
    pub(crate) async fn ack(mut self) -> Result<()> {
        self.0
            .take()
            .expect("settled once")
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .map_err(Error::amqp("basic.ack"))
    }

    pub(crate) async fn requeue(mut self) -> Result<()> {
        self.0
            .take()
            .expect("settled once")
            .reject(BasicRejectOptions { requeue: true })
            .await
            .map(drop)
            .map_err(Error::amqp("basic.reject"))
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
                help = "docs/troubleshooting.md#dispatch-bug",
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
