//! A saga step: the `Saga` extractor, and the load, run and save around a saga handler.

use super::memory::MemorySagas;
use super::timeout::{self, Arrival, Pending, TIMEOUT_HEADER, Timeouts};
use super::{SagaSpec, SagaState, UnknownSaga};
use crate::client::{Client, PublishOptions};
use crate::handler::{FromMessage, HandlerError, HandlerErrorKind, Incoming, NoReply, Resources};
use crate::handler::{Message, Outcome, payload_key};
use crate::headers::Signer;
use serde_json::Value;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tchu_core::Event;
use tracing::Instrument;

/// A saga's row as a step finds it.
pub(super) struct Loaded {
    /// The state, `None` for a saga this step begins.
    pub(super) state: Option<Value>,
    pub(super) timeouts: Timeouts,
}

impl Loaded {
    /// A saga this step begins.
    pub(super) fn begun() -> Self {
        Self {
            state: None,
            timeouts: Timeouts::new(),
        }
    }
}

/// What a step leaves for the store to write.
pub(super) struct Written {
    pub(super) state: Value,
    pub(super) completed: bool,
    pub(super) timeouts: Timeouts,
}

/// The saga of the handler call in progress.
struct SagaSlot {
    name: &'static str,
    key: String,
    loaded: Option<Value>,
    /// Pending when the step began (less the one this event is, if it is due).
    timeouts: Timeouts,
    written: Mutex<Option<Result<Written, String>>>,
    /// Signs what the step publishes with control headers (its timeouts), as the service
    /// signs its own copies.
    sign: Signer,
}

tokio::task_local! {
    static SAGA_SLOT: Arc<SagaSlot>;
}

/// The saga a handler's event belongs to: its state, to read and change, saved by tchu when
/// the handler returns `Ok` (discarded when it fails).
pub struct Saga<S: SagaState> {
    state: S,
    is_new: bool,
    completed: bool,
    timeouts: Timeouts,
    client: Client,
    slot: Arc<SagaSlot>,
}

impl<S: SagaState> Saga<S> {
    /// The correlation key's value.
    pub fn key(&self) -> &str {
        &self.slot.key
    }

    /// Whether this step begins the saga.
    pub fn is_new(&self) -> bool {
        self.is_new
    }

    /// Ends the saga once this step commits: its row is deleted (or kept as `completed`, see
    /// [`SagaState::KEEP_COMPLETED`]); later events for its key meet their `unknown` policy.
    pub fn complete(&mut self) {
        self.completed = true;
    }

    /// Asks for `event` to be delivered `after` from now, held by the broker: the saga's
    /// timeout ("no payment within 15 minutes"). A handler of its topic in this saga runs
    /// then, unless the saga cancelled it, asked for it again (the later one replaces it) or
    /// completed meanwhile. Published now, with the saga's pending timeouts recorded when the
    /// step commits; a step that fails leaves a timeout nobody waits for, acknowledged
    /// unseen when it arrives.
    ///
    /// # Errors
    /// As [`Client::publish_with`].
    pub async fn timeout_in<E: Event>(&mut self, after: Duration, event: &E) -> crate::Result<()> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let options = PublishOptions::new().delay(after);
        let finish = |msg: &mut tchu_core::envelope::WireMessage| {
            msg.headers
                .insert(TIMEOUT_HEADER.into(), token.clone().into());
            (self.slot.sign)(msg);
        };
        self.client
            .publish_finished(event, &options, &finish)
            .await?;
        let due = SystemTime::now() + after;
        let due_unix_ms = due
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let pending = Pending { token, due_unix_ms };
        self.timeouts.insert(E::TOPIC.to_owned(), pending);
        Ok(())
    }

    /// Cancels the pending timeout of event type `E`, if any: when it arrives it is
    /// acknowledged without running.
    pub fn cancel_timeout<E: Event>(&mut self) {
        self.timeouts.remove(E::TOPIC);
    }

    /// The topics of the timeouts the saga waits for.
    pub fn waiting_for(&self) -> impl Iterator<Item = &str> {
        self.timeouts.keys().map(String::as_str)
    }
}

impl<S: SagaState> Deref for Saga<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.state
    }
}

impl<S: SagaState> DerefMut for Saga<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.state
    }
}

impl<S: SagaState + std::fmt::Debug> std::fmt::Debug for Saga<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saga")
            .field("name", &S::NAME)
            .field("key", &self.slot.key)
            .field("state", &self.state)
            .finish()
    }
}

impl<S: SagaState> Drop for Saga<S> {
    fn drop(&mut self) {
        // Serialised here, when the handler is done with it: the step writes it back only if
        // the handler returned `Ok`.
        let written = serde_json::to_value(&self.state)
            .map(|state| Written {
                state,
                completed: self.completed,
                timeouts: std::mem::take(&mut self.timeouts),
            })
            .map_err(|e| e.to_string());
        *self.slot.written.lock().unwrap_or_else(|e| e.into_inner()) = Some(written);
    }
}

impl<S: SagaState> FromMessage for Saga<S> {
    type Rpc = NoReply;
    const SAGA: Option<&'static str> = Some(S::NAME);

    fn from_message(incoming: &Incoming) -> Result<Self, HandlerError> {
        let slot = SAGA_SLOT
            .try_with(Arc::clone)
            .map_err(|_| HandlerError::rejected(NOT_A_SAGA_HANDLER))?;
        if slot.name != S::NAME {
            return Err(HandlerError::rejected(format!(
                "the handler takes `Saga` of `{}` but its `saga(...)` names `{}`",
                S::NAME,
                slot.name
            )));
        }
        let state = match &slot.loaded {
            None => S::default(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                HandlerError::new(
                    HandlerErrorKind::Failed,
                    format!(
                        "saga `{}` `{}`: its stored state no longer decodes: {e}",
                        S::NAME,
                        slot.key
                    ),
                )
            })?,
        };
        Ok(Self {
            state,
            is_new: slot.loaded.is_none(),
            completed: false,
            timeouts: slot.timeouts.clone(),
            client: incoming.resources.client.clone(),
            slot,
        })
    }

    fn check(resources: &Resources) -> Result<(), String> {
        if resources.transactional || resources.client.is_memory() {
            Ok(())
        } else {
            Err(
                "needs `Saga` but the service has no PostgreSQL inbox, where sagas are kept: \
                 `Service::inbox(Inbox::postgres(pool))` or `run!(inbox = ...)`"
                    .into(),
            )
        }
    }
}

const NOT_A_SAGA_HANDLER: &str =
    "`Saga` is only available to a handler declared with `saga(key = \"...\")`";

/// Runs one saga step: finds the saga's row (locked until the step ends), runs `call` with it,
/// and writes it back when `call` succeeds, in the inbox's transaction when the service has a
/// PostgreSQL inbox, else in `memory` (the in-memory broker's unit tests).
pub(crate) async fn step<F>(
    memory: &MemorySagas,
    spec: &SagaSpec,
    message: &Message,
    sign: Signer,
    call: F,
) -> Result<Outcome, HandlerError>
where
    F: Future<Output = Result<Outcome, HandlerError>> + Send,
{
    let key = saga_key(spec, message)?;
    #[cfg(feature = "postgres")]
    if let Some(tx) = crate::inbox::current_tx() {
        let Some(loaded) = super::postgres::load(&tx, spec, &key).await? else {
            return not_running(spec, &key, message);
        };
        let Some(ran) = run_with(spec, &key, message, loaded, sign, call).await? else {
            return Ok(Outcome::Done);
        };
        let events = ran.events();
        let saved = super::postgres::save(&tx, spec, &key, ran.written).await;
        saved.inspect_err(|_| count(spec, "failed"))?;
        events.for_each(|e| count(spec, e));
        return Ok(ran.outcome);
    }
    let turn = memory.lock(spec, &key).await;
    let Some(loaded) = turn.load(spec) else {
        return not_running(spec, &key, message);
    };
    let Some(ran) = run_with(spec, &key, message, loaded, sign, call).await? else {
        return Ok(Outcome::Done);
    };
    ran.events().for_each(|e| count(spec, e));
    turn.save(spec, ran.written);
    Ok(ran.outcome)
}

/// The longest correlation key a saga is stored under.
const MAX_KEY_BYTES: usize = 200;

/// The event's correlation key: refused (never retried) when it cannot name a row.
fn saga_key(spec: &SagaSpec, message: &Message) -> Result<String, HandlerError> {
    let key = payload_key(message.payload(), spec.key, "saga").map_err(HandlerError::rejected)?;
    if key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control) {
        return Err(HandlerError::rejected(format!(
            "`saga(key = \"{}\")`: the key is longer than {MAX_KEY_BYTES} bytes or holds \
             control characters",
            spec.key
        )));
    }
    Ok(key)
}

/// A step that ran and succeeded: what to write, and what it did.
struct Ran {
    written: Written,
    outcome: Outcome,
    began: bool,
    timed_out: bool,
}

impl Ran {
    /// What the step did, for `tchu_saga_total{saga, event}` once it is saved.
    fn events(&self) -> impl Iterator<Item = &'static str> + use<> {
        let happened = [
            (self.began, "started"),
            (self.timed_out, "timed_out"),
            (self.written.completed, "completed"),
        ];
        happened.into_iter().filter(|(h, _)| *h).map(|(_, e)| e)
    }
}

/// A timeout acknowledged without running, and why.
fn stale(spec: &SagaSpec, key: &str, message: &Message, why: &str) {
    count(spec, "stale_timeout");
    let topic = message.topic();
    tracing::info!(
        saga = spec.name,
        key,
        topic,
        why,
        "a stale saga timeout; acknowledged without running"
    );
}

/// One more saga event in `tchu_saga_total{saga, event}`.
fn count(spec: &SagaSpec, event: &'static str) {
    metrics::counter!("tchu_saga_total", "saga" => spec.name, "event" => event).increment(1);
}

/// Runs the handler with the saga in its slot, in a `tchu.saga.step` span. `None` for a
/// timeout the saga no longer waits for: not run, nothing to write.
async fn run_with<F>(
    spec: &SagaSpec,
    key: &str,
    message: &Message,
    loaded: Loaded,
    sign: Signer,
    call: F,
) -> Result<Option<Ran>, HandlerError>
where
    F: Future<Output = Result<Outcome, HandlerError>> + Send,
{
    let mut timeouts = loaded.timeouts;
    let token = timeout::token_of(message);
    let arrival = timeout::arrival(message.topic(), token, &mut timeouts);
    if arrival == Arrival::Stale {
        stale(spec, key, message, "the saga no longer waits for it");
        return Ok(None);
    }
    let began = loaded.state.is_none();
    let span = tracing::info_span!("tchu.saga.step", saga = spec.name, key, began);
    let slot = Arc::new(SagaSlot {
        name: spec.name,
        key: key.to_owned(),
        loaded: loaded.state,
        timeouts,
        written: Mutex::new(None),
        sign,
    });
    let ran = SAGA_SLOT.scope(slot.clone(), call).instrument(span).await;
    let outcome = ran.inspect_err(|_| count(spec, "failed"))?;
    if Arc::strong_count(&slot) > 1 {
        count(spec, "failed");
        return Err(HandlerError::new(
            HandlerErrorKind::Failed,
            format!(
                "saga `{}` `{key}`: the handler kept its `Saga` past its end (in a spawned task?), so the step cannot be saved",
                spec.name
            ),
        ));
    }
    let written = slot
        .written
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    match written {
        Some(Ok(written)) => Ok(Some(Ran {
            written,
            outcome,
            began,
            timed_out: arrival == Arrival::Due,
        })),
        Some(Err(e)) => Err(HandlerError::new(
            HandlerErrorKind::Failed,
            format!(
                "saga `{}` `{key}`: its state does not serialise: {e}",
                spec.name
            ),
        )),
        None => Err(HandlerError::rejected(format!(
            "the handler is declared with `saga(...)` but takes no `Saga<{}>`",
            spec.name
        ))),
    }
}

/// An event for a saga that is not running: parked or ignored, as the handler declared; a
/// timeout of a saga that completed (or of a step that never committed) is stale, and
/// acknowledged.
fn not_running(spec: &SagaSpec, key: &str, message: &Message) -> Result<Outcome, HandlerError> {
    if timeout::token_of(message).is_some() {
        stale(spec, key, message, "its saga is no longer running");
        return Ok(Outcome::Done);
    }
    count(spec, "no_saga");
    match spec.unknown {
        UnknownSaga::Ignore => {
            tracing::info!(saga = spec.name, key, "no such saga running; event ignored");
            Ok(Outcome::Done)
        }
        UnknownSaga::Park => Err(HandlerError::new(
            HandlerErrorKind::NoSaga,
            format!(
                "no saga `{}` with key `{key}` is running (never started, or completed)",
                spec.name
            ),
        )),
    }
}
