//! The delay route on RabbitMQ (see [`tchu_core::delay`]): one headers exchange and one TTL
//! queue per level, each dead-lettering to the level below and the last to `tchu_events`.

use super::connection::{Live, declare_exchange};
use super::{Amqp, short};
use crate::error::{Error, Result};
use crate::transport::EXCHANGE;
use lapin::ExchangeKind;
use lapin::options::QueueDeclareOptions;
use lapin::options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable};
use tchu_core::delay::{LEVELS, level_header, level_name, level_ttl_ms};

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
    for b in 0..LEVELS {
        declare_level(&ch, b).await?;
    }
    let _ = ch.close(200, "delay levels declared".into()).await;
    Ok(())
}

/// Level `b`: its exchange, its queue (waits `2^b` ms, then on to the level below), the
/// binding for messages that wait here and the one for messages that pass on at once.
async fn declare_level(ch: &lapin::Channel, b: u32) -> Result<()> {
    let name = level_name(b);
    let next = if b == 0 {
        EXCHANGE.to_owned()
    } else {
        level_name(b - 1)
    };
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        short(&name, "exchange")?,
        ExchangeKind::Headers,
        durable,
        FieldTable::default(),
    )
    .await
    .map_err(Error::amqp("exchange.declare"))?;
    let mut args = FieldTable::default();
    let ttl = i64::try_from(level_ttl_ms(b)).unwrap_or(i64::MAX);
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(next.as_str().into()),
    );
    let queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(short(&name, "queue")?, queue, args)
        .await
        .map_err(Error::amqp("queue.declare"))?;
    ch.queue_bind(
        short(&name, "queue")?,
        short(&name, "exchange")?,
        "".into(),
        QueueBindOptions::default(),
        matching(b, "1"),
    )
    .await
    .map_err(Error::amqp("queue.bind"))?;
    ch.exchange_bind(
        short(&next, "exchange")?,
        short(&name, "exchange")?,
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
