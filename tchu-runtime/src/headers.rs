//! The `x-tchu-*` headers (the wire contract lives in [`tchu_core::headers`]), and where the
//! key that signs them comes from.

pub use tchu_core::headers::*;

/// Environment variable holding the key control headers are signed with; without it, the key
/// is derived from the broker credentials (see the README's trust model).
pub const SIGNING_KEY_ENV: &str = "TCHU_SIGNING_KEY";

/// Signs a message tchu publishes with control headers (a saga's timeout, a schedule's
/// occurrence) with the service's key, as the service signs its own copies.
#[cfg(feature = "service")]
pub(crate) type Signer =
    std::sync::Arc<dyn Fn(&mut tchu_core::envelope::WireMessage) + Send + Sync>;
