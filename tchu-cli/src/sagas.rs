//! `tchu saga schema|list|show`: the sagas services keep in PostgreSQL (`tchu_sagas`).

use crate::exit::Failure;
use crate::output::{Out, one_line, table};
use clap::Subcommand;
use serde_json::{Value, json};
use tchu::sqlx::{self, PgPool};

/// `tchu saga ...`.
#[derive(Debug, Subcommand)]
pub enum SagaCommand {
    /// Print the SQL of the `tchu_sagas` table (idempotent), for migrations of your own
    Schema,
    /// List sagas in progress (and completed ones kept, with --all): since when, waiting for what
    List {
        /// PostgreSQL URL [default: $DATABASE_URL]
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// Only this saga (its state type's `NAME`)
        #[arg(long)]
        saga: Option<String>,
        /// Completed sagas too (kept by state types with `KEEP_COMPLETED`)
        #[arg(long)]
        all: bool,
        /// At most this many, the least recently moved on first
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Show one saga: its state and the timeouts it waits for
    Show {
        /// PostgreSQL URL [default: $DATABASE_URL]
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// The saga's name
        saga: String,
        /// Its correlation key
        key: String,
    },
}

/// One row of `tchu_sagas`, as the commands show it.
struct SagaRow {
    saga: String,
    key: String,
    status: String,
    version: i64,
    state: Option<String>,
    timeouts: String,
    started: String,
    updated: String,
}

const COLUMNS: &str = "saga, key, status, version, state, timeouts, \
    to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS started, \
    to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS updated";

/// The columns of [`COLUMNS`], in order.
type Columns = (
    String,
    String,
    String,
    i64,
    Option<String>,
    String,
    String,
    String,
);

impl From<Columns> for SagaRow {
    fn from(c: Columns) -> Self {
        let (saga, key, status, version, state, timeouts, started, updated) = c;
        Self {
            saga,
            key,
            status,
            version,
            state,
            timeouts,
            started,
            updated,
        }
    }
}

impl SagaRow {
    /// The topics of the timeouts it waits for, with when each is due (Unix ms).
    fn waiting_for(&self) -> Value {
        let pending: Value = serde_json::from_str(&self.timeouts).unwrap_or_default();
        let Some(map) = pending.as_object() else {
            return json!({});
        };
        map.iter()
            .map(|(topic, p)| (topic.clone(), p["due_unix_ms"].clone()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    fn to_json(&self) -> Value {
        let state = self.state.as_deref().map_or(Value::Null, |s| {
            serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned()))
        });
        json!({
            "saga": self.saga, "key": self.key, "status": self.status, "version": self.version,
            "started_at": self.started, "updated_at": self.updated,
            "waiting_for": self.waiting_for(), "state": state,
        })
    }
}

/// Runs a saga command.
pub async fn saga(command: SagaCommand, out: &Out) -> Result<(), Failure> {
    match command {
        SagaCommand::Schema => out.line(tchu::sql::SAGA_SCHEMA.trim_end()),
        SagaCommand::List {
            database_url,
            saga,
            all,
            limit,
        } => {
            let pool = connect(database_url).await?;
            let rows: Vec<Columns> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM tchu_sagas WHERE ($1::text IS NULL OR saga = $1) \
                 AND ($2 OR status = 'running') ORDER BY updated_at LIMIT $3"
            ))
            .bind(saga)
            .bind(all)
            .bind(limit)
            .fetch_all(&pool)
            .await
            .map_err(db)?;
            let rows: Vec<SagaRow> = rows.into_iter().map(SagaRow::from).collect();
            list(&rows, out)
        }
        SagaCommand::Show {
            database_url,
            saga,
            key,
        } => {
            let pool = connect(database_url).await?;
            let row: Option<Columns> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM tchu_sagas WHERE saga = $1 AND key = $2"
            ))
            .bind(&saga)
            .bind(&key)
            .fetch_optional(&pool)
            .await
            .map_err(db)?;
            let row = row.map(SagaRow::from).ok_or_else(|| {
                Failure::failed("not_found", format!("no saga `{saga}` with key `{key}`"))
            })?;
            let v = row.to_json();
            if out.json {
                return out.object(&v);
            }
            out.line(&serde_json::to_string_pretty(&v).unwrap_or_default())
        }
    }
}

fn list(rows: &[SagaRow], out: &Out) -> Result<(), Failure> {
    if out.json {
        let sagas: Vec<Value> = rows.iter().map(SagaRow::to_json).collect();
        return out.object(&json!({ "sagas": sagas }));
    }
    let mut lines = vec![
        ["SAGA", "KEY", "STATUS", "STARTED", "UPDATED", "WAITING FOR"]
            .map(String::from)
            .to_vec(),
    ];
    for r in rows {
        let waiting = r.waiting_for();
        let topics: Vec<&str> = waiting
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        lines.push(vec![
            r.saga.clone(),
            one_line(&r.key, 40),
            r.status.clone(),
            r.started.clone(),
            r.updated.clone(),
            topics.join(", "),
        ]);
    }
    table(out, &lines)
}

fn db(e: sqlx::Error) -> Failure {
    Failure::failed("database", e.to_string())
}

/// The database on `--database-url` or `$DATABASE_URL`, with the sagas' table readable.
async fn connect(flag: Option<String>) -> Result<PgPool, Failure> {
    let pool = crate::stores::database(flag, 2).await?;
    if let Err(e) = sqlx::query("SELECT 1 FROM tchu_sagas LIMIT 0")
        .execute(&pool)
        .await
    {
        return Err(Failure::failed(
            "database",
            format!(
                "cannot read the sagas ({e}); a service with saga handlers creates the table, \
                 or a migration from `tchu saga schema`"
            ),
        ));
    }
    Ok(pool)
}
