//! `tchu schema diff OLD_DIR NEW_DIR`: the schema compatibility gate between two folders that
//! `<service> schema --out` wrote (the last release's, committed, and this build's).

use crate::exit::{Failure, USAGE};
use clap::Subcommand;
use std::path::PathBuf;

/// `tchu schema ...`.
#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Compare two schema folders in both directions (new producers against old consumers, old
    /// producers against the new consumer); exit 0 compatible, 1 breaking, 2 usage
    Diff {
        /// The folder of the running (old) version
        old: PathBuf,
        /// The folder of the new version
        new: PathBuf,
        /// Accepted breaking changes, one `SUBJECT [PATH]` per line [default:
        /// OLD/schema-allow.txt when present]
        #[arg(long, value_name = "FILE")]
        allow: Option<PathBuf>,
    },
}

/// Runs a schema command; the table (or JSON) goes to stdout.
pub fn run(command: &SchemaCommand, json: bool) -> Result<(), Failure> {
    match command {
        SchemaCommand::Diff { old, new, allow } => {
            let read = |dir: &PathBuf| {
                tchu::admin::read_schema_dir(dir).map_err(|e| Failure::usage(e.to_string()))
            };
            let (o, n) = (read(old)?, read(new)?);
            match tchu::admin::gate(&o, &n, Some(old), allow.as_deref(), json) {
                0 => Ok(()),
                1 => Err(Failure::failed(
                    "breaking",
                    "breaking schema changes (see above)",
                )),
                _ => Err(Failure::new(
                    USAGE,
                    "usage",
                    "the allow-list could not be read",
                )),
            }
        }
    }
}
