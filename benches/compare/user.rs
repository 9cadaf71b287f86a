//! The user-shaped section (`--only user`): what a user's code does, the way issue 29's outside
//! harness does it. `init_tracing` is on (as `run!()` installs it), each event is a task of its
//! own with 256 in flight (a semaphore), published with `Client::publish` to a typed handler,
//! prefetch 64, acknowledged. The raw side publishes plain JSON, the least a raw program
//! sends, for both formats, its writes batched (`lapin_batched`). It runs last: the tracing subscriber stays installed.

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
}

/// The section's service (tracing on, as `run!()` has it), its counts, and the raw sink.
async fn start(b: &Bench) -> (tchu::ServiceHandle, Arc<Counts>, Arc<AtomicU64>) {
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
    (service, counts, raw)
}

/// One side of the section alone, for an instruction counter (`--only user-v2`,
/// `user-native` or `user-raw`; see `side_alone`): `n` events through it.
pub(crate) async fn user_alone(b: &Bench, which: &str, n: usize) {
    let (service, counts, raw) = start(b).await;
    match which {
        "user-v2" => {
            let done = || counts.v2.load(Ordering::Relaxed);
            task_per_event(&b.client, n, v2, done, done() + n as u64).await;
        }
        "user-native" => {
            let client = b.client.with_format(tchu::Format::Native);
            let done = || counts.native.load(Ordering::Relaxed);
            task_per_event(&client, n, native, done, done() + n as u64).await;
        }
        _ => {
            let done = || raw.load(Ordering::Relaxed);
            let key = ("bench.raw.user", &plain_json());
            lapin_e2e(&b.pub_ch, key, n, done, done() + n as u64).await;
        }
    }
    service.shutdown().await.unwrap();
}

pub(crate) async fn user_section(b: &Bench) {
    let (service, counts, raw) = start(b).await;
    let mut f = Figures::default();
    for run in 0..b.o.runs {
        eprintln!("user-shaped run {}/{}", run + 1, b.o.runs);
        runs(b, &counts, &raw, &mut f).await;
    }
    println!(
        "\nmedians of {} runs; {} events, a task each ({WINDOW} in flight), init_tracing on, typed handler, prefetch 64; raw lapin: plain JSON, writes batched, {WINDOW} confirms in flight, ack only\n",
        b.o.runs, b.o.e2e
    );
    table_head();
    f.native
        .row("user-shaped end to end, Format::Native", "events/s");
    f.native_cpu.row_cpu("CPU time per event, Format::Native");
    f.v2.row("user-shaped end to end, Celery v2 (default)", "events/s");
    f.v2_cpu.row_cpu("CPU time per event, Celery v2");
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
