//! What a saga is: its state's trait, and how a handler takes part (the rest of sagas lives in
//! `crate::saga`).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The state of a saga: what one running process remembers between its events.
pub trait SagaState: Serialize + DeserializeOwned + Default + Send + Sync + 'static {
    /// The saga's name: its rows are stored under it. Keep it when the type is renamed.
    const NAME: &'static str;
    /// Whether a completed saga's row is kept (status `completed`, for audit) rather than
    /// deleted. An event for a completed saga meets the handler's `unknown` policy either way.
    const KEEP_COMPLETED: bool = false;
}

/// What a handler does with an event whose saga is not running (never started, or completed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownSaga {
    /// Parks it in the dead-letter queue as `no_saga`, with the reason (the default: nothing is
    /// dropped unseen).
    #[default]
    Park,
    /// Acknowledges it without running the handler (a late timeout, a duplicate from before
    /// completion).
    Ignore,
}

/// How a handler takes part in a saga: `#[tchu::subscribe(saga(...))]`, or
/// [`Handler::with_saga`](crate::Handler::with_saga) at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SagaSpec {
    /// The saga's name ([`SagaState::NAME`]).
    pub name: &'static str,
    /// The payload path of the correlation key.
    pub key: &'static str,
    /// Whether the event begins the saga (a new row when none runs for the key).
    pub start: bool,
    /// What happens to an event whose saga is not running.
    pub unknown: UnknownSaga,
    /// Whether a completed saga's row is kept ([`SagaState::KEEP_COMPLETED`]).
    pub keep_completed: bool,
}

impl SagaSpec {
    /// The spec of a saga of state `S` correlated by `key`.
    pub fn of<S: SagaState>(key: &'static str) -> Self {
        Self {
            name: S::NAME,
            key,
            start: false,
            unknown: UnknownSaga::default(),
            keep_completed: S::KEEP_COMPLETED,
        }
    }

    /// The event begins the saga.
    #[must_use]
    pub fn start(mut self) -> Self {
        self.start = true;
        self
    }

    /// What happens to an event whose saga is not running.
    #[must_use]
    pub fn unknown(mut self, policy: UnknownSaga) -> Self {
        self.unknown = policy;
        self
    }
}
