//! `<service> check [--fix]`: the live broker compared with the service's topology, through
//! the management API (AMQP cannot list bindings).

use crate::client::Client;
use crate::error::{Error, Result};
use crate::management::Management;
use crate::service::Service;
use crate::transport::spec::{ExchangeSpec, QueueRole, QueueSpec, delay_route, events_exchange};
use crate::transport::{EXCHANGE, Topology, TopologyPart};
use serde_json::{Value, json};
use std::fmt::Write as _;

/// What `check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// The management API consulted.
    pub management: String,
    /// Parts of the topology the broker lacks (exchange, queues, bindings).
    missing: Vec<TopologyPart>,
    /// Objects that exist with other settings than the service declares (type, arguments).
    pub mismatched: Vec<String>,
    /// Binding keys on `tchu_events` to the queue that no handler needs any more.
    pub stale_bindings: Vec<String>,
    /// What `--fix` did.
    pub fixed: Vec<String>,
    /// Whether `--fix` ran.
    pub fix: bool,
    /// Drift still present after fixing (re-checked through the broker).
    pub remaining: Vec<String>,
    /// What is worth knowing but is no drift, like a delay route no publish declared yet.
    pub notes: Vec<String>,
}

impl CheckReport {
    /// Declared objects (exchange, queues) that do not exist, like ``queue `orders.dlq` ``.
    pub fn missing_objects(&self) -> Vec<String> {
        let objects = self.missing.iter();
        let objects = objects.filter(|p| !matches!(p, TopologyPart::Binding(_)));
        objects.map(ToString::to_string).collect()
    }

    /// Binding keys the service needs that the queue lacks.
    pub fn missing_bindings(&self) -> Vec<String> {
        (self.missing.iter())
            .filter_map(|p| match p {
                TopologyPart::Binding(key) => Some(key.clone()),
                _ => None,
            })
            .collect()
    }

    fn drift(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .missing
            .iter()
            .map(|p| format!("missing {p}"))
            .collect();
        v.extend(self.mismatched.iter().cloned());
        v.extend(
            self.stale_bindings
                .iter()
                .map(|k| format!("stale binding `{k}`")),
        );
        v
    }

    /// Whether the broker matches the topology once the command is done.
    pub fn in_sync_after(&self) -> bool {
        if self.fix {
            self.remaining.is_empty()
        } else {
            self.drift().is_empty()
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "in_sync": self.drift().is_empty(),
            "management": self.management,
            "missing_objects": self.missing_objects(),
            "mismatched": self.mismatched,
            "missing_bindings": self.missing_bindings(),
            "stale_bindings": self.stale_bindings,
            "fixed": self.fixed,
            "remaining": self.remaining,
            "notes": self.notes,
            "ok": self.in_sync_after(),
        })
    }

    pub(crate) fn text(&self) -> String {
        let mut s = String::new();
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        let drift = self.drift();
        if drift.is_empty() {
            let _ = writeln!(
                s,
                "in sync: the broker holds every queue and binding the service declares, \
                 and no stale binding"
            );
            return s;
        }
        let _ = writeln!(s, "drift ({}):", drift.len());
        for d in &drift {
            let _ = writeln!(s, "  {d}");
        }
        if !self.fix {
            let _ = writeln!(
                s,
                "run `check --fix` to declare what is missing and remove stale bindings"
            );
            return s;
        }
        for f in &self.fixed {
            let _ = writeln!(s, "fixed: {f}");
        }
        if self.remaining.is_empty() {
            let _ = writeln!(s, "in sync after fixing");
        }
        for r in &self.remaining {
            let _ = writeln!(s, "not fixed: {r}");
        }
        s
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Management(format!("management call failed: {e}")))?
}

/// Compares the broker with the service's topology; with `fix`, declares the topology again
/// (missing exchange, queues and bindings), removes stale bindings and checks again.
///
/// # Errors
/// When the broker or its management API cannot be reached.
pub async fn check(service: &Service, fix: bool) -> Result<CheckReport> {
    let topo = service.topology();
    let api = Management::from_env()?;
    let log = EventLogUse::of(service);
    let mut report = inspect(&api, &topo, &log).await?;
    report.fix = fix;
    if fix && !report.drift().is_empty() {
        let client = Client::from_env().await?;
        let refused = repair(&client, &topo, &mut report).await;
        client.close().await;
        let after = inspect(&api, &topo, &log).await?;
        report.remaining = refused?;
        report.remaining.extend(after.drift());
    }
    Ok(report)
}

/// Declares what is missing and removes stale bindings; returns what the broker refused.
async fn repair(client: &Client, topo: &Topology, report: &mut CheckReport) -> Result<Vec<String>> {
    let mut refused = Vec::new();
    // Only what is missing: re-declaring a queue that exists with other arguments would be
    // refused (406) and fix nothing; those stay reported as mismatched.
    let failed = client
        .transport()
        .declare_parts(topo, &report.missing)
        .await?;
    for part in &report.missing {
        match failed.iter().find(|(p, _)| p == part) {
            Some((_, e)) => refused.push(format!("could not declare {part}: {e}")),
            None => report.fixed.push(match part {
                TopologyPart::Binding(key) => format!("bound `{key}`"),
                other => format!("declared {other}"),
            }),
        }
    }
    if !report.stale_bindings.is_empty() {
        match client
            .transport()
            .unbind(&topo.queue, &report.stale_bindings)
            .await
        {
            Ok(()) => {
                let unbound = report
                    .stale_bindings
                    .iter()
                    .map(|k| format!("unbound `{k}`"));
                report.fixed.extend(unbound);
            }
            Err(e) => refused.push(format!("could not remove stale bindings: {e}")),
        }
    }
    Ok(refused)
}

/// How a queue on the broker differs from what the service declares: its type, its arguments.
fn queue_mismatches(topo: &Topology, spec: &QueueSpec, q: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let name = &spec.name;
    let ty = q["type"].as_str().unwrap_or("classic");
    if ty != spec.kind {
        out.push(format!(
            "queue `{name}` is {ty}, the service declares {} (delete it, or change `quorum`)",
            spec.kind
        ));
    }
    let args = &q["arguments"];
    if spec
        .arguments
        .iter()
        .any(|(k, v)| !same_argument(&args[k], v))
    {
        let what = match spec.role {
            QueueRole::Delay { ttl_ms } => {
                format!("a {ttl_ms} ms TTL dead-lettering to `{}`", topo.queue)
            }
            _ => "the service's arguments".to_owned(),
        };
        out.push(format!(
            "queue `{name}` has arguments {args}, expected {} ({what}); queue arguments cannot \
             change: delete the queue to have it declared again, or apply them with a policy",
            Value::Object(spec.arguments.clone())
        ));
    }
    out
}

async fn inspect(api: &Management, topo: &Topology, log: &EventLogUse) -> Result<CheckReport> {
    let api = api.clone();
    let topo = topo.clone();
    let log = log.clone();
    blocking(move || {
        let mut r = CheckReport {
            management: api.base().to_owned(),
            ..Default::default()
        };
        exchange_mismatch(&events_exchange(), api.exchange(EXCHANGE)?, &mut r);
        inspect_delay_route(&api, &mut r)?;
        for spec in topo.queues() {
            match api.queue(&spec.name)? {
                None => r.missing.push(TopologyPart::Queue(spec.name.clone())),
                Some(q) => r.mismatched.extend(queue_mismatches(&topo, &spec, &q)),
            }
        }
        let actual: Vec<String> = (api.queue_bindings(&topo.queue)?.into_iter())
            .filter(|b| b.source == EXCHANGE)
            .map(|b| b.routing_key)
            .collect();
        let missing = topo.bindings.iter().filter(|k| !actual.contains(k));
        r.missing
            .extend(missing.map(|k| TopologyPart::Binding(k.clone())));
        r.stale_bindings = (actual.iter())
            .filter(|k| !topo.bindings.contains(k))
            .cloned()
            .collect();
        r.stale_bindings.sort();
        r.stale_bindings.dedup();
        inspect_event_log(&api, &topo, &log, &mut r)?;
        Ok(r)
    })
    .await
}

/// Records an exchange the broker lacks or holds with another type or durability.
fn exchange_mismatch(spec: &ExchangeSpec, live: Option<Value>, r: &mut CheckReport) {
    let kind = spec.kind.as_str();
    match live {
        None if spec.name == EXCHANGE => r.missing.push(TopologyPart::Exchange),
        None => {}
        Some(x) if x["type"] != kind || x["durable"] != true => r.mismatched.push(format!(
            "exchange `{}` is {} (durable: {}), not a durable {kind} exchange",
            spec.name, x["type"], x["durable"]
        )),
        Some(_) => {}
    }
}

/// The shared delay route: absent altogether is no drift (the first delayed publish declares
/// it); a level missing beside others, or declared otherwise, is.
fn inspect_delay_route(api: &Management, r: &mut CheckReport) -> Result<()> {
    let route = delay_route();
    let mut live = Vec::with_capacity(route.len());
    for level in &route {
        live.push((api.exchange(&level.name)?, api.queue(&level.name)?));
    }
    if live.iter().all(|(x, q)| x.is_none() && q.is_none()) {
        r.notes.push(format!(
            "the delay route ({} levels, `{}`..) is not declared yet: the first delayed \
             publish declares it",
            route.len(),
            route[0].name
        ));
        return Ok(());
    }
    for (level, (x, q)) in route.iter().zip(live) {
        let (Some(x), Some(q)) = (x, q) else {
            r.missing.push(TopologyPart::DelayLevel(level.level));
            continue;
        };
        exchange_mismatch(&level.exchange(), Some(x), r);
        let want = level.queue_arguments();
        if want
            .iter()
            .any(|(k, v)| !same_argument(&q["arguments"][k], v))
        {
            r.mismatched.push(format!(
                "queue `{}` has arguments {}, expected {} (delay level {}); delete it to have \
                 it declared again",
                level.name,
                q["arguments"],
                Value::Object(want),
                level.level
            ));
        }
    }
    Ok(())
}

/// Whether the broker's value of an argument is the one tchu declares (numbers compare as
/// numbers: the management API may report any integer width).
fn same_argument(actual: &Value, want: &Value) -> bool {
    match (actual.as_f64(), want.as_f64()) {
        (Some(a), Some(w)) => a == w,
        _ => actual == want,
    }
}

/// The event log as a service uses it: its name, and whether the service replays from it.
#[derive(Debug, Clone)]
struct EventLogUse {
    name: String,
    replay_from: Option<String>,
}

impl EventLogUse {
    fn of(service: &Service) -> Self {
        let settings = service.settings();
        Self {
            name: settings.event_log.clone(),
            replay_from: settings.replay_from.clone(),
        }
    }
}

/// The event log: missing or not a stream is drift for a service that replays from it (no
/// `--fix`: its retention is the operator's to choose); otherwise a note of what it keeps of
/// the service's topics.
fn inspect_event_log(
    api: &Management,
    topo: &Topology,
    log: &EventLogUse,
    r: &mut CheckReport,
) -> Result<()> {
    let Some(q) = api.queue(&log.name)? else {
        if let Some(since) = &log.replay_from {
            r.mismatched.push(format!(
                "event log `{}` does not exist, and the service replays from it (replay_from \
                 {since}): `tchu log declare` makes it",
                log.name
            ));
        }
        return Ok(());
    };
    if q["type"].as_str() != Some("stream") {
        r.mismatched.push(format!(
            "event log `{}` is a {} queue, not a stream: it is consumed, not kept",
            log.name,
            q["type"].as_str().unwrap_or("classic")
        ));
        return Ok(());
    }
    let kept: Vec<String> = (api.queue_bindings(&log.name)?.into_iter())
        .filter(|b| b.source == EXCHANGE)
        .map(|b| b.routing_key)
        .collect();
    // The queue's own name is bound as Celery does it, for what is sent to it by name.
    let uncovered: Vec<&String> = (topo.bindings.iter())
        .filter(|b| **b != topo.queue && !kept.iter().any(|k| covers(k, b)))
        .collect();
    let arguments = &q["arguments"];
    r.notes.push(format!(
        "event log `{}` (stream, max-age {}, max-bytes {}) keeps {}{}",
        log.name,
        arguments["x-max-age"].as_str().unwrap_or("unlimited"),
        arguments["x-max-length-bytes"],
        kept.join(", "),
        match &log.replay_from {
            Some(since) => format!("; the service replays from it (replay_from {since})"),
            None => String::new(),
        }
    ));
    if !uncovered.is_empty() {
        let uncovered: Vec<&str> = uncovered.iter().map(|s| s.as_str()).collect();
        r.notes.push(format!(
            "the event log keeps nothing known of {}: a replay brings none of those",
            uncovered.join(", ")
        ));
    }
    Ok(())
}

/// Whether every topic the binding `b` takes is also bound to the log by `k` (a sufficient
/// test: `#`, the same pattern, a `prefix.#`, or `k` matching `b` read as a plain topic).
fn covers(k: &str, b: &str) -> bool {
    let prefix = k
        .strip_suffix('#')
        .filter(|p| p.is_empty() || p.ends_with('.'));
    k == b
        || prefix.is_some_and(|p| b.starts_with(p))
        || (!b.split('.').any(|w| w == "#") && tchu_core::topic::pattern_matches(k, b))
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn a_log_binding_covers_what_it_surely_keeps() {
        assert!(covers("#", "order.*"));
        assert!(covers("order.#", "order.placed"));
        assert!(covers("order.#", "order.#"));
        assert!(covers("order.*", "order.placed"));
        assert!(covers("*.placed", "order.placed"));
        assert!(!covers("order.*", "order.#"), "order.a.b is not kept");
        assert!(!covers("order.placed", "order.*"));
        assert!(!covers("user.#", "order.placed"));
        assert!(!covers("order#", "order.placed"));
    }
}
