//! The headers of tchu's wire contract: the `x-tchu-*` headers tchu puts on the copies it
//! publishes (retries, delay hops, dead letters) and reads back, the failure kinds a dead letter
//! is labelled with, the trace headers, and the broker's own headers a copy must not keep.
//!
//! `docs/wire.md` describes the whole contract, Celery's headers included (those live with the
//! codec, in [`crate::envelope`]).

use std::fmt;
use std::str::FromStr;

/// Header naming the handler a parked message failed in; on redelivery only that handler runs.
pub const HANDLER_HEADER: &str = "x-tchu-handler";
/// Header holding the part of a retry delay still to wait, in milliseconds (see
/// [`crate::retry::plan_hops`]).
pub const DELAY_HEADER: &str = "x-tchu-delay-remaining";
/// Header holding which run of the targeted handler the message is for (1-based).
pub const ATTEMPT_HEADER: &str = "x-tchu-attempt";
/// Header keeping the routing key a message had before it went through a delay or DLQ queue.
pub const ORIGINAL_KEY_HEADER: &str = "x-tchu-original-routing-key";
/// Header on a retried copy: the error of the last failed run.
pub const LAST_ERROR_HEADER: &str = "x-tchu-last-error";
/// Dead-letter header: the service queue the message was parked from.
pub const QUEUE_HEADER: &str = "x-tchu-queue";
/// Dead-letter header: the failure kind, one of [`FailureKind`].
pub const ERROR_KIND_HEADER: &str = "x-tchu-error-kind";
/// Dead-letter header: the failure's message.
pub const ERROR_HEADER: &str = "x-tchu-error";
/// Dead-letter header: when it was parked (ISO 8601, UTC).
pub const FAILED_AT_HEADER: &str = "x-tchu-failed-at";
/// Dead-letter header: how many runs the handler had.
pub const ATTEMPTS_HEADER: &str = "x-tchu-attempts";
/// Header `tchu dlq replay --force` sets: the inbox runs the handler even when its key was
/// recorded, and records it again. A control header: honoured only when signed.
pub const INBOX_FORCE_HEADER: &str = "x-tchu-inbox-force";
/// The schema fingerprint of a typed event a tchu client published: 16 hex digits of a hash of
/// the event type's JSON Schema (see `tchu_runtime::catalog::fingerprint`). Informational: a
/// consumer whose own fingerprint differs logs it, counts it, and labels a payload that then
/// fails to decode `schema_mismatch`. Python tchu-tchu never sets it.
pub const SCHEMA_HEADER: &str = "x-tchu-schema";
/// Header the `tchu dlq replay` tool sets: how many times the message was replayed.
pub const REPLAYED_HEADER: &str = "x-tchu-replayed";
/// HMAC-SHA256 of a copy's body and control headers (handler, original routing key, attempt,
/// delay), written by the tchu service that published the copy. Control headers without a
/// valid signature are never honoured: the message is parked as `untrusted`.
pub const SIGNATURE_HEADER: &str = "x-tchu-signature";
/// The redelivery count earlier versions of tchu published with a redelivered message on classic
/// queues. No longer written (a redelivered message now runs alone from the quarantine, whose
/// broker counts); still dropped from dead letters and replays, which may carry it.
pub const REDELIVERIES_HEADER: &str = "x-tchu-redeliveries";
/// On a copy tchu had to cut to fit the broker's limits: what was dropped.
pub const TRIMMED_HEADER: &str = "x-tchu-trimmed";
/// Set by tchu's frame guard on a delivery whose properties, headers or routing key the AMQP
/// parser would refuse (text that is not UTF-8, headers nested too deep, an unknown field
/// type): what was wrong. Such a delivery is parked as `malformed`, never dispatched.
pub const MALFORMED_HEADER: &str = "x-tchu-malformed";

/// Dead-letter header on a message of an ordered handler (`ordered(key = ...)`): the value of
/// its key. Every parked message of one key holds the later ones of that key (see
/// [`HELD_BY_HEADER`]).
pub const ORDER_KEY_HEADER: &str = "x-tchu-order-key";
/// Dead-letter header on a message parked as [`FailureKind::Held`]: the id of the message of
/// its key parked first, which it waits behind.
pub const HELD_BY_HEADER: &str = "x-tchu-held-by";
/// Dead-letter header on a message of an ordered handler: its place among the parked messages
/// of its key (a count of nanoseconds, increasing in the order they were parked).
pub const HELD_SEQ_HEADER: &str = "x-tchu-held-seq";
/// On a request `tchu dlq replay` or `tchu dlq skip` sends to a service's ordered queue:
/// `replay` (the first parked message of a key runs again, then the held ones in order) or
/// `skip` (it is dropped, and the held ones run in order). Its body names the handler and the
/// key. A control header: honoured only when signed.
pub const RELEASE_HEADER: &str = "x-tchu-release";
/// On a saga's timeout event (`Saga::timeout_in`): the token the saga's row records for it.
/// The event runs as the timeout only while the token is the pending one. A control header:
/// honoured only when signed, so a stranger's event carrying it is parked as `untrusted`
/// rather than taken for a stale timeout.
pub const SAGA_TIMEOUT_HEADER: &str = "x-tchu-saga-timeout";
/// On an event replayed from the event log (`tchu replay`, or a service catching up): the log
/// it came from and its offset there, `tchu_events.log@1234`, signed like the other control
/// headers, so a handler can trust it to tell a replayed event from a live one
/// (`Message::replayed_from`), and a replayed request is not run again.
pub const LOG_OFFSET_HEADER: &str = "x-tchu-log-offset";
/// On the marker a tool writes into the event log to know where "now" is (the cut of a
/// replay, the end of a `grep`): its token. Readers skip it; no topic is routed to it.
pub const LOG_MARKER_HEADER: &str = "x-tchu-log-marker";
/// On an occurrence of a schedule, which a replica of its service sent to the service's queue:
/// the schedule's name. A control header: only a signed occurrence runs, so a stranger can
/// neither trigger a schedule's run nor take the id of one to come.
pub const OCCURRENCE_HEADER: &str = "x-tchu-occurrence";

/// Every header tchu itself writes; any other is the publisher's (`x-tchu-` or not).
pub const TCHU_HEADERS: &[&str] = &[
    HANDLER_HEADER,
    DELAY_HEADER,
    ATTEMPT_HEADER,
    ORIGINAL_KEY_HEADER,
    LAST_ERROR_HEADER,
    QUEUE_HEADER,
    ERROR_KIND_HEADER,
    ERROR_HEADER,
    FAILED_AT_HEADER,
    ATTEMPTS_HEADER,
    REPLAYED_HEADER,
    INBOX_FORCE_HEADER,
    SCHEMA_HEADER,
    SIGNATURE_HEADER,
    REDELIVERIES_HEADER,
    TRIMMED_HEADER,
    MALFORMED_HEADER,
    ORDER_KEY_HEADER,
    HELD_BY_HEADER,
    HELD_SEQ_HEADER,
    RELEASE_HEADER,
    SAGA_TIMEOUT_HEADER,
    OCCURRENCE_HEADER,
    LOG_OFFSET_HEADER,
    LOG_MARKER_HEADER,
];

/// The control headers: what decides where a copy goes and which handler it re-runs. Only a
/// copy signed by the service ([`SIGNATURE_HEADER`]) may carry them.
pub const CONTROL_HEADERS: &[&str] = &[
    HANDLER_HEADER,
    ORIGINAL_KEY_HEADER,
    ATTEMPT_HEADER,
    DELAY_HEADER,
];

/// Control headers added after the first signature format: signed only when present, so the
/// signatures of copies made before them still verify.
pub const LATER_CONTROL_HEADERS: &[&str] = &[
    INBOX_FORCE_HEADER,
    RELEASE_HEADER,
    SAGA_TIMEOUT_HEADER,
    OCCURRENCE_HEADER,
    LOG_OFFSET_HEADER,
];

/// Whether a header steers dispatch (and so needs a valid signature).
pub fn is_control(name: &str) -> bool {
    CONTROL_HEADERS.contains(&name) || LATER_CONTROL_HEADERS.contains(&name)
}

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// The vendor-specific part of the trace context, passed on unchanged.
pub const TRACESTATE: &str = "tracestate";

/// The delivery count RabbitMQ keeps on quorum queues (not to be trusted on classic ones, where
/// a publisher can set it).
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// Headers a copy never carries over: the broker's routing (`CC`, `BCC`: a copy keeping them
/// would also be routed to the queues they name, the service's own included, copy after copy)
/// and the broker's bookkeeping about the original delivery.
pub const BROKER_HEADERS: &[&str] = &[
    "CC",
    "BCC",
    "x-death",
    DELIVERY_COUNT_HEADER,
    "x-received-from",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
];

/// Why a message was dead-lettered: the value of [`ERROR_KIND_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The handler returned an error (after its retries, if any).
    Failed,
    /// The handler refused its input for good (a rejected argument: never retried).
    Rejected,
    /// The handler panicked (after its retries, if any).
    Panicked,
    /// The body is not a message tchu can decode (not JSON, not an object, a wrong shape).
    Undecodable,
    /// No handler of the service matches the message's routing key.
    NoHandler,
    /// The body is larger than the service accepts.
    TooLarge,
    /// The AMQP frame itself is malformed (headers that do not parse).
    Malformed,
    /// Control headers without a valid signature.
    Untrusted,
    /// Redelivered unacknowledged more often than the redelivery limit: its handling keeps
    /// killing the process or the connection.
    Crashed,
    /// The broker refused a copy tchu had to publish (a delay hop, a retry).
    Refused,
    /// The payload does not fit the handler's event type, and the sender's schema fingerprint
    /// ([`SCHEMA_HEADER`]) is not this service's: the two versions drifted apart.
    SchemaMismatch,
    /// Not run: an earlier message of the same key of an ordered handler is parked, and this
    /// one waits behind it ([`HELD_BY_HEADER`]) until that one is replayed or skipped.
    Held,
    /// A saga handler's event names a saga that is not running (never started, or already
    /// completed), and its handler declared `unknown = "park"`.
    NoSaga,
}

impl FailureKind {
    /// Every kind, in declaration order.
    pub const ALL: [Self; 13] = [
        Self::Failed,
        Self::Rejected,
        Self::Panicked,
        Self::Undecodable,
        Self::NoHandler,
        Self::TooLarge,
        Self::Malformed,
        Self::Untrusted,
        Self::Crashed,
        Self::Refused,
        Self::SchemaMismatch,
        Self::Held,
        Self::NoSaga,
    ];

    /// The header value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Panicked => "panicked",
            Self::Undecodable => "undecodable",
            Self::NoHandler => "no_handler",
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::Untrusted => "untrusted",
            Self::Crashed => "crashed",
            Self::Refused => "refused",
            Self::SchemaMismatch => "schema_mismatch",
            Self::Held => "held",
            Self::NoSaga => "no_saga",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A header value that names no [`FailureKind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFailureKind(pub String);

impl fmt::Display for UnknownFailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown failure kind `{}`", self.0)
    }
}

impl std::error::Error for UnknownFailureKind {}

impl FromStr for FailureKind {
    type Err = UnknownFailureKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownFailureKind(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_header_value() {
        for kind in FailureKind::ALL {
            assert_eq!(kind.as_str().parse::<FailureKind>(), Ok(kind));
        }
        assert!("exploded".parse::<FailureKind>().is_err());
    }

    #[test]
    fn every_tchu_header_is_namespaced() {
        assert!(TCHU_HEADERS.iter().all(|h| h.starts_with("x-tchu-")));
        assert!(CONTROL_HEADERS.iter().all(|h| TCHU_HEADERS.contains(h)));
        assert!(
            LATER_CONTROL_HEADERS
                .iter()
                .all(|h| TCHU_HEADERS.contains(h))
        );
    }
}
