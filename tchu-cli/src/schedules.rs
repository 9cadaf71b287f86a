//! `tchu schedule list|schema`: the schedules services keep in PostgreSQL (`tchu_schedules`).

use crate::exit::Failure;
use crate::output::{Out, one_line, table};
use clap::Subcommand;
use serde_json::{Value, json};
use tchu::sqlx::{self, PgPool};

/// `tchu schedule ...`.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Print the SQL of the `tchu_schedules` table (idempotent), for migrations of your own
    Schema,
    /// List schedules: when each runs next, when it last ran and how that went
    List {
        /// PostgreSQL URL [default: $DATABASE_URL]
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// Only the schedules of this service (its queue)
        #[arg(long, value_name = "QUEUE")]
        service: Option<String>,
    },
}

/// A time column as the commands show it: UTC, to the second.
fn utc(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
}

/// The columns of the list's query, in order.
type Columns = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    i64,
);

/// One row of `tchu_schedules`.
struct ScheduleRow {
    service: String,
    name: String,
    spec: String,
    missed: String,
    next_due: Option<String>,
    last_due: Option<String>,
    last_finished: Option<String>,
    last_outcome: Option<String>,
    last_error: Option<String>,
    fired: i64,
    skipped: i64,
}

impl From<Columns> for ScheduleRow {
    fn from(c: Columns) -> Self {
        let (service, name, spec, missed, next_due, last_due, last_finished) =
            (c.0, c.1, c.2, c.3, c.4, c.5, c.6);
        Self {
            service,
            name,
            spec,
            missed,
            next_due,
            last_due,
            last_finished,
            last_outcome: c.7,
            last_error: c.8,
            fired: c.9,
            skipped: c.10,
        }
    }
}

impl ScheduleRow {
    fn to_json(&self) -> Value {
        json!({
            "service": self.service, "name": self.name, "spec": self.spec,
            "missed": self.missed, "next_due": self.next_due, "last_due": self.last_due,
            "last_finished_at": self.last_finished, "last_outcome": self.last_outcome,
            "last_error": self.last_error, "fired": self.fired, "missed": self.skipped,
        })
    }

    /// The last run in a few words: its outcome, and its error when it failed.
    fn last_run(&self) -> String {
        match (&self.last_due, &self.last_outcome, &self.last_error) {
            (None, _, _) => "-".into(),
            (Some(due), Some(outcome), Some(error)) => {
                format!("{due} {outcome}: {}", one_line(error, 60))
            }
            (Some(due), Some(outcome), None) => format!("{due} {outcome}"),
            (Some(due), None, _) => due.clone(),
        }
    }
}

/// Runs a schedule command.
pub async fn schedule(command: ScheduleCommand, out: &Out) -> Result<(), Failure> {
    match command {
        ScheduleCommand::Schema => out.line(tchu::sql::SCHEDULE_SCHEMA.trim_end()),
        ScheduleCommand::List {
            database_url,
            service,
        } => {
            let pool = connect(database_url).await?;
            let query = format!(
                "SELECT service, name, spec, missed, {} AS next_due, {} AS last_due, \
                 {} AS last_finished, last_outcome, last_error, fired, skipped \
                 FROM tchu_schedules WHERE ($1::text IS NULL OR service = $1) \
                 ORDER BY service, name",
                utc("next_due"),
                utc("last_due"),
                utc("last_finished_at"),
            );
            let rows: Vec<Columns> = sqlx::query_as(&query)
                .bind(service)
                .fetch_all(&pool)
                .await
                .map_err(db)?;
            let rows: Vec<ScheduleRow> = rows.into_iter().map(ScheduleRow::from).collect();
            list(&rows, out)
        }
    }
}

fn list(rows: &[ScheduleRow], out: &Out) -> Result<(), Failure> {
    if out.json {
        let all: Vec<Value> = rows.iter().map(ScheduleRow::to_json).collect();
        return out.object(&json!({ "schedules": all }));
    }
    let header = [
        "SERVICE", "SCHEDULE", "SPEC", "NEXT RUN", "LAST RUN", "RUNS", "MISSED",
    ];
    let mut lines = vec![header.map(String::from).to_vec()];
    for r in rows {
        lines.push(vec![
            r.service.clone(),
            r.name.clone(),
            format!("{} ({})", r.spec, r.missed),
            r.next_due.clone().unwrap_or_default(),
            r.last_run(),
            r.fired.to_string(),
            r.skipped.to_string(),
        ]);
    }
    table(out, &lines)
}

fn db(e: sqlx::Error) -> Failure {
    Failure::failed("database", e.to_string())
}

/// The database on `--database-url` or `$DATABASE_URL`, with the schedules' table readable.
async fn connect(flag: Option<String>) -> Result<PgPool, Failure> {
    let pool = crate::stores::database(flag, 2).await?;
    if let Err(e) = sqlx::query("SELECT 1 FROM tchu_schedules LIMIT 0")
        .execute(&pool)
        .await
    {
        return Err(Failure::failed(
            "database",
            format!(
                "cannot read the schedules ({e}); a service with schedules creates the table, \
                 or a migration from `tchu schedule schema`"
            ),
        ));
    }
    Ok(pool)
}
