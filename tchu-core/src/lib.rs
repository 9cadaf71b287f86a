//! The I/O-free core of [tchu](https://docs.rs/tchu): the topic grammar and AMQP topic matching,
//! the [`Event`] trait, and the wire formats shared with Python tchu-tchu.
//!
//! Nothing here touches a socket. With default features off, only [`topic`] is built, with no
//! dependencies at all: the proc-macros use it to validate topics at compile time with the very
//! code the runtime uses at run time.

pub mod headers;
pub mod retry;
pub mod since;
pub mod topic;

#[cfg(feature = "codec")]
pub mod compat;
pub mod delay;
#[cfg(feature = "codec")]
pub mod envelope;
#[cfg(feature = "codec")]
mod event;
#[cfg(feature = "codec")]
pub mod pyjson;
#[cfg(feature = "codec")]
pub mod rpc;
#[cfg(feature = "codec")]
pub mod time;

#[cfg(feature = "codec")]
pub use envelope::{
    CeleryTask, DecodeError, Decoded, EncodeError, Envelope, Format, Headers, TchuTchu, WireMessage,
};
#[cfg(feature = "codec")]
pub use event::Event;
#[cfg(feature = "codec")]
pub use rpc::{Request, RpcError};
pub use topic::{Topic, TopicError, TopicErrorKind, TopicPattern, pattern_matches};
