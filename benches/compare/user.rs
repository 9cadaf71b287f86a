//! The user-shaped section (`--only user`): what a user's code does, the way issue 29's outside
//! harness does it. `init_tracing` is on (as `run!()` installs it), each event is a task of its
//! own with 256 in flight (a semaphore), published with `Client::publish` to a typed handler,
//! prefetch 64, acknowledged. The raw side publishes plain JSON, the least a raw program
//! sends, for both formats. It runs last: the tracing subscriber stays installed.

use super::*;
use std::sync::atomic::{AtomicU64, Ordering};

#[tchu::event(topic = "bench.user.v2")]
struct UserV2 {
    seq: u64,
    payload: String,
}

#[tchu::event(topic = "bench.user.native")]
struct UserNative {
    seq: u64,
    payload: String,
}

#[derive(Default)]
struct Counts {
    v2: AtomicU64,
    native: AtomicU64,
}

mod handlers {
    use super::*;
    #[tchu::subscribe]
    async fn v2(_e: UserV2, c: tchu::State<Counts>) {
        c.v2.fetch_add(1, Ordering::Relaxed);
    }
    #[tchu::subscribe]
    async fn native(_e: UserNative, c: tchu::State<Counts>) {
        c.native.fetch_add(1, Ordering::Relaxed);
    }
}

/// `n` events, a task each, `WINDOW` in flight; events per second until `done()` reaches
/// `target`.
async fn task_per_event<E: tchu::Event + Send + Sync + 'static>(
    client: &tchu::Client,
    n: usize,
    make: fn(u64) -> E,
    done: impl Fn() -> u64,
    target: u64,
) -> f64 {
    let permits = Arc::new(tokio::sync::Semaphore::new(WINDOW));
    let started = Instant::now();
    for seq in 0..n as u64 {
        let permit = permits.clone().acquire_owned().await.expect("open");
        let client = client.clone();
        tokio::spawn(async move {
            client.publish(&make(seq)).await.expect("publish");
            drop(permit);
        });
    }
    let _all = permits.acquire_many(WINDOW as u32).await.expect("open");
    let deadline = Instant::now() + Duration::from_secs(300);
    while done() < target {
        assert!(Instant::now() < deadline, "user-shaped run stalled");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn v2(seq: u64) -> UserV2 {
    UserV2 {
        seq,
        payload: payload(),
    }
}

fn native(seq: u64) -> UserNative {
    UserNative {
        seq,
        payload: payload(),
    }
}

#[derive(Default)]
struct Figures {
    v2: Pair,
    v2_cpu: Pair,
    native: Pair,
    native_cpu: Pair,
    /// The native run against a raw side that hands lapin half a window at once.
    batched: Pair,
    batched_cpu: Pair,
}

/// Raw lapin at its best: `n` publishes of `message` to `key`, half a window of them handed to
/// lapin at once (each queues its frames when first polled, so they go out in a few writes),
/// `WINDOW` confirms in flight, every one acked.
async fn lapin_batched(ch: &Channel, key: &str, n: usize, message: &(Vec<u8>, BasicProperties)) {
    let (body, props) = message;
    let chunk = WINDOW / 2;
    let mut pending = std::collections::VecDeque::with_capacity(WINDOW);
    let mut left = n;
    while left > 0 {
        let take = left.min(chunk);
        left -= take;
        let mut sending: Vec<_> = (0..take)
            .map(|_| {
                Box::pin(ch.basic_publish(
                    "tchu_events".into(),
                    key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body,
                    props.clone(),
                ))
            })
            .collect();
        let mut sent = Vec::with_capacity(take);
        // Polled in order the first time: the frames are queued in order.
        std::future::poll_fn(|cx| {
            let mut i = 0;
            while i < sending.len() {
                match sending[i].as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => {
                        drop(sending.remove(i));
                        sent.push(r.expect("publish"));
                    }
                    std::task::Poll::Pending => i += 1,
                }
            }
            if sending.is_empty() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        pending.extend(sent);
        while pending.len() > WINDOW - chunk {
            let c = bounded("raw confirm", 60, pending.pop_front().expect("one")).await;
            assert!(matches!(c.expect("confirm"), Confirmation::Ack(None)));
        }
    }
    for c in pending {
        let c = bounded("raw confirm", 60, c).await;
        assert!(matches!(c.expect("confirm"), Confirmation::Ack(None)));
    }
}

async fn runs(b: &Bench, counts: &Counts, raw: &AtomicU64, f: &mut Figures) {
    let (n, json) = (b.o.e2e, plain_json());
    let raw_done = || raw.load(Ordering::Relaxed);
    let raw_run = |base: u64| {
        let json = json.clone();
        async move {
            let key = ("bench.raw.user", &json);
            lapin_e2e(&b.pub_ch, key, n, raw_done, base + n as u64).await
        }
    };
    let done = || counts.v2.load(Ordering::Relaxed);
    let t = with_cpu(n, task_per_event(&b.client, n, v2, done, done() + n as u64)).await;
    let l = with_cpu(n, raw_run(raw_done())).await;
    f.v2.push(t.0, l.0);
    f.v2_cpu.push(t.1, l.1);
    let native_client = b.client.with_format(tchu::Format::Native);
    let done = || counts.native.load(Ordering::Relaxed);
    let target = done() + n as u64;
    let t = with_cpu(n, task_per_event(&native_client, n, native, done, target)).await;
    let l = with_cpu(n, raw_run(raw_done())).await;
    f.native.push(t.0, l.0);
    f.native_cpu.push(t.1, l.1);
    let target = raw_done() + n as u64;
    let batched = async {
        let started = Instant::now();
        lapin_batched(&b.pub_ch, "bench.raw.user", n, &json).await;
        let deadline = Instant::now() + Duration::from_secs(300);
        while raw_done() < target {
            assert!(Instant::now() < deadline, "raw batched run stalled");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        n as f64 / started.elapsed().as_secs_f64()
    };
    let l = with_cpu(n, batched).await;
    f.batched.push(t.0, l.0);
    f.batched_cpu.push(t.1, l.1);
}

pub(crate) async fn user_section(b: &Bench) {
    tchu::init_tracing();
    let counts = Arc::new(Counts::default());
    let service = tchu::Service::new("bench_user")
        .handlers_in(concat!(module_path!(), "::handlers"))
        .state_arc(counts.clone())
        .prefetch(64)
        .start(&b.client)
        .await
        .unwrap();
    let raw = raw_sink(&b.conn, "bench_raw_user", "bench.raw.user").await;
    let mut f = Figures::default();
    for run in 0..b.o.runs {
        eprintln!("user-shaped run {}/{}", run + 1, b.o.runs);
        runs(b, &counts, &raw, &mut f).await;
    }
    println!(
        "\nmedians of {} runs; {} events, a task each ({WINDOW} in flight), init_tracing on, typed handler, prefetch 64; raw lapin: plain JSON, {WINDOW} pipelined confirms, ack only\n",
        b.o.runs, b.o.e2e
    );
    table_head();
    f.native
        .row("user-shaped end to end, Format::Native", "events/s");
    f.native_cpu.row_cpu("CPU time per event, Format::Native");
    f.v2.row("user-shaped end to end, Celery v2 (default)", "events/s");
    f.v2_cpu.row_cpu("CPU time per event, Celery v2");
    (f.batched).row(
        "user-shaped Format::Native against raw lapin batching its writes",
        "events/s",
    );
    f.batched_cpu
        .row_cpu("CPU time per event, against raw batching");
    service.shutdown().await.unwrap();
    for q in [
        "bench_user",
        "bench_user.dlq",
        "bench_user.quarantine",
        "bench_raw_user",
    ] {
        let _ = b
            .setup
            .queue_delete(q.into(), QueueDeleteOptions::default())
            .await;
    }
}
