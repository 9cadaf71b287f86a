//! The frame guard: what keeps a stranger's message from taking a connection down.
//!
//! Any program with credentials for the broker can publish properties and headers that the
//! broker passes on but lapin's parser refuses: a short string (a header name,
//! `content_type`, a routing key) that is not UTF-8, an entry of a type it does not know, or
//! tables nested thousands deep, which overflow the stack of lapin's I/O thread. lapin fails
//! the whole connection on a frame it cannot parse (or the process aborts), the
//! unacknowledged message comes back on the next connection, and again: one message stops a
//! service for good. lapin has no parse hook, but it takes its transport from the caller
//! (`Connection::connector`). So tchu connects through [`connect_guarded`], whose stream
//! ([`FrameGuard`]) sits between the socket (or TLS) and lapin: it finds the frame boundaries,
//! passes every frame through untouched except content headers and the methods that carry a
//! routing key, checks those without recursion against what the published parser refuses
//! (the fuzz run holds the two together), and hands on a refused one rebuilt so that lapin takes it, marked with
//! [`MALFORMED_HEADER`](tchu_core::headers::MALFORMED_HEADER). Dispatch parks such a message
//! in `<queue>.dlq` as `malformed`, once, and the connection never notices.

mod connect;
mod inspect;
mod stream;
pub(crate) mod table;
#[cfg(test)]
pub(crate) mod tests;

pub use connect::connect_guarded;
#[cfg(test)]
pub(crate) use stream::FrameGuard;
