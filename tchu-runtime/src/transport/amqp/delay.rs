//! The delay route on RabbitMQ (see [`tchu_core::delay`]): one headers exchange and one TTL
//! queue per level, each dead-lettering to the level below and the last to `tchu_events`.

use super::connection::{Live, declare_exchange, declare_spec_exchange};
use super::convert::map_to_table;
use super::{Amqp, short};
use crate::error::{Error, Result};
use crate::transport::spec::{DelayLevel, delay_route};
use lapin::options::QueueDeclareOptions;
use lapin::options::{ExchangeBindOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable};
use tchu_core::delay::level_header;

/// Declares every level (idempotent: the same names and arguments each time).
pub(crate) async fn declare_levels(amqp: &Amqp) -> Result<()> {
    let live = amqp.live_now().await?;
    let result = declare_on(&live).await;
    amqp.after_failure(&live, &result);
    result
}

async fn declare_on(live: &Live) -> Result<()> {
    let ch = live.channel().await?;
    declare_exchange(&ch).await?;
    for level in delay_route() {
        declare_level(&ch, &level).await?;
    }
    let _ = ch.close(200, "delay levels declared".into()).await;
    Ok(())
}

/// One level as [`DelayLevel`] describes it: its exchange, its queue, the binding for messages
/// that wait here and the one for messages that pass on at once.
pub(super) async fn declare_level(ch: &lapin::Channel, level: &DelayLevel) -> Result<()> {
    let (name, b) = (&level.name, level.level);
    declare_spec_exchange(ch, &level.exchange()).await?;
    let queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let args = map_to_table(&level.queue_arguments());
    ch.queue_declare(short(name, "queue")?, queue, args)
        .await
        .map_err(Error::amqp("queue.declare"))?;
    ch.queue_bind(
        short(name, "queue")?,
        short(name, "exchange")?,
        "".into(),
        QueueBindOptions::default(),
        matching(b, "1"),
    )
    .await
    .map_err(Error::amqp("queue.bind"))?;
    ch.exchange_bind(
        short(&level.next, "exchange")?,
        short(name, "exchange")?,
        "".into(),
        ExchangeBindOptions::default(),
        matching(b, "0"),
    )
    .await
    .map_err(Error::amqp("exchange.bind"))
}

/// Headers-exchange arguments matching messages whose level-`b` header is `value`.
fn matching(b: u32, value: &str) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-match".into(), AMQPValue::LongString("all".into()));
    t.insert(
        level_header(b).as_str().into(),
        AMQPValue::LongString(value.into()),
    );
    t
}
