//! The Python side of the interoperability tests: a virtualenv with the released tchu-tchu and
//! Celery (cached under `target/`), a Celery worker running `tests/interop/pysvc.py`, and
//! `tests/interop/pyclient.py` for Python-side publishes and calls.
//!
//! The worker is started once per test binary and always stopped: it runs under a small shell
//! watchdog that kills it as soon as the test process is gone, however the tests end.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The released packages the tests run against.
pub const TCHU_TCHU: &str = "tchu-tchu==3.0.4";
pub const CELERY: &str = "celery==5.7.0";
/// The JSON Schema validator the schema and AsyncAPI tests use (draft-07 and 2020-12).
pub const JSONSCHEMA: &str = "jsonschema==4.23.0";
/// A generic AMQP client for the hostile-input tests: it writes what a stranger can.
pub const PIKA: &str = "pika==1.3.2";
/// OpenTelemetry's own generated OTLP messages: decodes what tchu's exporter sends.
pub const OTLP_PROTO: &str = "opentelemetry-proto==1.45.2";

/// A release of tchu-tchu the interoperability suite runs against, each in its own
/// virtualenv, its service on its own queue (a worker of one binary still stopping must not
/// take the next binary's messages).
#[derive(Debug)]
pub struct Release {
    /// The pip requirement.
    pub package: &'static str,
    /// What tchu writes for it.
    pub tchu_tchu: tchu::TchuTchu,
    /// The virtualenv's directory under `target/`.
    venv: &'static str,
    /// The shared Python service's queue.
    pub queue: &'static str,
}

/// tchu-tchu 3.0.4, the latest release: the default of every test.
pub const V3: Release = Release {
    package: TCHU_TCHU,
    tchu_tchu: tchu::TchuTchu::V3,
    venv: "interop-venv",
    queue: "tchu_interop_py",
};

/// tchu-tchu 2.4.0, the release whose README tchu ports.
pub const V2: Release = Release {
    package: "tchu-tchu==2.4.0",
    tchu_tchu: tchu::TchuTchu::V2,
    venv: "interop-venv-2.4.0",
    queue: "tchu_interop_py2",
};

impl Release {
    /// Whether this is a 2.x release.
    pub fn is_2x(&self) -> bool {
        self.tchu_tchu == tchu::TchuTchu::V2
    }
}

pub struct Python {
    pub release: &'static Release,
    pub venv: PathBuf,
    pub dir: PathBuf,
    pub queue: String,
    pub record: PathBuf,
    pub log: PathBuf,
    pid_file: PathBuf,
    /// More environment for the worker and its scripts (`PYSVC_BROKER`, `PYSVC_QUORUM`).
    extra_env: Vec<(String, String)>,
    /// The watchdog shell; it reaps the worker itself when the test process is gone.
    watchdog: Option<std::process::Child>,
}

fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The tchu-tchu 3.0.4 virtualenv.
pub fn venv() -> PathBuf {
    venv_of(&V3)
}

/// Creates a release's virtualenv once (a directory lock keeps parallel test binaries from
/// racing).
pub fn venv_of(release: &Release) -> PathBuf {
    let venv = target_dir().join(release.venv);
    // The marker names what is installed: a venv of an older set is made again.
    let ready = venv.join(format!(
        ".installed-{}-jsonschema-pika-otlp",
        release.package.trim_start_matches("tchu-tchu==")
    ));
    if ready.exists() {
        return venv;
    }
    let lock = target_dir().join(format!("{}.lock", release.venv));
    let deadline = Instant::now() + Duration::from_secs(600);
    while std::fs::create_dir(&lock).is_err() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {}",
            lock.display()
        );
        std::thread::sleep(Duration::from_millis(500));
        if ready.exists() {
            return venv;
        }
    }
    let result = (|| {
        run(Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv))?;
        run(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            release.package,
            CELERY,
            JSONSCHEMA,
            PIKA,
            OTLP_PROTO,
        ]))?;
        std::fs::write(&ready, "ok").map_err(|e| e.to_string())
    })();
    let _ = std::fs::remove_dir(&lock);
    if let Err(e) = result {
        panic!(
            "could not set up the Python virtualenv (python3 with venv and access to PyPI are needed): {e}"
        );
    }
    venv
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The shared tchu-tchu 3.0.4 service, started on first use.
pub fn python() -> &'static Python {
    python_of(&V3)
}

/// A release's shared Python service, started on first use.
pub fn python_of(release: &'static Release) -> &'static Python {
    static V3_SERVICE: OnceLock<Python> = OnceLock::new();
    static V2_SERVICE: OnceLock<Python> = OnceLock::new();
    let cell = if release.is_2x() {
        &V2_SERVICE
    } else {
        &V3_SERVICE
    };
    cell.get_or_init(|| start_of(release, release.queue, true))
}

/// Starts a tchu-tchu 3.0.4 service that is not shared, consuming `queue`; `purge = false`
/// keeps what waits in it.
pub fn start(queue: &str, purge: bool) -> Python {
    start_of(&V3, queue, purge)
}

/// Starts a service of `release` that is not shared.
pub fn start_of(release: &'static Release, queue: &str, purge: bool) -> Python {
    start_with(release, queue, purge, &[])
}

/// Starts a service of `release` with more environment for `pysvc.py` (another broker, a
/// quorum queue).
pub fn start_with(
    release: &'static Release,
    queue: &str,
    purge: bool,
    extra_env: &[(&str, &str)],
) -> Python {
    let venv = venv_of(release);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let work = target_dir().join("interop");
    std::fs::create_dir_all(&work).unwrap();
    let pid = std::process::id();
    let py = Python {
        release,
        venv,
        dir,
        queue: queue.into(),
        record: work.join(format!("record-{queue}-{pid}.jsonl")),
        log: work.join(format!("worker-{queue}-{pid}.log")),
        pid_file: work.join(format!("worker-{queue}-{pid}.pid")),
        extra_env: extra_env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        watchdog: None,
    };
    let _ = std::fs::remove_file(&py.record);
    // B1 workaround: bind the queue by hand before the worker starts.
    // The other releases' shared services are bound to the same keys: their workers must be
    // gone before this one answers calls.
    let others: Vec<&str> = [&V3, &V2]
        .iter()
        .map(|r| r.queue)
        .filter(|q| *q != queue)
        .collect();
    let out = py
        .command("python")
        .env("PYSVC_PURGE", if purge { "1" } else { "0" })
        .env("PYSVC_IDLE_QUEUES", others.join(","))
        .args(["-c", "import pysvc; pysvc.bind()"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "binding the Python queue failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A threads pool: the solo pool left requests it had already received unprocessed for
    // ~10 s at a time while the tests kept it busy, so callers with honest deadlines timed out.
    let script = format!(
        "{celery} -A pysvc worker -P threads -c 4 -Q {queue} --loglevel=INFO --without-gossip --without-mingle --without-heartbeat -n pysvc-{queue}-{pid}@%h >{log} 2>&1 &
         W=$!; echo $W > {pidfile}
         while kill -0 {pid} 2>/dev/null && kill -0 $W 2>/dev/null; do sleep 0.5; done
         kill -TERM $W 2>/dev/null; sleep 3; kill -KILL $W 2>/dev/null",
        celery = py.venv.join("bin/celery").display(),
        queue = py.queue,
        log = py.log.display(),
        pidfile = py.pid_file.display(),
    );
    let watchdog = py
        .env(&mut Command::new("bash"))
        .args(["-c", &script])
        .spawn()
        .expect("bash must be available");
    let mut py = py;
    py.watchdog = Some(watchdog);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let log = std::fs::read_to_string(&py.log).unwrap_or_default();
        if log.contains(" ready.") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Celery worker did not become ready:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    py
}

impl Python {
    fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.current_dir(&self.dir)
            .env("PYTHONPATH", &self.dir)
            .env("PYSVC_QUEUE", &self.queue)
            .env("PYSVC_RECORD", &self.record)
            .env("PYTHONUNBUFFERED", "1")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
    }

    fn command(&self, bin: &str) -> Command {
        let mut cmd = Command::new(self.venv.join("bin").join(bin));
        self.env(&mut cmd);
        cmd
    }

    /// Runs `pyclient.py CMD TOPIC JSON [TIMEOUT]` and returns its outcome:
    /// `{"ok": value}` or `{"error": class name, "message": text}`.
    pub fn client(&self, cmd: &str, topic: &str, data: &Value, timeout_s: Option<f64>) -> Value {
        let mut c = self.command("python");
        c.args(["pyclient.py", cmd, topic, &data.to_string()]);
        if let Some(t) = timeout_s {
            c.arg(t.to_string());
        }
        pyclient_result(&c.output().unwrap())
    }

    /// Every record of a kind the Python handlers wrote so far.
    pub fn records(&self, kind: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["kind"] == kind)
            .map(|r| r["data"].clone())
            .collect()
    }

    /// Waits for a record of `kind` whose data has `marker` under key `marker`.
    pub async fn wait_record(&self, kind: &str, marker: &str, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(r) = self
                .records(kind)
                .into_iter()
                .find(|d| d["marker"] == marker || d["validated"]["marker"] == marker)
            {
                return Some(r);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the worker process is still running (a message that crashes Celery fails tests).
    pub fn worker_alive(&self) -> bool {
        let pid = std::fs::read_to_string(&self.pid_file).unwrap_or_default();
        !pid.trim().is_empty()
            && Command::new("kill")
                .args(["-0", pid.trim()])
                .status()
                .is_ok_and(|s| s.success())
    }

    pub fn assert_alive(&self) {
        assert!(
            self.worker_alive(),
            "the Celery worker died; its log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Runs `pyclient.py CMD TOPIC JSON` with a release's virtualenv, without starting its
/// shared service (publishing needs none), off the async runtime.
pub async fn publisher_of(release: &'static Release, cmd: &str, topic: &str, data: Value) -> Value {
    let (cmd, topic) = (cmd.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let venv = venv_of(release);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
        let out = Command::new(venv.join("bin").join("python"))
            .args(["pyclient.py", &cmd, &topic, &data.to_string()])
            .current_dir(&dir)
            .env("PYTHONPATH", &dir)
            .env("PYTHONUNBUFFERED", "1")
            .output()
            .unwrap();
        pyclient_result(&out)
    })
    .await
    .unwrap()
}

/// The outcome line `pyclient.py` printed: `{"ok": value}` or `{"error": ..., "message": ...}`.
fn pyclient_result(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PYCLIENT_RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "pyclient gave no result: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap()
}

/// `Python::client` off the async runtime, so Rust services in the same test keep running.
pub async fn client(cmd: &str, topic: &str, data: Value, timeout_s: Option<f64>) -> Value {
    client_of(&V3, cmd, topic, data, timeout_s).await
}

/// As [`client`], with a release's shared service.
pub async fn client_of(
    release: &'static Release,
    cmd: &str,
    topic: &str,
    data: Value,
    timeout_s: Option<f64>,
) -> Value {
    let (cmd, topic) = (cmd.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || python_of(release).client(&cmd, &topic, &data, timeout_s))
        .await
        .unwrap()
}

/// Starts (or joins) the shared tchu-tchu 3.0.4 service off the async runtime.
pub async fn started() -> &'static Python {
    started_of(&V3).await
}

/// Starts (or joins) a release's shared service off the async runtime.
pub async fn started_of(release: &'static Release) -> &'static Python {
    tokio::task::spawn_blocking(move || python_of(release))
        .await
        .unwrap()
}

/// Declares and binds the Python service queue without starting a worker (and without purging).
pub fn start_bind_only(queue: &str) -> bool {
    let venv = venv();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    Command::new(venv.join("bin/python"))
        .current_dir(&dir)
        .env("PYTHONPATH", &dir)
        .env("PYSVC_QUEUE", queue)
        .env("PYSVC_PURGE", "0")
        .args(["-c", "import pysvc; pysvc.bind()"])
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for Python {
    /// Stops a worker that is not the shared one (the watchdog stops that one).
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
        }
    }
}

/// Validates each instance against a JSON Schema file with Python's `jsonschema` (the draft the
/// schema's `$schema` names, draft-07 when it names none). Returns one error list per instance
/// (empty: valid).
pub fn validate(schema: &Path, instances: &[Value]) -> Vec<Vec<String>> {
    let script = r#"
import json, sys
from jsonschema import validators, Draft7Validator
schema = json.load(open(sys.argv[1]))
cls = validators.validator_for(schema, default=Draft7Validator)
cls.check_schema(schema)
v = cls(schema)
out = []
for inst in json.load(sys.stdin):
    out.append([f"{list(e.absolute_path)}: {e.message[:300]}" for e in v.iter_errors(inst)])
print(json.dumps(out))
"#;
    let out = run_json_script(
        script,
        &[schema.as_os_str()],
        &serde_json::to_value(instances).unwrap(),
    );
    serde_json::from_value(out).expect("validator output")
}

/// Decodes OTLP/protobuf `ExportTraceServiceRequest` bodies with OpenTelemetry's own message
/// classes; returns every span as `{service, traceId, spanId, parentSpanId, name, kind,
/// status, attributes}`, ids in hex.
pub fn otlp_spans(bodies: &[Vec<u8>]) -> Vec<Value> {
    let script = r#"
import json, sys
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None
out = []
for body in json.load(sys.stdin):
    req = ExportTraceServiceRequest.FromString(bytes.fromhex(body))
    for rs in req.resource_spans:
        service = {a.key: value(a.value) for a in rs.resource.attributes}.get("service.name")
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append({
                    "service": service, "scope": ss.scope.name,
                    "traceId": s.trace_id.hex(), "spanId": s.span_id.hex(),
                    "parentSpanId": s.parent_span_id.hex(), "name": s.name, "kind": s.kind,
                    "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                    "status": s.status.code, "flags": s.flags,
                    "attributes": {a.key: value(a.value) for a in s.attributes},
                })
print(json.dumps(out))
"#;
    let encoded: Vec<String> = bodies
        .iter()
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
        .collect();
    let out = run_json_script(script, &[], &serde_json::to_value(encoded).unwrap());
    serde_json::from_value(out).expect("decoded spans")
}

/// Runs a Python script of the test virtualenv with `args`, `input` as JSON on its stdin;
/// returns the JSON it prints, insisting it succeeds.
fn run_json_script(script: &str, args: &[&std::ffi::OsStr], input: &Value) -> Value {
    let mut child = Command::new(venv().join("bin/python"))
        .args(["-c", script])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Python check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the Python check")
}

/// What a strict validator (in the spirit of Ajv's strict mode) refuses in a JSON Schema:
/// keywords outside draft 2020-12 and formats the validator does not know. Empty when clean.
pub fn strict_problems(schema: &Value) -> Vec<String> {
    let script = r##"
import json, sys
from jsonschema import Draft202012Validator
schema = json.load(sys.stdin)
Draft202012Validator.check_schema(schema)
known = set(Draft202012Validator.FORMAT_CHECKER.checkers) | {
    "date-time", "date", "time", "duration", "email", "idn-email", "hostname", "idn-hostname",
    "ipv4", "ipv6", "uri", "uri-reference", "iri", "iri-reference", "uuid", "uri-template",
    "json-pointer", "relative-json-pointer", "regex"}
keywords = {"$schema", "$id", "$ref", "$defs", "$comment", "$anchor", "$dynamicRef",
    "$dynamicAnchor", "$vocabulary", "title", "description", "default", "examples", "deprecated",
    "readOnly", "writeOnly", "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum",
    "minimum", "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems",
    "uniqueItems", "maxContains", "minContains", "maxProperties", "minProperties", "required",
    "dependentRequired", "properties", "patternProperties", "additionalProperties",
    "propertyNames", "items", "prefixItems", "contains", "unevaluatedItems",
    "unevaluatedProperties", "allOf", "anyOf", "oneOf", "not", "if", "then", "else",
    "dependentSchemas", "format", "contentEncoding", "contentMediaType", "contentSchema"}
maps = {"properties", "patternProperties", "$defs", "dependentSchemas"}
problems = []
def walk(s, path):
    if isinstance(s, list):
        for i, x in enumerate(s): walk(x, f"{path}/{i}")
        return
    if not isinstance(s, dict): return
    for k, v in s.items():
        if k not in keywords: problems.append(f"{path}: unknown keyword {k}")
        if k == "format" and isinstance(v, str) and v not in known:
            problems.append(f"{path}: unknown format {v}")
        if k in maps and isinstance(v, dict):
            for name, sub in v.items(): walk(sub, f"{path}/{k}/{name}")
        elif k not in ("enum", "const", "default", "examples", "required"):
            walk(v, f"{path}/{k}")
walk(schema, "#")
print(json.dumps(problems))
"##;
    serde_json::from_value(run_json_script(script, &[], schema)).expect("problems")
}

/// The cases of `tests/hostile/stranger.py` (frames lapin's parser refuses), and what the
/// dead letter's reason names for each.
pub const MALFORMED_CASES: [(&str, &str); 5] = [
    ("utf8_content_type", "content_type"),
    ("utf8_header_key", "header name"),
    ("deep_headers", "deeper than 32"),
    ("utf8_routing_key", "routing key"),
    ("unknown_type", "unknown type"),
];

/// Publishes one of `tests/hostile/stranger.py`'s frames with pika into `queue` at `url`
/// (`utf8_routing_key`: to `tchu_events`, under `<prefix>.` and bytes that are not UTF-8);
/// `false` when the broker itself refused the publish.
pub fn stranger(case: &str, queue: &str, url: &str, prefix: &str) -> bool {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/stranger.py");
    let out = Command::new(venv().join("bin/python"))
        .arg(script)
        .args([case, queue, url, prefix])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    if out.status.code() == Some(3) {
        eprintln!("{said}");
        return false;
    }
    assert!(
        out.status.success(),
        "stranger.py {case}: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}
