//! Sagas in memory, for services on the in-memory broker (users' unit tests): the same steps,
//! one at a time per saga, gone with the process.

use super::timeout::Timeouts;
use super::{Loaded, SagaSpec, Written};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

type SagaId = (&'static str, String);

/// A saga's row: its state, and whether it completed (kept rows only).
struct Row {
    state: Value,
    completed: bool,
    timeouts: Timeouts,
}

/// A service's sagas when it has no PostgreSQL inbox.
#[derive(Default)]
pub(crate) struct MemorySagas {
    rows: Arc<Mutex<HashMap<SagaId, Row>>>,
    turns: Mutex<HashMap<SagaId, Arc<tokio::sync::Mutex<()>>>>,
}

/// One saga's turn: held while a step runs, so steps of one saga run one after the other.
pub(super) struct Turn {
    id: SagaId,
    rows: Arc<Mutex<HashMap<SagaId, Row>>>,
    _turn: OwnedMutexGuard<()>,
}

impl MemorySagas {
    pub(super) async fn lock(&self, spec: &SagaSpec, key: &str) -> Turn {
        let id = (spec.name, key.to_owned());
        let turn = self
            .turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.clone())
            .or_default()
            .clone();
        Turn {
            id,
            rows: self.rows.clone(),
            _turn: turn.lock_owned().await,
        }
    }
}

impl Turn {
    /// As the PostgreSQL store's `load`.
    pub(super) fn load(&self, spec: &SagaSpec) -> Option<Loaded> {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        match rows.get(&self.id) {
            Some(row) if row.completed => None,
            Some(row) => Some(Loaded {
                state: Some(row.state.clone()),
                timeouts: row.timeouts.clone(),
            }),
            None if spec.start => Some(Loaded::begun()),
            None => None,
        }
    }

    pub(super) fn save(&self, spec: &SagaSpec, written: Written) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        if written.completed && !spec.keep_completed {
            rows.remove(&self.id);
        } else {
            let row = Row {
                state: written.state,
                completed: written.completed,
                timeouts: written.timeouts,
            };
            rows.insert(self.id.clone(), row);
        }
    }
}
