//! `tchu inbox schema`, `tchu outbox schema|relay|pending`: the PostgreSQL stores.

use crate::exit::Failure;
use crate::output::Out;
use clap::Subcommand;
use tchu::sqlx::PgPool;

/// `tchu inbox ...`.
#[derive(Debug, Subcommand)]
pub enum InboxCommand {
    /// Print the SQL of the `tchu_inbox` table (idempotent), for migrations of your own
    Schema,
}

/// `tchu outbox ...`.
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Print the SQL of the `tchu_outbox` table (idempotent), for migrations of your own
    Schema,
    /// Publish what services stored in the outbox, until SIGINT or SIGTERM
    Relay {
        /// PostgreSQL URL [default: $DATABASE_URL]
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// Messages per transaction (a relay killed mid-batch publishes at most these twice)
        #[arg(long, default_value_t = tchu::outbox::DEFAULT_BATCH)]
        batch: usize,
    },
    /// Print how many messages wait in the outbox
    Pending {
        /// PostgreSQL URL [default: $DATABASE_URL]
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
}

/// Runs an inbox command.
pub fn inbox(command: &InboxCommand, out: &Out) -> Result<(), Failure> {
    match command {
        InboxCommand::Schema => out.line(tchu::sql::INBOX_SCHEMA.trim_end()),
    }
}

/// Runs an outbox command.
pub async fn outbox(url: &str, command: OutboxCommand, out: &Out) -> Result<(), Failure> {
    match command {
        OutboxCommand::Schema => out.line(tchu::sql::OUTBOX_SCHEMA.trim_end()),
        OutboxCommand::Relay {
            database_url,
            batch,
        } => {
            let outbox = connect(database_url).await?.batch_size(batch);
            let client = tchu::Client::connect(url)
                .await
                .map_err(|e| Failure::from_tchu(&e))?;
            out.info(format_args!(
                "relaying the outbox to {}",
                tchu::redact_url(url)
            ));
            outbox
                .relay()
                .run(&client)
                .await
                .map_err(|e| Failure::from_tchu(&e))?;
            client.close().await;
            Ok(())
        }
        OutboxCommand::Pending { database_url } => {
            let outbox = connect(database_url).await?;
            let db =
                |e: tchu::Error| Failure::failed("database", tchu::error_chain(&e).to_string());
            let pending = outbox.pending().await.map_err(db)?;
            let parked = outbox.parked().await.map_err(db)?;
            out.object(&serde_json::json!({ "pending": pending, "parked": parked }))
        }
    }
}

/// The outbox on `--database-url` or `$DATABASE_URL`. Its tables are not created here (the
/// tool's role may lack the right): the services' `Outbox::new` or a migration from
/// `tchu outbox schema` creates them.
async fn connect(flag: Option<String>) -> Result<tchu::Outbox, Failure> {
    let pool = database(flag, 4).await?;
    let outbox = tchu::Outbox::unmanaged(pool);
    if let Err(e) = outbox.pending().await {
        return Err(Failure::failed(
            "database",
            format!(
                "cannot read the outbox ({e}); create its tables with a service's \
                 `Outbox::new` or the SQL of `tchu outbox schema`"
            ),
        ));
    }
    Ok(outbox)
}

/// A pool of `connections` on `--database-url` or `$DATABASE_URL`.
pub async fn database(flag: Option<String>, connections: u32) -> Result<PgPool, Failure> {
    let url = flag
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| Failure::usage("no database: give --database-url or set DATABASE_URL"))?;
    tchu::sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(std::time::Duration::from_secs(15))
        .connect(&url)
        .await
        .map_err(|e| Failure::connect(format!("cannot connect to PostgreSQL: {e}")))
}
