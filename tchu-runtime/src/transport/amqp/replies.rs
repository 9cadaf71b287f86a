//! The caller's end of RPC on RabbitMQ: direct reply-to (`amq.rabbitmq.reply-to`), so no reply
//! queue is declared. The broker requires the request to go out on the channel that consumes
//! the replies, so that channel publishes requests too, with confirms.

use super::Amqp;
use super::connection::confirm_channel;
use crate::error::{Error, Result};
use crate::transport::{IncomingReply, ReplyEndpoint, ReplySender, ReplyStream};
use futures_lite::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use tchu_core::envelope::WireMessage;
use tokio::time::Instant;

/// RabbitMQ's direct reply-to pseudo-queue.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Opens the reply consumer on the current connection, waiting for one until `deadline`.
pub(crate) async fn open(amqp: &Amqp, deadline: Instant) -> Result<ReplyEndpoint> {
    let live = amqp.live(deadline).await?;
    let channel = confirm_channel(&live.conn).await?;
    let tag = format!("tchu-replies-{}", uuid::Uuid::new_v4());
    let consumer = channel
        .basic_consume(
            DIRECT_REPLY_TO.into(),
            tag.as_str().into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(Error::amqp("basic.consume amq.rabbitmq.reply-to"))?;
    Ok(ReplyEndpoint {
        reply_to: DIRECT_REPLY_TO.to_owned(),
        generation: live.generation,
        sender: ReplySender::Amqp(RequestChannel(channel)),
        stream: ReplyStream::Amqp(ReplyConsumer(consumer)),
    })
}

/// The channel that consumes the replies, in confirm mode: requests go out on it.
pub(crate) struct RequestChannel(lapin::Channel);

impl RequestChannel {
    /// Publishes a request, mandatory and confirmed.
    pub(crate) async fn send(&self, exchange: &str, msg: &WireMessage) -> Result<()> {
        super::publish::publish_confirmed(&self.0, exchange, msg, true).await
    }
}

/// The consumer of direct replies (no acknowledgements: the pseudo-queue takes none).
pub(crate) struct ReplyConsumer(lapin::Consumer);

impl ReplyConsumer {
    /// The next reply, or why the consumer ended.
    pub(crate) async fn next(&mut self) -> Option<Result<IncomingReply>> {
        let d = self.0.next().await?;
        Some(
            d.map_err(Error::amqp("basic.deliver amq.rabbitmq.reply-to"))
                .map(|d| IncomingReply {
                    correlation_id: d
                        .properties
                        .correlation_id()
                        .as_ref()
                        .map(|c| c.as_str().to_owned()),
                    body: d.data,
                }),
        )
    }
}
