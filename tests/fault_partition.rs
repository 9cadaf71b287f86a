//! Network partitions: three RabbitMQ nodes, each in a network namespace this test creates
//! (`tests/nodes/netns.rs`), clustered with `pause_minority` and a 10 s `net_ticktime`. A node
//! is cut off its peers while it keeps running, then healed.
//!
//! Beside the cluster, in every scenario:
//! - two publishers with confirms, one starting at node A, one at node B;
//! - a service with two replicas (one starting at A, one at B) on a quorum queue with the
//!   PostgreSQL inbox: its handler writes one row per effect, with no unique constraint;
//! - a Python tchu-tchu 3.0.4 Celery worker on its own quorum queue, bound to the same topic.
//!
//! The scenarios, one after the other on the same cluster:
//! 1. the node holding the service queue's leader is cut off for 30 s, then healed;
//! 2. the node publisher 2 and replica 2 are connected to is cut off for 30 s, from its peers
//!    and from its clients (their packets vanish: only heartbeats tell);
//! 3. a flapping partition: the leader's node cut for 4 s and healed for 4 s, for a minute
//!    (`TCHU_PARTITION_FLAP_SECS` makes it longer: `scripts/partition-soak.sh`).
//!
//! What must hold, counted and printed per scenario: every confirmed publish is handled by the
//! service and by the Python worker (0 lost); no effect is applied twice; every publish ends,
//! confirmed or with an error, within its timeout (none hangs); the replica on the cut node
//! reports not ready during the outage (scenarios 1 and 2); after healing, both replicas and
//! the worker consume again.
#![cfg(all(feature = "service", feature = "postgres"))]

mod common;
mod nodes;
mod python;

use nodes::netns::{Cluster, NsNode};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tchu::sqlx::{self, PgPool};
use tchu::{Inbox, ServiceState, Tx};
use tokio::sync::watch;

#[tchu::event(topic = "partition.tick")]
struct Tick {
    id: String,
    scenario: String,
}

mod replica {
    use super::*;

    #[tchu::subscribe(dedup(key = "id"), retry(max = 10, backoff = "100ms..2s"))]
    async fn tick(t: Tick, tx: Tx) -> tchu::Result<()> {
        sqlx::query("INSERT INTO effects (id, scenario) VALUES ($1, $2)")
            .bind(&t.id)
            .bind(&t.scenario)
            .execute(&mut *tx.lock().await?)
            .await?;
        Ok(())
    }
}

const QUEUE: &str = "partition_svc";
const PY_QUEUE: &str = "partition_py";
/// Each client's own deadline for a confirm (riding out a reconnection); a publish still
/// pending this long after it is counted as hung.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);
const HUNG_AFTER: Duration = Duration::from_secs(45);
/// Between two publishes of one publisher.
const PACE: Duration = Duration::from_millis(40);

/// Broker settings under test: the ones the README recommends.
const BROKER_CONF: &str = "cluster_partition_handling = pause_minority\nnet_ticktime = 10\n";

/// A replica's readiness over time, as its handle reported it.
type StateLog = Arc<Mutex<Vec<(Instant, ServiceState)>>>;

struct Replica {
    handle: tchu::ServiceHandle,
    client: tchu::Client,
    states: StateLog,
}

struct Fixture {
    cluster: Arc<Cluster>,
    pool: PgPool,
    replicas: Vec<Replica>,
    publishers: Vec<(char, tchu::Client)>,
    py: python::Python,
}

/// What one publisher saw: each publish confirmed, failed (with the error), or hung.
#[derive(Default)]
struct Published {
    confirmed: BTreeSet<String>,
    failed: BTreeMap<String, usize>,
    hung: usize,
}

async fn client_from(cluster: &Cluster, first: char) -> tchu::Client {
    tchu::Client::builder()
        // The addresses as a user writes them: tchu's default heartbeat finds a dead
        // connection (scenario 2).
        .url(cluster.urls_from(first, ""))
        .publish_timeout(PUBLISH_TIMEOUT)
        .connect()
        .await
        .unwrap()
}

fn follow_states(handle: &tchu::ServiceHandle) -> StateLog {
    let log: StateLog = Arc::new(Mutex::new(vec![(Instant::now(), handle.state())]));
    let mut rx = handle.watch_state();
    let out = log.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let state = *rx.borrow_and_update();
            out.lock().unwrap().push((Instant::now(), state));
        }
    });
    log
}

async fn start_replica(cluster: &Cluster, first: char, pool: &PgPool) -> Replica {
    let client = client_from(cluster, first).await;
    let handle = tchu::Service::new(QUEUE)
        .handlers_in(concat!(module_path!(), "::replica"))
        .quorum(true)
        .prefetch(32)
        .inbox(Inbox::postgres(pool.clone()))
        .start(&client)
        .await
        .unwrap();
    let states = follow_states(&handle);
    Replica {
        handle,
        client,
        states,
    }
}

async fn fixture() -> Fixture {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(|| Cluster::start(BROKER_CONF))
            .await
            .unwrap(),
    );
    let (_, pool) = common::scoped_database("partition").await;
    sqlx::query("CREATE TABLE effects (id text NOT NULL, scenario text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    // Replica 1 declares the queue on A: its leader starts there.
    let mut replicas = vec![start_replica(&cluster, 'a', &pool).await];
    replicas.push(start_replica(&cluster, 'b', &pool).await);
    let publishers = vec![
        ('a', client_from(&cluster, 'a').await),
        ('b', client_from(&cluster, 'b').await),
    ];
    let broker = cluster.urls_from('c', "").replace(',', ";");
    let py = tokio::task::spawn_blocking(move || {
        python::start_with(
            &python::V3,
            PY_QUEUE,
            true,
            &[("PYSVC_BROKER", &broker), ("PYSVC_QUORUM", "1")],
        )
    })
    .await
    .unwrap();
    Fixture {
        cluster,
        pool,
        replicas,
        publishers,
        py,
    }
}

/// Publishes ticks until `stop`, one at a time, each bounded.
async fn publish_until(
    client: tchu::Client,
    scenario: String,
    prefix: char,
    mut stop: watch::Receiver<bool>,
) -> Published {
    let mut out = Published::default();
    for seq in 0u64.. {
        if *stop.borrow() {
            break;
        }
        let id = format!("{scenario}-{prefix}-{seq}");
        let tick = Tick {
            id: id.clone(),
            scenario: scenario.clone(),
        };
        match tokio::time::timeout(HUNG_AFTER, client.publish(&tick)).await {
            Ok(Ok(_)) => {
                out.confirmed.insert(id);
            }
            Ok(Err(e)) => {
                *out.failed
                    .entry(e.to_string().chars().take(90).collect())
                    .or_default() += 1
            }
            Err(_) => out.hung += 1,
        }
        let _ = tokio::time::timeout(PACE, stop.changed()).await;
    }
    out
}

/// Runs `blocking` (ip, rabbitmqctl) off the async workers.
async fn on_cluster<T: Send + 'static>(
    cluster: &Arc<Cluster>,
    blocking: impl FnOnce(&Cluster) -> T + Send + 'static,
) -> T {
    let cluster = cluster.clone();
    tokio::task::spawn_blocking(move || blocking(&cluster))
        .await
        .unwrap()
}

/// The node whose member of the service queue leads it.
fn leader_of(cluster: &Cluster, queue: &str) -> char {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for node in cluster.nodes.iter().filter(|n| n.is_running()) {
            let out = node.ctl(&["list_queues", "name", "leader", "--formatter", "json"]);
            let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let leader = rows.as_array().into_iter().flatten().find_map(|r| {
                (r["name"] == queue).then(|| r["leader"].as_str().unwrap_or("").to_owned())
            });
            if let Some(n) = cluster.nodes.iter().find(|n| Some(n.name()) == leader) {
                return n.letter;
            }
        }
        assert!(Instant::now() < deadline, "no leader for {queue}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What one scenario measured.
struct Report {
    name: String,
    published: Published,
    cut: char,
    lost_by_service: usize,
    lost_by_python: usize,
    twice: i64,
    failed_yet_handled: usize,
    /// How long the replica(s) on the cut node reported not ready, if they did.
    not_ready: Option<Duration>,
    /// Clients (replicas and publishers) still connected to the cut node when it healed.
    stayed_on_cut: usize,
    whole_after_heal: Duration,
    /// Whether the cut node had to be restarted to rejoin.
    restarted: bool,
    consumers: (i64, i64),
}

impl Report {
    fn print(&self) {
        let p = &self.published;
        let attempts = p.confirmed.len() + p.failed.values().sum::<usize>() + p.hung;
        println!(
            "| {} | node {} | {attempts} | {} | {:?} | {} | {} | {} | {} | {} | {} | {} | {:.1} s{} | {}+{} |",
            self.name,
            self.cut,
            p.confirmed.len(),
            p.failed,
            p.hung,
            self.lost_by_service,
            self.lost_by_python,
            self.twice,
            self.failed_yet_handled,
            self.not_ready
                .map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            self.stayed_on_cut,
            self.whole_after_heal.as_secs_f64(),
            if self.restarted { " (restarted)" } else { "" },
            self.consumers.0,
            self.consumers.1,
        );
    }
}

/// Publishes from every publisher while `disruption` runs and until the cluster is whole
/// again, then counts what arrived.
async fn run_scenario(fx: &Fixture, name: &str, disruption: Disruption) -> Report {
    let started = Instant::now();
    let on_node_at_start: Vec<Option<char>> = fx
        .replicas
        .iter()
        .map(|r| connected_node(&fx.cluster, &r.client))
        .collect();
    let (stop, stopped) = watch::channel(false);
    let tasks: Vec<_> = fx
        .publishers
        .iter()
        .map(|(node, client)| {
            tokio::spawn(publish_until(
                client.clone(),
                name.into(),
                *node,
                stopped.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    disruption.start(&fx.cluster).await;
    let cut = disruption.node();
    let stayed_on_cut = fx
        .replicas
        .iter()
        .map(|r| &r.client)
        .chain(fx.publishers.iter().map(|(_, c)| c))
        .filter(|c| connected_node(&fx.cluster, c) == Some(cut))
        .count();
    disruption.heal(&fx.cluster).await;
    let (whole_after_heal, restarted) = on_cluster(&fx.cluster, move |c| {
        c.await_whole(cut, Duration::from_secs(30))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.send_replace(true);
    let mut published = Published::default();
    for task in tasks {
        let p = task.await.unwrap();
        published.confirmed.extend(p.confirmed);
        for (kind, n) in p.failed {
            *published.failed.entry(kind).or_default() += n;
        }
        published.hung += p.hung;
    }
    let consumers = await_consumers(fx).await;
    let (handled, by_python) = await_delivered(fx, name, &published.confirmed).await;
    Report {
        name: name.into(),
        lost_by_service: published.confirmed.difference(&handled).count(),
        lost_by_python: published.confirmed.difference(&by_python).count(),
        twice: applied_twice(&fx.pool, name).await,
        failed_yet_handled: handled.len().saturating_sub(published.confirmed.len()),
        not_ready: not_ready_on(fx, &on_node_at_start, cut, started),
        published,
        cut,
        stayed_on_cut,
        whole_after_heal,
        restarted,
        consumers,
    }
}

/// How many consumers the service queue and the Python queue have, once both replicas report
/// consuming and the counts are whole again (bounded: what is there at the end is returned).
async fn await_consumers(fx: &Fixture) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ready = fx
            .replicas
            .iter()
            .all(|r| r.handle.state() == ServiceState::Consuming);
        let counts = on_cluster(&fx.cluster, consumer_counts).await;
        if (ready && counts.0 == 2 && counts.1 >= 1) || Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn consumer_counts(cluster: &Cluster) -> (i64, i64) {
    let node = cluster.nodes.iter().find(|n| n.is_running()).unwrap();
    let out = node.ctl(&["list_queues", "name", "consumers", "--formatter", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let of = |queue: &str| {
        rows.as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == queue)
            .and_then(|r| r["consumers"].as_i64())
            .unwrap_or(0)
    };
    (of(QUEUE), of(PY_QUEUE))
}

/// The ids the service applied and the Python worker recorded, once both hold every confirmed
/// one or two minutes have passed.
async fn await_delivered(
    fx: &Fixture,
    scenario: &str,
    confirmed: &BTreeSet<String>,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let handled: BTreeSet<String> =
            sqlx::query_scalar("SELECT DISTINCT id FROM effects WHERE scenario = $1")
                .bind(scenario)
                .fetch_all(&fx.pool)
                .await
                .unwrap()
                .into_iter()
                .collect();
        let by_python: BTreeSet<String> = fx
            .py
            .records("partition.tick")
            .iter()
            .filter(|d| d["scenario"] == scenario)
            .filter_map(|d| d["id"].as_str().map(str::to_owned))
            .collect();
        let all_in = confirmed.is_subset(&handled) && confirmed.is_subset(&by_python);
        if all_in || Instant::now() > deadline {
            return (handled, by_python);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How many of the scenario's events were applied more than once.
async fn applied_twice(pool: &PgPool, scenario: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT id FROM effects WHERE scenario = $1 \
         GROUP BY id HAVING count(*) > 1) AS twice",
    )
    .bind(scenario)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The node a client is connected to now.
fn connected_node(cluster: &Cluster, client: &tchu::Client) -> Option<char> {
    let seen = format!("{client:?}");
    cluster
        .nodes
        .iter()
        .find(|n| seen.contains(&format!("{}:", n.client_address())))
        .map(|n| n.letter)
}

/// How long the replicas connected to `node` when the scenario began (`at_start`, by replica)
/// reported not ready after `since`, or `None` when they never did.
fn not_ready_on(
    fx: &Fixture,
    at_start: &[Option<char>],
    node: char,
    since: Instant,
) -> Option<Duration> {
    let mut total: Option<Duration> = None;
    let on_node = fx
        .replicas
        .iter()
        .zip(at_start)
        .filter(|(_, at)| **at == Some(node));
    for (replica, _) in on_node {
        let log = replica.states.lock().unwrap();
        let mut down_since: Option<Instant> = None;
        for (at, state) in log.iter().filter(|(at, _)| *at >= since) {
            match (state, down_since) {
                (ServiceState::Consuming, Some(from)) => {
                    *total.get_or_insert_default() += at.duration_since(from);
                    down_since = None;
                }
                (ServiceState::Consuming, None) => {}
                (_, None) => down_since = Some(*at),
                (_, Some(_)) => {}
            }
        }
        if let Some(from) = down_since {
            *total.get_or_insert_default() += from.elapsed();
        }
    }
    total
}

/// What a scenario does to the cluster.
#[derive(Clone, Copy)]
enum Disruption {
    /// Cuts the node off its peers for `secs` (its clients still reach it).
    Cut { node: char, secs: u64 },
    /// Cuts the node off its peers and its clients for `secs`.
    Isolate { node: char, secs: u64 },
    /// Cuts the node off its peers for 4 s and heals it for 4 s, over `secs`.
    Flap { node: char, secs: u64 },
}

impl Disruption {
    fn node(self) -> char {
        match self {
            Self::Cut { node, .. } | Self::Isolate { node, .. } | Self::Flap { node, .. } => node,
        }
    }

    /// Does it; returns with the node still cut off (`Cut`, `Isolate`) or healed (`Flap`).
    async fn start(self, cluster: &Arc<Cluster>) {
        match self {
            Self::Cut { node, secs } => {
                on_cluster(cluster, move |c| c.node(node).cut()).await;
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            Self::Isolate { node, secs } => {
                on_cluster(cluster, move |c| {
                    let n: &NsNode = c.node(node);
                    n.cut();
                    n.unplug_clients();
                })
                .await;
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            Self::Flap { node, secs } => {
                let end = Instant::now() + Duration::from_secs(secs);
                while Instant::now() < end {
                    on_cluster(cluster, move |c| c.node(node).cut()).await;
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    on_cluster(cluster, move |c| c.node(node).heal()).await;
                    tokio::time::sleep(Duration::from_secs(4)).await;
                }
            }
        }
    }

    async fn heal(self, cluster: &Arc<Cluster>) {
        let node = self.node();
        on_cluster(cluster, move |c| {
            let n = c.node(node);
            n.plug_clients();
            n.heal();
        })
        .await;
    }
}

/// `outage`: the scenario's cut lasts long enough for the clients on the cut node to leave it
/// and report it.
fn check(report: &Report, outage: bool) {
    let p = &report.published;
    assert!(
        !p.confirmed.is_empty(),
        "{}: nothing was confirmed",
        report.name
    );
    assert_eq!(
        p.hung, 0,
        "{}: publishes neither confirmed nor failed",
        report.name
    );
    assert_eq!(
        (report.lost_by_service, report.lost_by_python),
        (0, 0),
        "{}: confirmed events lost (service, Python)",
        report.name
    );
    assert_eq!(report.twice, 0, "{}: effects applied twice", report.name);
    assert_eq!(
        report.consumers.0, 2,
        "{}: a replica's consumer is missing after healing",
        report.name
    );
    assert!(
        report.consumers.1 >= 1,
        "{}: the Python worker does not consume after healing",
        report.name
    );
    if outage {
        assert!(
            report.not_ready.is_some(),
            "{}: the replica on the cut node never reported not ready",
            report.name
        );
        assert_eq!(
            report.stayed_on_cut, 0,
            "{}: clients still on the cut node when it healed",
            report.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_events_survive_partitions() {
    let fx = fixture().await;
    let flap_secs = std::env::var("TCHU_PARTITION_FLAP_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    println!(
        "| scenario | cut | publishes | confirmed | failed | hung | lost (service) | \
         lost (Python) | applied twice | failed yet handled | not ready | stayed on cut node | \
         whole after heal | consumers |"
    );
    let leader = on_cluster(&fx.cluster, |c| leader_of(c, QUEUE)).await;
    let cut = Disruption::Cut {
        node: leader,
        secs: 30,
    };
    let report = run_scenario(&fx, "leader", cut).await;
    report.print();
    check(&report, true);

    let publisher_node = connected_node(&fx.cluster, &fx.publishers[1].1).unwrap();
    let isolate = Disruption::Isolate {
        node: publisher_node,
        secs: 30,
    };
    let report = run_scenario(&fx, "publisher", isolate).await;
    report.print();
    check(&report, true);

    let leader = on_cluster(&fx.cluster, |c| leader_of(c, QUEUE)).await;
    let flap = Disruption::Flap {
        node: leader,
        secs: flap_secs,
    };
    let report = run_scenario(&fx, "flapping", flap).await;
    report.print();
    check(&report, false);

    for replica in fx.replicas {
        replica.handle.shutdown().await.unwrap();
        replica.client.close().await;
    }
    for (_, client) in fx.publishers {
        client.close().await;
    }
    fx.py.assert_alive();
}
