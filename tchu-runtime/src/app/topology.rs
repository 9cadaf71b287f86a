//! `<service> topology`: what the service declares and which handler needs what, as data
//! (`--json`) and as text.

use super::documents::event_of;
use crate::handler::Handler;
use crate::service::Service;
use crate::transport::EXCHANGE;
use crate::transport::spec::{DelayLevel, delay_route, events_exchange};
use serde_json::{Value, json};
use std::fmt::Write as _;
use tchu_core::retry::{AckPolicy, Backoff};

/// The topology and handler table as data: what `topology --json` prints.
pub fn topology_document(service: &Service) -> Value {
    let topo = service.topology();
    let handlers = service.handlers();
    let spec = |name: &str| topo.queue_spec(name).to_json();
    let delay: Vec<Value> = topo.delay_queues.iter().map(|(n, _)| spec(n)).collect();
    let binding = |queue: &str, key: &String, ordered: bool| {
        let by: Vec<&str> = handlers
            .iter()
            .filter(|h| h.pattern == key.as_str() && h.ordered.is_some() == ordered)
            .map(Handler::name)
            .collect();
        json!({"exchange": EXCHANGE, "queue": queue, "routing_key": key, "handlers": by})
    };
    let mut bindings: Vec<Value> = (topo.bindings.iter())
        .map(|key| binding(&topo.queue, key, false))
        .collect();
    let ordered = topo.ordered.as_ref().map(|o| {
        bindings.extend(o.bindings.iter().map(|key| binding(&o.name, key, true)));
        spec(&o.name)
    });
    let table: Vec<Value> = handlers.iter().map(|h| handler_row(service, h)).collect();
    let settings = service.settings();
    let replay = settings.replay_from.as_ref().map(|since| {
        json!({
            "log": settings.event_log,
            "since": since,
            "progress_queue": format!("{}.replay", topo.queue),
            "lock_queue": format!("{}.replay.lock", topo.queue),
        })
    });
    json!({
        "service": topo.queue,
        "version": service.settings().version,
        "exchange": events_exchange().to_json(),
        "delay_route": delay_route().iter().map(DelayLevel::to_json).collect::<Vec<_>>(),
        "queue": spec(&topo.queue),
        "dead_letter_queue": spec(&topo.dead_letter_queue),
        "quarantine_queue": spec(&topo.quarantine_queue),
        "ordered_queue": ordered,
        "delay_queues": delay,
        "bindings": bindings,
        "handlers": table,
        "prefetch": service.settings().prefetch,
        "replay": replay,
    })
}

/// One handler as `topology --json` lists it.
fn handler_row(service: &Service, h: &Handler) -> Value {
    let policy = h.retry.unwrap_or(service.settings().default_retry);
    json!({
        "name": h.name,
        "pattern": h.pattern,
        "event": h.event,
        "topic": h.event_topic,
        "typed": event_of(h).is_some(),
        "rpc": h.responder,
        "retry": {
            "max_attempts": policy.max_attempts,
            "backoff": backoff_text(&policy.backoff),
            "jitter": policy.jitter,
            "own": h.retry.is_some(),
        },
        "ack": match h.ack { AckPolicy::Early => "early", _ => "late" },
        "source": format!("{}:{}", h.file, h.line),
        "origin": h.origin.as_str(),
        "dedup": h.dedup.as_ref().map(dedup_text),
        "ordered": h.ordered.as_ref().map(|path| format!("key {path}")),
        "schedule": h.schedule.as_ref().map(schedule_row),
        "metadata": h.metadata,
    })
}

/// A handler's schedule as `topology --json` lists it, with its next occurrences.
fn schedule_row(spec: &crate::handler::ScheduleSpec) -> Value {
    let next: Vec<String> = crate::schedule::upcoming(spec, 3)
        .iter()
        .map(|t| t.to_rfc3339())
        .collect();
    json!({
        "name": spec.name,
        "cron": spec.cron,
        "tz": spec.tz,
        "missed": spec.missed.as_str(),
        "next": next,
    })
}

fn dedup_text(key: &crate::handler::DedupKey) -> String {
    match key {
        crate::handler::DedupKey::MessageId => "message id".into(),
        crate::handler::DedupKey::Field(path) => format!("field {path}"),
    }
}

fn backoff_text(b: &Backoff) -> String {
    match b {
        Backoff::Fixed(d) => format!("{d:?}"),
        Backoff::Exponential { base, cap } => format!("{base:?}..{cap:?}"),
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// The topology document as `topology` prints it.
pub(crate) fn topology_text(doc: &Value) -> String {
    let mut s = String::new();
    let q = &doc["queue"];
    let queue = text(&q["name"]);
    let _ = writeln!(
        s,
        "service   {} {}",
        text(&doc["service"]),
        text(&doc["version"])
    );
    let _ = writeln!(s, "exchange  {EXCHANGE} (topic, durable)");
    let _ = writeln!(
        s,
        "queue     {queue} ({}, durable, prefetch {})",
        text(&q["type"]),
        doc["prefetch"]
    );
    let _ = writeln!(
        s,
        "dlq       {} (failed and undecodable messages, x-tchu-* headers say why)",
        text(&doc["dead_letter_queue"]["name"])
    );
    let _ = writeln!(
        s,
        "quarantine {} (quorum: redelivered messages, run one at a time)",
        text(&doc["quarantine_queue"]["name"])
    );
    let ordered = text(&doc["ordered_queue"]["name"]);
    if !ordered.is_empty() {
        let _ = writeln!(
            s,
            "ordered   {ordered} (quorum, single active consumer: ordered handlers, in order per key)"
        );
    }
    retries_text(&mut s, queue, doc["delay_queues"].as_array());
    delay_route_text(&mut s, doc["delay_route"].as_array());
    for q in [queue, ordered].into_iter().filter(|q| !q.is_empty()) {
        bindings_text(&mut s, q, doc["bindings"].as_array());
    }
    handlers_text(&mut s, doc["handlers"].as_array());
    schedules_text(&mut s, doc["handlers"].as_array());
    replay_text(&mut s, &doc["replay"]);
    s
}

fn replay_text(s: &mut String, replay: &Value) {
    if replay.is_null() {
        return;
    }
    let _ = writeln!(
        s,
        "replay    from {} of the event log {} (a stream, `tchu log declare`): the past events \
         matching the bindings, before the queue; progress in {}, one replica at a time \
         ({})",
        text(&replay["since"]),
        text(&replay["log"]),
        text(&replay["progress_queue"]),
        text(&replay["lock_queue"]),
    );
}

fn schedules_text(s: &mut String, handlers: Option<&Vec<Value>>) {
    let scheduled: Vec<&Value> = (handlers.into_iter().flatten())
        .filter(|h| h["schedule"].is_object())
        .collect();
    if scheduled.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "schedules (sent to the queue by its own name, once per occurrence across replicas):"
    );
    for h in scheduled {
        let sc = &h["schedule"];
        let next = sc["next"].get(0).and_then(Value::as_str).unwrap_or("never");
        let _ = writeln!(
            s,
            "  {:<24} {} @ {}, missed: {}, next {next}, runs {}",
            text(&sc["name"]),
            text(&sc["cron"]),
            text(&sc["tz"]),
            text(&sc["missed"]),
            text(&h["name"]),
        );
    }
}

fn bindings_text(s: &mut String, queue: &str, bindings: Option<&Vec<Value>>) {
    let _ = writeln!(s, "bindings  on {EXCHANGE} -> {queue}:");
    for b in bindings
        .into_iter()
        .flatten()
        .filter(|b| b["queue"] == queue)
    {
        let by: Vec<&str> = (b["handlers"].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
            .collect();
        let by = if by.is_empty() {
            "(the queue's own name, as Celery binds it)".to_owned()
        } else {
            by.join(", ")
        };
        let _ = writeln!(s, "          {:<32} {by}", text(&b["routing_key"]));
    }
}

fn retries_text(s: &mut String, queue: &str, delay: Option<&Vec<Value>>) {
    let delay = delay.map(Vec::as_slice).unwrap_or_default();
    if delay.is_empty() {
        let _ = writeln!(s, "retries   none (no handler retries)");
        return;
    }
    let _ = writeln!(
        s,
        "retries   {} delay tiers, each dead-lettering back to {queue}:",
        delay.len()
    );
    for d in delay {
        let _ = writeln!(s, "          {} (ttl {} ms)", text(&d["name"]), d["ttl_ms"]);
    }
}

/// The shared delay route, in one line: its levels are alike but for their TTL.
fn delay_route_text(s: &mut String, levels: Option<&Vec<Value>>) {
    let levels = levels.map(Vec::as_slice).unwrap_or_default();
    let (Some(first), Some(last)) = (levels.first(), levels.last()) else {
        return;
    };
    let _ = writeln!(
        s,
        "delays    {} levels {}..{} (headers exchange and TTL queue each, {} ms to {} ms, \
         shared by the vhost; the first delayed publish declares them)",
        levels.len(),
        text(&first["queue"]["name"]),
        text(&last["queue"]["name"]),
        first["ttl_ms"],
        last["ttl_ms"],
    );
}

fn handlers_text(s: &mut String, handlers: Option<&Vec<Value>>) {
    let _ = writeln!(s, "handlers:");
    let _ = writeln!(
        s,
        "  {:<36} {:<24} {:<20} {:<4} {:<18} {:<5} SOURCE",
        "NAME", "PATTERN", "EVENT", "RPC", "RETRY", "ACK"
    );
    for h in handlers.into_iter().flatten() {
        let retry = &h["retry"];
        let retry = if retry["max_attempts"] == 1 {
            "none".to_owned()
        } else {
            let jitter = if retry["jitter"] == true { " ~" } else { "" };
            format!(
                "{}x {}{jitter}",
                retry["max_attempts"],
                text(&retry["backoff"])
            )
        };
        let _ = writeln!(
            s,
            "  {:<36} {:<24} {:<20} {:<4} {:<18} {:<5} {}",
            text(&h["name"]),
            text(&h["pattern"]),
            h["event"].as_str().unwrap_or("-"),
            if h["rpc"] == true { "yes" } else { "-" },
            retry,
            text(&h["ack"]),
            source_text(h),
        );
        let metadata: Vec<String> = (h["metadata"].as_object().into_iter().flatten())
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect();
        if !metadata.is_empty() {
            let _ = writeln!(s, "    metadata: {}", metadata.join(", "));
        }
        if let Some(order) = h["ordered"].as_str() {
            let _ = writeln!(s, "    in order per {order}");
        }
    }
}

/// Where a handler was declared; a run-time one is marked, its source being the builder call.
fn source_text(h: &Value) -> String {
    match text(&h["origin"]) {
        "runtime" => format!("{} (run time)", text(&h["source"])),
        _ => text(&h["source"]).to_owned(),
    }
}
