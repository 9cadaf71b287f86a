//! Catching up from the event log (`--only replay`, `--replay N` events, default 50000): a
//! service started with `Service::replay_from("first")` (the log read with stream offsets and
//! flow control, each event decoded and dispatched to a handler that counts it; timed from
//! `start` until it turns from `Replaying` to `Consuming`) next to raw lapin reading the same
//! stream (a stream consumer with the same prefetch of 256, acknowledging half a prefetch at
//! once as tchu's reader does, and nothing else), taking turns. A last line shows raw lapin
//! acknowledging each event, a naive consumer. The stream is the section's own, deleted at its
//! end.

use super::*;
use lapin::types::AMQPValue;
use std::sync::atomic::{AtomicU64, Ordering};

#[tchu::event(topic = "bench.replay.tick")]
struct Logged {
    seq: u64,
    payload: String,
}

static HANDLED: AtomicU64 = AtomicU64::new(0);

/// What both sides read with.
const PREFETCH: u16 = 256;

/// Declares the section's stream, bound to its topic on tchu_events.
async fn declare_log(ch: &Channel, log: &str) {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(log.into(), durable, args).await.unwrap();
    let key = "bench.replay.#";
    let bind = QueueBindOptions::default();
    (ch.queue_bind(
        log.into(),
        tchu::EXCHANGE.into(),
        key.into(),
        bind,
        FieldTable::default(),
    ))
    .await
    .unwrap();
}

/// Publishes `n` events into the log, confirmed.
async fn fill(client: &tchu::Client, n: usize) {
    let payload = payload();
    for first in (0..n).step_by(1000) {
        let batch: Vec<Logged> = (first..(first + 1000).min(n))
            .map(|seq| Logged {
                seq: seq as u64,
                payload: payload.clone(),
            })
            .collect();
        for r in client.publish_all(&batch).await {
            r.expect("publish");
        }
    }
}

/// A service replaying the whole log: events per second and CPU µs per event.
async fn tchu_replay(b: &Bench, log: &str, n: usize) -> (f64, f64) {
    let queue = format!("bench_replay_{}", uuid::Uuid::new_v4().simple());
    HANDLED.store(0, Ordering::SeqCst);
    let handler = tchu::Handler::on(|_e: Logged| async {
        HANDLED.fetch_add(1, Ordering::Relaxed);
    });
    let service = tchu::Service::new(&queue)
        .handlers_in("no::attribute::handlers")
        .handler(handler)
        .prefetch(PREFETCH)
        .replay_from("first")
        .event_log(log);
    let (cpu, started) = (cpu_seconds(), Instant::now());
    let handle = service.start(&b.client).await.expect("start");
    let mut state = handle.watch_state();
    let live = state.wait_for(|s| *s == tchu::ServiceState::Consuming);
    let done = bounded("the replay", 600, live).await;
    done.expect("state");
    let took = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    handle.shutdown().await.expect("shutdown");
    assert_eq!(
        HANDLED.load(Ordering::SeqCst),
        n as u64,
        "every event handled"
    );
    let mut names = vec![
        queue.clone(),
        format!("{queue}.dlq"),
        format!("{queue}.quarantine"),
        format!("{queue}.replay"),
    ];
    names.extend((tchu::retry::DELAY_TIERS_MS.iter()).map(|t| format!("{queue}.delay.{t}ms")));
    for name in names {
        let delete = b
            .setup
            .queue_delete(name.as_str().into(), Default::default());
        let _ = delete.await;
    }
    (n as f64 / took, cpu * 1e6 / n as f64)
}

/// Raw lapin reading the stream from its first event until it has all `n`, acknowledging
/// each, or with `batched` half a prefetch at once.
async fn lapin_replay(b: &Bench, log: &str, n: usize, batched: bool) -> (f64, f64) {
    let (cpu, started) = (cpu_seconds(), Instant::now());
    let ch = b.conn.create_channel().await.unwrap();
    (ch.basic_qos(PREFETCH, Default::default())).await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let options = BasicConsumeOptions::default();
    let consume = ch.basic_consume(log.into(), "bench-replay".into(), options, args);
    let mut consumer = consume.await.unwrap();
    let every = usize::from(PREFETCH / 2);
    for read in 1..=n {
        let d = consumer
            .next()
            .await
            .expect("a delivery")
            .expect("delivered");
        if !batched {
            d.ack(BasicAckOptions::default()).await.unwrap();
        } else if read % every == 0 || read == n {
            d.ack(BasicAckOptions { multiple: true }).await.unwrap();
        }
    }
    let took = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    let _ = ch.close(200, "read".into()).await;
    (n as f64 / took, cpu * 1e6 / n as f64)
}

pub(crate) async fn replay_section(b: &Bench) {
    let n = b.o.replay;
    let log = format!("bench_replay_{}.log", uuid::Uuid::new_v4().simple());
    declare_log(&b.setup, &log).await;
    fill(&b.client, n).await;
    let (mut rate, mut cpu, mut each) = (Pair::default(), Pair::default(), Pair::default());
    for run in 0..b.o.runs {
        eprintln!("replay run {}/{}", run + 1, b.o.runs);
        let (t, t_cpu) = tchu_replay(b, &log, n).await;
        let (l, l_cpu) = lapin_replay(b, &log, n, true).await;
        let (e, e_cpu) = lapin_replay(b, &log, n, false).await;
        rate.push(t, l);
        cpu.push(t_cpu, l_cpu);
        each.push(e, e_cpu);
    }
    println!(
        "\nmedians of {} runs; {n} events in the log, prefetch {PREFETCH}; tchu: \
         Service::replay_from(\"first\"), a handler that counts; raw lapin: a stream consumer, \
         ack per half prefetch\n",
        b.o.runs
    );
    table_head();
    rate.row("catching up from the event log", "events/s");
    cpu.row_cpu("CPU time per event replayed");
    let (naive, naive_cpu) = each.medians();
    println!(
        "\nraw lapin acknowledging each event: {naive:.1} events/s, {naive_cpu:.1} µs CPU per \
         event"
    );
    let _ = b
        .setup
        .queue_delete(log.as_str().into(), QueueDeleteOptions::default())
        .await;
}
