//! Sagas in PostgreSQL: one row per saga in `tchu_sagas`, read and written in the transaction
//! of the step (the inbox's), locked with `FOR UPDATE` so two replicas applying events of one
//! saga at once take turns.

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
    if spec.start {
        // Waits for a concurrent step that inserted the same saga until it ends.
        sqlx::query(
            "INSERT INTO tchu_sagas (saga, key) VALUES ($1, $2) ON CONFLICT (saga, key) DO NOTHING",
        )
        .bind(spec.name)
        .bind(key)
        .execute(&mut *conn)
        .await
        .map_err(|e| store_failure("begin a saga", e))?;
    }
    let row: Option<(Option<String>, String, String)> = sqlx::query_as(
        "SELECT state, status, timeouts FROM tchu_sagas WHERE saga = $1 AND key = $2 FOR UPDATE",
    )
    .bind(spec.name)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| store_failure("load", e))?;
    let Some((state, status, timeouts)) = row else {
        return Ok(None);
    };
    if status == "completed" {
        return Ok(None);
    }
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
        sqlx::query(
            "UPDATE tchu_sagas SET state = $3, version = version + 1, updated_at = now(), \
             status = CASE WHEN $4 THEN 'completed' ELSE 'running' END, \
             completed_at = CASE WHEN $4 THEN now() END, timeouts = $5 \
             WHERE saga = $1 AND key = $2",
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
