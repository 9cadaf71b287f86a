//! The `x-tchu-*` headers tchu puts on the copies it publishes (retries, delay hops, dead
//! letters) and reads back from them.

/// Header naming the handler a parked message failed in; on redelivery only that handler runs.
pub const HANDLER_HEADER: &str = "x-tchu-handler";

/// Header holding the part of a retry delay still to wait, in milliseconds (see `plan_hops`).
pub const DELAY_HEADER: &str = "x-tchu-delay-remaining";
/// Header holding which run of the targeted handler the message is for (1-based).
pub const ATTEMPT_HEADER: &str = "x-tchu-attempt";
/// Header keeping the routing key a message had before it went through a delay or DLQ queue.
pub const ORIGINAL_KEY_HEADER: &str = "x-tchu-original-routing-key";
/// Header on a retried copy: the error of the last failed run.
pub const LAST_ERROR_HEADER: &str = "x-tchu-last-error";
/// Dead-letter header: the service queue the message was parked from.
pub const QUEUE_HEADER: &str = "x-tchu-queue";
/// Dead-letter header: the failure kind (`failed`, `rejected`, `panicked`, `undecodable`,
/// `no_handler`, `too_large`).
pub const ERROR_KIND_HEADER: &str = "x-tchu-error-kind";
/// Dead-letter header: the failure's message.
pub const ERROR_HEADER: &str = "x-tchu-error";
/// Dead-letter header: when it was parked (ISO 8601, UTC).
pub const FAILED_AT_HEADER: &str = "x-tchu-failed-at";
/// Dead-letter header: how many runs the handler had.
pub const ATTEMPTS_HEADER: &str = "x-tchu-attempts";
/// Header the `tchu dlq replay` tool sets: how many times the message was replayed.
pub const REPLAYED_HEADER: &str = "x-tchu-replayed";
/// HMAC-SHA256 of a copy's body and control headers (handler, original routing key, attempt,
/// delay), written by the tchu service that published the copy. Control headers without a
/// valid signature are never honoured: the message is parked as `untrusted`.
pub const SIGNATURE_HEADER: &str = "x-tchu-signature";
/// Environment variable holding the key control headers are signed with; without it, the key
/// is derived from the broker credentials (see the README's trust model).
pub const SIGNING_KEY_ENV: &str = "TCHU_SIGNING_KEY";
/// How many times tchu saw a message redelivered unacknowledged (a handler that killed the
/// process, or a lost connection), on classic queues; quorum queues count in
/// `x-delivery-count`. Past the service's redelivery limit the message is parked as `crashed`.
pub const REDELIVERIES_HEADER: &str = "x-tchu-redeliveries";
/// On a copy tchu had to cut to fit the broker's limits: what was dropped.
pub const TRIMMED_HEADER: &str = "x-tchu-trimmed";

/// Every header tchu itself writes; any other is the publisher's (`x-tchu-` or not).
pub(crate) const OURS: &[&str] = &[
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
    SIGNATURE_HEADER,
    REDELIVERIES_HEADER,
    TRIMMED_HEADER,
];
