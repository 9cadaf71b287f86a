//! Sagas: the state of one business process (an order, a signup) kept across the events that
//! move it on, one row per running process, correlated by a key in each event.
//!
//! A saga is declared, not wired: a state type implementing [`SagaState`], and handlers that
//! take a [`Saga`] of it, marked `#[tchu::subscribe(saga(key = "order_id"))]` (the handler
//! that begins the process adds `start`). tchu loads the saga's row before the handler runs,
//! locked, and writes it back after the handler returns `Ok`, in the same PostgreSQL
//! transaction as the handler's own writes, the outbox's messages and the inbox record: a step
//! happens once, or not at all.
//!
//! ```no_run
//! use tchu_runtime::{Saga, SagaState};
//!
//! #[derive(Default, serde::Serialize, serde::Deserialize)]
//! struct Order {
//!     cents: i64,
//!     paid: bool,
//! }
//!
//! impl SagaState for Order {
//!     const NAME: &'static str = "order";
//! }
//!
//! // #[tchu::subscribe(saga(key = "order_id", start))]
//! async fn placed(mut order: Saga<Order>) -> tchu_runtime::Result<()> {
//!     order.cents = 1250;
//!     Ok(())
//! }
//! ```

#[cfg(feature = "service")]
mod memory;
#[cfg(all(feature = "service", feature = "postgres"))]
mod postgres;
#[cfg(feature = "service")]
mod step;
#[cfg(feature = "service")]
mod timeout;

pub use crate::handler::{SagaSpec, SagaState, UnknownSaga};
#[cfg(feature = "service")]
pub(crate) use memory::MemorySagas;
#[cfg(feature = "service")]
pub use step::Saga;
#[cfg(feature = "service")]
pub(crate) use step::step;
#[cfg(feature = "service")]
use step::{Loaded, Written};
#[cfg(feature = "service")]
pub use timeout::TIMEOUT_HEADER;
