//! Saga timeouts: an event a step asks the broker to deliver later ("no payment within 15
//! minutes"), held by the broker's delay levels, so it survives restarts of every replica.
//!
//! The saga's row records each pending timeout by its event's topic, with a random token the
//! delayed event carries in [`TIMEOUT_HEADER`]. When it arrives, it runs only if its token is
//! still the pending one: a timeout cancelled, asked again (the later one replaces it), or
//! left behind by a step that rolled back is acknowledged without running; one for a saga that
//! completed meets the handler's `unknown` policy.

use crate::handler::Message;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The header a saga's timeout event carries its token in: one of tchu's control headers,
/// signed by the service that publishes the timeout.
pub use crate::headers::SAGA_TIMEOUT_HEADER as TIMEOUT_HEADER;

/// A timeout the saga waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pending {
    /// What the delayed event carries in [`TIMEOUT_HEADER`].
    pub(crate) token: String,
    /// When it is due, in milliseconds since the Unix epoch (for operators).
    pub(crate) due_unix_ms: u64,
}

/// The pending timeouts of a saga, by their event's topic.
pub(crate) type Timeouts = BTreeMap<String, Pending>;

/// What a delivered event is, for its saga's timeouts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// An ordinary event.
    Event,
    /// The timeout the saga waits for (now taken off its pending ones).
    Due,
    /// A timeout the saga no longer waits for.
    Stale,
}

/// The timeout token a delivered event carries, if it is a saga's timeout.
pub(crate) fn token_of(message: &Message) -> Option<&str> {
    message
        .headers()
        .get(TIMEOUT_HEADER)
        .and_then(|t| t.as_str())
}

/// Sorts out an event of `topic` carrying `token` against the pending timeouts, taking a due
/// one off them.
pub(crate) fn arrival(topic: &str, token: Option<&str>, pending: &mut Timeouts) -> Arrival {
    let Some(token) = token else {
        return Arrival::Event;
    };
    if pending.get(topic).is_some_and(|p| p.token == token) {
        pending.remove(topic);
        Arrival::Due
    } else {
        Arrival::Stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(topic: &str, token: &str) -> Timeouts {
        let p = Pending {
            token: token.into(),
            due_unix_ms: 0,
        };
        Timeouts::from([(topic.to_owned(), p)])
    }

    #[test]
    fn only_the_pending_token_of_the_topic_is_due() {
        let mut p = pending("order.late", "t1");
        assert_eq!(arrival("order.late", None, &mut p), Arrival::Event);
        assert_eq!(arrival("order.late", Some("t0"), &mut p), Arrival::Stale);
        assert_eq!(arrival("order.late", Some("t1"), &mut p), Arrival::Due);
        assert!(p.is_empty(), "taken off once due");
        assert_eq!(arrival("order.late", Some("t1"), &mut p), Arrival::Stale);
        let mut other = pending("order.other", "t1");
        assert_eq!(
            arrival("order.late", Some("t1"), &mut other),
            Arrival::Stale
        );
    }
}
