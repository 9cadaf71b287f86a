//! The service binary's own command line: `tchu::run!()` knows every handler, so the binary can
//! print the topology it declares, check the live broker against it (and fix it), and export its
//! schemas and AsyncAPI document.
//!
//! ```text
//! <service> [run]                     consume (the default)
//! <service> topology [--json]         exchange, queue, dead-letter queue, retry tiers, bindings, handlers
//! <service> check [--fix] [--json]    compare with the live broker; --fix declares what is missing
//!                                     and removes stale bindings
//! <service> schema [--out DIR]        JSON Schema of every event, response and error
//! <service> asyncapi [--out FILE]     AsyncAPI 3.0 document of the service
//! ```
//!
//! Exit codes: 0 success (for `check`: in sync, or fixed), 1 `check` found drift it did not or
//! could not fix, 2 usage error, 3 the broker or its management API could not be reached or
//! refused, 4 writing a file failed.

use crate::catalog::documents::event_of;
use crate::catalog::{asyncapi_document, schemas_document};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::management::Management;
use crate::service::Service;
use crate::transport::{EXCHANGE, Topology};
use serde_json::{Value, json};
use std::io::Write;
use std::path::PathBuf;

/// Usage text of a service binary.
pub const USAGE: &str = "\
usage: <service> [COMMAND]

commands:
  run                       consume and dispatch until SIGINT/SIGTERM (the default)
  topology [--json]         print the exchange, queues, retry tiers, bindings and handlers it declares
  check [--fix] [--json]    compare the live broker with that topology (bindings through the
                            management API); --fix declares what is missing, removes stale bindings
  schema [--out DIR]        print the JSON Schema of every event, response and error
                            (--out: one file per schema in DIR)
  asyncapi [--out FILE]     print the service's AsyncAPI 3.0 document (JSON)
  help                      this text

environment: TCHU_BROKER_URL, TCHU_MANAGEMENT_URL, TCHU_QUEUE, TCHU_PREFETCH, RUST_LOG
exit codes: 0 ok (check: in sync or fixed), 1 check found drift, 2 usage,
            3 broker or management API unreachable, 4 file write failed";

/// A parsed service command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Consume (the default).
    Run,
    /// Print the topology and handler table.
    Topology {
        /// As JSON.
        json: bool,
    },
    /// Compare with the live broker.
    Check {
        /// Repair what differs.
        fix: bool,
        /// As JSON.
        json: bool,
    },
    /// Export JSON Schemas.
    Schema {
        /// A directory for one file per schema; stdout otherwise.
        out: Option<PathBuf>,
    },
    /// Export the AsyncAPI document.
    AsyncApi {
        /// A file; stdout otherwise.
        out: Option<PathBuf>,
    },
    /// Print the usage.
    Help,
}

impl Command {
    /// Parses the arguments after the program name.
    ///
    /// # Errors
    /// A message for an unknown command or flag.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> std::result::Result<Self, String> {
        let mut it = args.iter().map(AsRef::as_ref);
        let cmd = it.next();
        let rest: Vec<&str> = it.collect();
        let flags = |allowed: &[&str]| -> std::result::Result<Vec<&str>, String> {
            for f in &rest {
                if !allowed.contains(f) {
                    return Err(format!(
                        "unexpected argument `{f}` for `{}`",
                        cmd.unwrap_or("run")
                    ));
                }
            }
            Ok(rest.clone())
        };
        let out = || -> std::result::Result<Option<PathBuf>, String> {
            match rest.as_slice() {
                [] => Ok(None),
                ["--out", p] | ["-o", p] => Ok(Some(PathBuf::from(p))),
                [f, ..] if f.starts_with("--out=") => Ok(Some(PathBuf::from(&f[6..]))),
                _ => Err(format!(
                    "`{}` takes only `--out PATH`, got {rest:?}",
                    cmd.unwrap_or_default()
                )),
            }
        };
        match cmd {
            None | Some("run") => flags(&[]).map(|_| Self::Run),
            Some("topology") => flags(&["--json"]).map(|f| Self::Topology {
                json: f.contains(&"--json"),
            }),
            Some("check") => flags(&["--json", "--fix"]).map(|f| Self::Check {
                fix: f.contains(&"--fix"),
                json: f.contains(&"--json"),
            }),
            Some("schema" | "schemas") => out().map(|out| Self::Schema { out }),
            Some("asyncapi") => out().map(|out| Self::AsyncApi { out }),
            Some("help" | "--help" | "-h") => Ok(Self::Help),
            Some(other) => Err(format!("unknown command `{other}`")),
        }
    }
}

/// Runs `command` for `service`; returns the process exit code. `Command::Run` is not handled
/// here (see [`crate::run_service`]).
pub async fn execute(service: &Service, command: &Command) -> i32 {
    match command {
        Command::Run => 2,
        Command::Help => {
            println!("{USAGE}");
            0
        }
        Command::Topology { json } => {
            let doc = topology_document(service);
            if *json {
                print_json(&doc);
            } else {
                print!("{}", topology_text(service, &doc));
            }
            0
        }
        Command::Schema { out } => {
            let doc = schemas_document(service);
            match out {
                None => {
                    print_json(&doc);
                    0
                }
                Some(dir) => write_schemas(dir, &doc),
            }
        }
        Command::AsyncApi { out } => {
            let server = broker_server();
            let doc = asyncapi_document(service, server.as_ref(), service.version_str());
            match out {
                None => {
                    print_json(&doc);
                    0
                }
                Some(file) => match write_file(file, &doc) {
                    Ok(()) => {
                        eprintln!("wrote {}", file.display());
                        0
                    }
                    Err(code) => code,
                },
            }
        }
        Command::Check { fix, json } => match check(service, *fix).await {
            Ok(report) => {
                if *json {
                    print_json(&report.to_json());
                } else {
                    print!("{}", report.text());
                }
                if report.in_sync_after() { 0 } else { 1 }
            }
            Err(e @ Error::Config(_)) => {
                eprintln!("error: {e}");
                2
            }
            Err(e) => {
                eprintln!("error: {e}");
                3
            }
        },
    }
}

fn print_json(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, v);
    let _ = writeln!(out);
    let _ = out.flush();
}

fn write_file(path: &std::path::Path, v: &Value) -> std::result::Result<(), i32> {
    let text = serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    std::fs::write(path, text).map_err(|e| {
        eprintln!("error: cannot write {}: {e}", path.display());
        4
    })
}

fn write_schemas(dir: &std::path::Path, doc: &Value) -> i32 {
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("error: cannot create {}: {e}", dir.display());
        return 4;
    }
    let mut n = 0;
    for ev in doc["events"].as_array().into_iter().flatten() {
        let topic = ev["topic"].as_str().unwrap_or("event");
        for (kind, suffix) in [
            ("schema", ""),
            ("response", ".response"),
            ("error", ".error"),
        ] {
            if ev[kind].is_null() {
                continue;
            }
            // A topic may hold `/` or start with `..`: never a path outside DIR.
            let file: String = topic
                .chars()
                .map(|c| if c == '/' || c == '\\' { '_' } else { c })
                .collect();
            let path = dir.join(format!("{file}{suffix}.json"));
            if let Err(code) = write_file(&path, &ev[kind]) {
                return code;
            }
            n += 1;
        }
    }
    eprintln!("wrote {n} schema file(s) to {}", dir.display());
    0
}

/// The broker as an AsyncAPI server (never its credentials).
fn broker_server() -> Option<crate::catalog::Server> {
    let url = std::env::var(crate::client::BROKER_URL_ENV)
        .unwrap_or_else(|_| crate::client::DEFAULT_BROKER_URL.into());
    let first = crate::BrokerUrl::parse_list(&url).ok()?.swap_remove(0);
    let uri = first.uri();
    Some(crate::catalog::Server {
        host: format!("{}:{}", uri.authority.host, uri.authority.port),
        tls: first.is_tls(),
        vhost: uri.vhost.clone(),
    })
}

/// Whether the broker's value of an argument is the one tchu declares (numbers compare as
/// numbers: the management API may report any integer width).
fn same_argument(actual: &Value, want: &Value) -> bool {
    match (actual.as_f64(), want.as_f64()) {
        (Some(a), Some(w)) => a == w,
        _ => actual == want,
    }
}

fn queue_json(name: &str, quorum: bool, args: Value) -> Value {
    json!({
        "name": name,
        "type": if quorum { "quorum" } else { "classic" },
        "durable": true,
        "arguments": args,
    })
}

/// The topology and handler table as data: what `topology --json` prints.
pub fn topology_document(service: &Service) -> Value {
    let topo = service.topology();
    let handlers = service.handlers();
    let delay: Vec<Value> = topo
        .delay_queues
        .iter()
        .map(|(name, ttl)| {
            let args = topo.queue_arguments(name);
            let mut q = queue_json(name, topo.quorum, Value::Object(args));
            q["ttl_ms"] = json!(ttl);
            q
        })
        .collect();
    let bindings: Vec<Value> = topo
        .bindings
        .iter()
        .map(|key| {
            let by: Vec<&str> = handlers
                .iter()
                .filter(|h| h.pattern == key)
                .map(|h| h.name)
                .collect();
            json!({ "exchange": EXCHANGE, "queue": topo.queue, "routing_key": key, "handlers": by })
        })
        .collect();
    let table: Vec<Value> = handlers
        .iter()
        .map(|h| {
            let policy = h.retry.unwrap_or(service.default_retry_policy());
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
                "ack": match h.ack { tchu_core::retry::AckPolicy::Early => "early", _ => "late" },
                "source": format!("{}:{}", h.file, h.line),
            })
        })
        .collect();
    json!({
        "service": topo.queue,
        "version": service.version_str(),
        "exchange": { "name": EXCHANGE, "type": "topic", "durable": true },
        "queue": queue_json(&topo.queue, topo.quorum, Value::Object(topo.queue_arguments(&topo.queue))),
        "dead_letter_queue": queue_json(&topo.dead_letter_queue, topo.quorum, Value::Object(topo.queue_arguments(&topo.dead_letter_queue))),
        "delay_queues": delay,
        "bindings": bindings,
        "handlers": table,
        "prefetch": service.prefetch_value(),
    })
}

fn backoff_text(b: &tchu_core::retry::Backoff) -> String {
    match b {
        tchu_core::retry::Backoff::Fixed(d) => format!("{d:?}"),
        tchu_core::retry::Backoff::Exponential { base, cap } => format!("{base:?}..{cap:?}"),
    }
}

fn topology_text(service: &Service, doc: &Value) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let q = &doc["queue"];
    let _ = writeln!(
        s,
        "service   {} {}",
        doc["service"].as_str().unwrap_or_default(),
        doc["version"].as_str().unwrap_or_default()
    );
    let _ = writeln!(s, "exchange  {EXCHANGE} (topic, durable)");
    let _ = writeln!(
        s,
        "queue     {} ({}, durable, prefetch {})",
        q["name"].as_str().unwrap_or_default(),
        q["type"].as_str().unwrap_or_default(),
        service.prefetch_value()
    );
    let _ = writeln!(
        s,
        "dlq       {} (failed and undecodable messages, x-tchu-* headers say why)",
        doc["dead_letter_queue"]["name"]
            .as_str()
            .unwrap_or_default()
    );
    let delay = doc["delay_queues"].as_array().cloned().unwrap_or_default();
    if delay.is_empty() {
        let _ = writeln!(s, "retries   none (no handler retries)");
    } else {
        let _ = writeln!(
            s,
            "retries   {} delay tiers, each dead-lettering back to {}:",
            delay.len(),
            q["name"].as_str().unwrap_or_default()
        );
        for d in &delay {
            let _ = writeln!(
                s,
                "          {} (ttl {} ms)",
                d["name"].as_str().unwrap_or_default(),
                d["ttl_ms"]
            );
        }
    }
    let _ = writeln!(
        s,
        "bindings  on {EXCHANGE} -> {}:",
        q["name"].as_str().unwrap_or_default()
    );
    for b in doc["bindings"].as_array().into_iter().flatten() {
        let by: Vec<&str> = b["handlers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let by = if by.is_empty() {
            "(the queue's own name, as Celery binds it)".to_owned()
        } else {
            by.join(", ")
        };
        let _ = writeln!(
            s,
            "          {:<32} {by}",
            b["routing_key"].as_str().unwrap_or_default()
        );
    }
    let _ = writeln!(s, "handlers:");
    let _ = writeln!(
        s,
        "  {:<36} {:<24} {:<20} {:<4} {:<18} {:<5} SOURCE",
        "NAME", "PATTERN", "EVENT", "RPC", "RETRY", "ACK"
    );
    for h in doc["handlers"].as_array().into_iter().flatten() {
        let retry = &h["retry"];
        let retry = if retry["max_attempts"] == 1 {
            "none".to_owned()
        } else {
            format!(
                "{}x {}{}",
                retry["max_attempts"],
                retry["backoff"].as_str().unwrap_or_default(),
                if retry["jitter"] == true { " ~" } else { "" }
            )
        };
        let _ = writeln!(
            s,
            "  {:<36} {:<24} {:<20} {:<4} {:<18} {:<5} {}",
            h["name"].as_str().unwrap_or_default(),
            h["pattern"].as_str().unwrap_or_default(),
            h["event"].as_str().unwrap_or("-"),
            if h["rpc"] == true { "yes" } else { "-" },
            retry,
            h["ack"].as_str().unwrap_or_default(),
            h["source"].as_str().unwrap_or_default(),
        );
    }
    s
}

/// What `check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// The management API consulted.
    pub management: String,
    /// Declared objects (exchange, queues) that do not exist.
    pub missing_objects: Vec<String>,
    /// Objects that exist with other settings than the service declares (type, arguments).
    pub mismatched: Vec<String>,
    /// Binding keys the service needs that the queue lacks.
    pub missing_bindings: Vec<String>,
    /// Binding keys on `tchu_events` to the queue that no handler needs any more.
    pub stale_bindings: Vec<String>,
    /// What `--fix` did.
    pub fixed: Vec<String>,
    /// Whether `--fix` ran.
    pub fix: bool,
    missing_exchange: bool,
    missing_queues: Vec<String>,
    /// Drift still present after fixing (re-checked through the broker).
    pub remaining: Vec<String>,
}

impl CheckReport {
    fn drift(&self) -> Vec<String> {
        let mut v = Vec::new();
        v.extend(self.missing_objects.iter().map(|o| format!("missing {o}")));
        v.extend(self.mismatched.iter().cloned());
        v.extend(
            self.missing_bindings
                .iter()
                .map(|k| format!("missing binding `{k}`")),
        );
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

    fn to_json(&self) -> Value {
        json!({
            "in_sync": self.drift().is_empty(),
            "management": self.management,
            "missing_objects": self.missing_objects,
            "mismatched": self.mismatched,
            "missing_bindings": self.missing_bindings,
            "stale_bindings": self.stale_bindings,
            "fixed": self.fixed,
            "remaining": self.remaining,
            "ok": self.in_sync_after(),
        })
    }

    fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let drift = self.drift();
        if drift.is_empty() {
            let _ = writeln!(
                s,
                "in sync: the broker holds every queue and binding the service declares, and no stale binding"
            );
            return s;
        }
        let _ = writeln!(s, "drift ({}):", drift.len());
        for d in &drift {
            let _ = writeln!(s, "  {d}");
        }
        if self.fix {
            for f in &self.fixed {
                let _ = writeln!(s, "fixed: {f}");
            }
            if self.remaining.is_empty() {
                let _ = writeln!(s, "in sync after fixing");
            } else {
                for r in &self.remaining {
                    let _ = writeln!(s, "not fixed: {r}");
                }
            }
        } else {
            let _ = writeln!(
                s,
                "run `check --fix` to declare what is missing and remove stale bindings"
            );
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
    let mut report = inspect(&api, &topo).await?;
    report.fix = fix;
    if fix && !report.drift().is_empty() {
        let client = Client::from_env().await?;
        let mut refused = Vec::new();
        let result = async {
            // Only what is missing: re-declaring a queue that exists with other arguments
            // would be refused (406) and fix nothing; those stay reported as mismatched.
            let failed = client
                .transport()
                .declare_parts(
                    &topo,
                    report.missing_exchange,
                    &report.missing_queues,
                    &report.missing_bindings,
                )
                .await?;
            let declared: Vec<(String, String)> = report
                .missing_objects
                .iter()
                .map(|o| (o.clone(), format!("declared {o}")))
                .chain(
                    report
                        .missing_bindings
                        .iter()
                        .map(|k| (format!("binding `{k}`"), format!("bound `{k}`"))),
                )
                .collect();
            for (what, done) in declared {
                match failed.iter().find(|(w, _)| *w == what) {
                    Some((_, e)) => refused.push(format!("could not declare {what}: {e}")),
                    None => report.fixed.push(done),
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
            Ok::<_, Error>(())
        }
        .await;
        client.close().await;
        result?;
        let after = inspect(&api, &topo).await?;
        report.remaining = refused;
        report.remaining.extend(after.drift());
    }
    Ok(report)
}

/// How a queue on the broker differs from what the service declares: its type, its arguments.
fn queue_mismatches(topo: &Topology, name: &str, ttl: Option<u64>, q: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let want_type = if topo.quorum { "quorum" } else { "classic" };
    let ty = q["type"].as_str().unwrap_or("classic");
    if ty != want_type {
        out.push(format!(
            "queue `{name}` is {ty}, the service declares {want_type} (delete it, or change `quorum`)"
        ));
    }
    let args = &q["arguments"];
    let want = topo.queue_arguments(name);
    if want.iter().any(|(k, v)| !same_argument(&args[k], v)) {
        let what = match ttl {
            Some(ttl) => format!("a {ttl} ms TTL dead-lettering to `{}`", topo.queue),
            None => "the service's arguments".to_owned(),
        };
        out.push(format!(
            "queue `{name}` has arguments {args}, expected {} ({what}); queue arguments cannot change: delete the queue to have it declared again, or apply them with a policy",
            Value::Object(want)
        ));
    }
    out
}

async fn inspect(api: &Management, topo: &Topology) -> Result<CheckReport> {
    let api = api.clone();
    let topo = topo.clone();
    blocking(move || {
        let mut r = CheckReport {
            management: api.base().to_owned(),
            ..Default::default()
        };
        match api.exchange(EXCHANGE)? {
            None => {
                r.missing_exchange = true;
                r.missing_objects.push(format!("exchange `{EXCHANGE}`"));
            }
            Some(x) if x["type"] != "topic" || x["durable"] != true => r.mismatched.push(format!(
                "exchange `{EXCHANGE}` is {} (durable: {}), not a durable topic exchange",
                x["type"], x["durable"]
            )),
            Some(_) => {}
        }
        let mut queues: Vec<(String, Option<u64>)> = vec![
            (topo.queue.clone(), None),
            (topo.dead_letter_queue.clone(), None),
        ];
        queues.extend(
            topo.delay_queues
                .iter()
                .map(|(n, ttl)| (n.clone(), Some(*ttl))),
        );
        for (name, ttl) in &queues {
            match api.queue(name)? {
                None => {
                    r.missing_queues.push(name.clone());
                    r.missing_objects.push(format!("queue `{name}`"));
                }
                Some(q) => r.mismatched.extend(queue_mismatches(&topo, name, *ttl, &q)),
            }
        }
        let actual: Vec<String> = api
            .queue_bindings(&topo.queue)?
            .into_iter()
            .filter(|b| b.source == EXCHANGE)
            .map(|b| b.routing_key)
            .collect();
        r.missing_bindings = topo
            .bindings
            .iter()
            .filter(|k| !actual.contains(k))
            .cloned()
            .collect();
        r.stale_bindings = actual
            .iter()
            .filter(|k| !topo.bindings.contains(k))
            .cloned()
            .collect();
        r.stale_bindings.sort();
        r.stale_bindings.dedup();
        Ok(r)
    })
    .await
}
