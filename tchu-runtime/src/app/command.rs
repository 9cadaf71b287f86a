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
//! <service> schema --check-against DIR [--allow FILE] [--json]
//!                                     the compatibility gate against schemas exported earlier
//! <service> asyncapi [--out FILE]     AsyncAPI 3.0 document of the service
//! ```
//!
//! Exit codes: 0 success (for `check`: in sync, or fixed; for the gate: compatible), 1 `check`
//! found drift it did not or could not fix, or the gate found a breaking change, 2 usage error
//! (for the gate: a folder or file that cannot be read), 3 the broker or its management API could
//! not be reached or refused, 4 writing a file failed.

use super::check::check;
use super::contracts::{gate, read_schema_dir, schema_files};
use super::documents::{asyncapi_document, schemas_document};
use super::topology::{topology_document, topology_text};
use crate::error::Error;
use crate::error_chain;
use crate::service::Service;
use serde_json::Value;
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
  schema --check-against DIR [--allow FILE] [--json]
                            compare with schemas exported earlier, in both directions (new
                            producers against old consumers, old producers against this one);
                            exit 1 on a breaking change not in the allow-list (default
                            DIR/schema-allow.txt)
  asyncapi [--out FILE]     print the service's AsyncAPI 3.0 document (JSON)
  help                      this text

environment: TCHU_BROKER_URL, TCHU_MANAGEMENT_URL, TCHU_QUEUE, TCHU_PREFETCH, TCHU_TCHU_VERSION,
             TCHU_REPLAY_FROM, TCHU_EVENT_LOG, RUST_LOG
exit codes: 0 ok (check: in sync or fixed), 1 check found drift or the gate a breaking change,
            2 usage,
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
    /// The compatibility gate against schemas exported earlier.
    SchemaCheck {
        /// The folder `schema --out` wrote for the version running now.
        against: PathBuf,
        /// Accepted breaking changes; `schema-allow.txt` in `against` otherwise.
        allow: Option<PathBuf>,
        /// As JSON.
        json: bool,
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
            Some("schema" | "schemas") if rest.contains(&"--check-against") => schema_check(&rest),
            Some("schema" | "schemas") => out().map(|out| Self::Schema { out }),
            Some("asyncapi") => out().map(|out| Self::AsyncApi { out }),
            Some("help" | "--help" | "-h") => Ok(Self::Help),
            Some(other) => Err(format!("unknown command `{other}`")),
        }
    }
}

/// `schema --check-against DIR [--allow FILE] [--json]`.
fn schema_check(rest: &[&str]) -> std::result::Result<Command, String> {
    let (mut against, mut allow, mut json) = (None, None, false);
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        match *arg {
            "--check-against" => against = it.next().map(PathBuf::from),
            "--allow" => allow = it.next().map(PathBuf::from),
            "--json" => json = true,
            other => {
                return Err(format!(
                    "unexpected argument `{other}` for `schema --check-against`"
                ));
            }
        }
    }
    let against = against.ok_or("`--check-against` needs the folder `schema --out` wrote")?;
    Ok(Command::SchemaCheck {
        against,
        allow: allow.filter(|p| !p.as_os_str().is_empty()),
        json,
    })
}

/// Runs `command` for `service`; returns the process exit code. `Command::Run` is not handled
/// here (see [`super::run_app`]).
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
                print!("{}", topology_text(&doc));
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
        Command::SchemaCheck {
            against,
            allow,
            json,
        } => {
            let old = match read_schema_dir(against) {
                Ok(old) => old,
                Err(e) => {
                    eprintln!("error: {e}");
                    return 2;
                }
            };
            let new = schema_files(&schemas_document(service));
            gate(&old, &new, Some(against), allow.as_deref(), *json)
        }
        Command::AsyncApi { out } => {
            let server = broker_server();
            let version = &service.settings().version;
            let doc = asyncapi_document(service, server.as_ref(), version);
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
            Err(e) => {
                eprintln!("error: {}", error_chain(&e));
                check_error_code(&e)
            }
        },
    }
}

/// The exit code of a failed `check`: the one every tchu command gives for its kind (2 for what
/// the user must correct, 3 for a broker or management API that could not be reached).
fn check_error_code(e: &Error) -> i32 {
    e.kind().exit_code().into()
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
    let files = schema_files(doc);
    for (name, schema) in &files {
        if let Err(code) = write_file(&dir.join(format!("{name}.json")), schema) {
            return code;
        }
    }
    eprintln!("wrote {} schema file(s) to {}", files.len(), dir.display());
    0
}

/// The broker as an AsyncAPI server (never its credentials).
fn broker_server() -> Option<crate::catalog::Server> {
    let url =
        std::env::var(crate::BROKER_URL_ENV).unwrap_or_else(|_| crate::DEFAULT_BROKER_URL.into());
    let first = crate::BrokerUrl::parse_list(&url).ok()?.swap_remove(0);
    let uri = first.uri();
    Some(crate::catalog::Server {
        host: format!("{}:{}", uri.authority.host, uri.authority.port),
        tls: first.is_tls(),
        vhost: uri.vhost.clone(),
    })
}
