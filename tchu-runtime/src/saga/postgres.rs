//! Sagas in PostgreSQL: one row per saga in `tchu_sagas`, read and written in the transaction
//! of the step (the inbox's), under a transaction-scoped advisory lock per saga (and the row's
//! `FOR UPDATE`), so two replicas applying events of one saga at once take turns.

use super::{Loaded, SagaSpec, Written};
use crate::handler::{HandlerError, HandlerErrorKind};
use crate::inbox::Tx;

fn store_failure(what: &str, e: impl std::fmt::Display) -> HandlerError {
    HandlerError::new(HandlerErrorKind::Failed, format!("saga store: {what}: {e}"))
}

/// The saga's row, locked until the step's transaction ends; `None` when it is not running
/// (no row, or a completed one) and the event does not begin it.
pub(super) async fn load(
    tx: &Tx,
    spec: &SagaSpec,
    key: &str,
) -> Result<Option<Loaded>, HandlerError> {
    let mut conn = tx.lock().await.map_err(|e| store_failure("begin", e))?;
    // One step of a saga at a time, its row or not: the row of a saga being begun exists for
    // no one else until that step commits, and an event racing it (its own timeout, due
    // before the step ends) would otherwise find no saga.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7379012))")
        .bind(format!("{}\u{1f}{key}", spec.name))
        .execute(&mut *conn)
        .await
        .map_err(|e| store_failure("lock", e))?;
    let row: Option<(Option<String>, String, String)> = sqlx::query_as(
        "SELECT state, status, timeouts FROM tchu_sagas WHERE saga = $1 AND key = $2 FOR UPDATE",
    )
    .bind(spec.name)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| store_failure("load", e))?;
    let (state, timeouts) = match row {
        None if spec.start => return Ok(Some(Loaded::begun())),
        Some((_, status, _)) if status == "completed" => return Ok(None),
        None => return Ok(None),
        Some((state, _, timeouts)) => (state, timeouts),
    };
    let state = state
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| store_failure("read the stored state", e))?;
    let timeouts = serde_json::from_str(&timeouts)
        .map_err(|e| store_failure("read the pending timeouts", e))?;
    Ok(Some(Loaded { state, timeouts }))
}

/// Writes the step's state back, or ends the saga.
pub(super) async fn save(
    tx: &Tx,
    spec: &SagaSpec,
    key: &str,
    written: Written,
) -> Result<(), HandlerError> {
    let mut conn = tx.lock().await.map_err(|e| store_failure("begin", e))?;
    let timeouts = if written.completed {
        String::from("{}")
    } else {
        serde_json::to_string(&written.timeouts).map_err(|e| store_failure("save", e))?
    };
    let query = if written.completed && !spec.keep_completed {
        sqlx::query("DELETE FROM tchu_sagas WHERE saga = $1 AND key = $2")
            .bind(spec.name)
            .bind(key)
    } else {
        // Inserted by the step that begins it (version 1), updated by every later one.
        sqlx::query(
            "INSERT INTO tchu_sagas (saga, key, state, status, version, timeouts, completed_at) \
             VALUES ($1, $2, $3, CASE WHEN $4 THEN 'completed' ELSE 'running' END, 1, $5, \
             CASE WHEN $4 THEN now() END) \
             ON CONFLICT (saga, key) DO UPDATE SET state = EXCLUDED.state, \
             version = tchu_sagas.version + 1, updated_at = now(), status = EXCLUDED.status, \
             completed_at = EXCLUDED.completed_at, timeouts = EXCLUDED.timeouts",
        )
        .bind(spec.name)
        .bind(key)
        .bind(written.state.to_string())
        .bind(written.completed)
        .bind(timeouts)
    };
    query
        .execute(&mut *conn)
        .await
        .map_err(|e| store_failure("save", e))?;
    Ok(())
}
