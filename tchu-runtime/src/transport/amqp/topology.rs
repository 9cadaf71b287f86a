//! Declaring a service's exchange, queues and bindings, and removing stale bindings.

use super::connection::{Live, declare_exchange};
use super::{Amqp, channel_refused, short};
use crate::error::{Error, Result};
use crate::transport::EXCHANGE;
use crate::transport::spec::{Topology, TopologyPart};
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

/// Declares everything `topo` needs on one channel.
pub(crate) async fn declare(amqp: &Amqp, topo: &Topology) -> Result<()> {
    let live = amqp.live_now().await?;
    let result = declare_on(&live, topo).await;
    amqp.after_failure(&live, &result);
    result
}

async fn declare_on(live: &Live, topo: &Topology) -> Result<()> {
    let mut ch = live.channel().await?;
    declare_exchange(&ch).await?;
    for spec in topo.queues() {
        ch = ensure_queue(live, ch, &spec.name, &spec.arguments).await?;
    }
    for key in &topo.bindings {
        bind(&ch, &topo.queue, key).await?;
    }
    if let Some(o) = &topo.ordered {
        for key in &o.bindings {
            bind(&ch, &o.name, key).await?;
        }
    }
    let _ = ch.close(200, "topology declared".into()).await;
    Ok(())
}

/// Declares only the given parts of `topo` (`check --fix`): each on its own channel, so a
/// refusal (a queue that exists with other arguments answers 406) costs that part alone.
/// Returns the parts that failed, with why.
pub(crate) async fn declare_parts(
    amqp: &Amqp,
    topo: &Topology,
    parts: &[TopologyPart],
) -> Result<Vec<(TopologyPart, Error)>> {
    let live = amqp.live_now().await?;
    let mut failed = Vec::new();
    for part in parts {
        if let Err(e) = declare_part(&live, topo, part).await {
            failed.push((part.clone(), e));
        }
    }
    Ok(failed)
}

async fn declare_part(live: &Live, topo: &Topology, part: &TopologyPart) -> Result<()> {
    let ch = live.channel().await?;
    match part {
        TopologyPart::Exchange => declare_exchange(&ch).await?,
        TopologyPart::Queue(name) => {
            let spec = topo.queue_spec(name);
            declare_queue(&ch, &spec.name, &spec.arguments).await?;
        }
        TopologyPart::Binding(key) => bind(&ch, &topo.queue, key).await?,
        TopologyPart::DelayLevel(b) => {
            let route = crate::transport::spec::delay_route();
            if let Some(level) = route.get(*b as usize) {
                super::delay::declare_level(&ch, level).await?;
            }
        }
    }
    let _ = ch.close(200, "declared".into()).await;
    Ok(())
}

/// Removes bindings of `queue` on [`EXCHANGE`] (`check --fix` for stale ones).
pub(crate) async fn unbind(amqp: &Amqp, queue: &str, keys: &[String]) -> Result<()> {
    let live = amqp.live_now().await?;
    let ch = live.channel().await?;
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

async fn bind(ch: &lapin::Channel, queue: &str, key: &str) -> Result<()> {
    ch.queue_bind(
        short(queue, "queue name")?,
        EXCHANGE.into(),
        short(key, "binding key")?,
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(Error::amqp("queue.bind"))
}

/// Declares a queue only if it is missing: a passive declaration first (it needs no majority
/// on a RabbitMQ 4 cluster, and it does not fail on a queue declared earlier with other
/// arguments), then an active one. The passive declaration of a missing queue closes its
/// channel: the channel to go on with is returned.
async fn ensure_queue(
    live: &Live,
    ch: lapin::Channel,
    name: &str,
    arguments: &serde_json::Map<String, serde_json::Value>,
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
            let ch = live.channel().await?;
            declare_queue(&ch, name, arguments).await?;
            Ok(ch)
        }
        Err(e) => Err(Error::amqp("queue.declare")(e)),
    }
}

async fn declare_queue(
    ch: &lapin::Channel,
    name: &str,
    arguments: &serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let arguments = super::convert::map_to_table(arguments);
    ch.queue_declare(short(name, "queue name")?, durable, arguments)
        .await
        .map(drop)
        .map_err(Error::amqp("queue.declare"))
}

/// How many messages wait in `queue` and how many consumers it has: a passive declaration on
/// a channel of its own (closed after), so no management plugin is needed.
pub(crate) async fn depth(amqp: &Amqp, queue: &str) -> Result<(u32, u32)> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let live = amqp.live(deadline).await?;
    let ch = live.channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(short(queue, "queue name")?, passive, FieldTable::default())
        .await
        .map_err(Error::amqp("queue.declare"));
    let _ = ch.close(200, "depth read".into()).await;
    let q = q?;
    Ok((q.message_count(), q.consumer_count()))
}
