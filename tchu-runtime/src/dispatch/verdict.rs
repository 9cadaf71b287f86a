//! What each handler's outcome means, decided without touching the broker: the one place where
//! retries are decided. Pure, and table-tested below.

use crate::handler::{Handler, HandlerError, HandlerErrorKind, Outcome};
use crate::headers::FailureKind;
use std::borrow::Cow;
use std::time::Duration;
use tchu_core::retry::RetryPolicy;
use tchu_core::rpc::ReplyEntry;

/// Why a message (or one handler's part of it) leaves the queue other than by success.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    /// The handler that failed, for a copy that must re-run only it; `None` for the message.
    pub(crate) handler: Option<Cow<'static, str>>,
    /// `x-tchu-error-kind`.
    pub(crate) kind: FailureKind,
    /// `x-tchu-error`.
    pub(crate) reason: String,
    /// `Some(delay)`: retry the handler after the delay; `None`: park in the dead-letter queue.
    pub(crate) retry_in: Option<Duration>,
    /// For a message of an ordered handler: its key, and what it waits behind.
    pub(crate) order: Option<OrderMark>,
}

/// What a parked message of an ordered handler carries: its key, its place among the parked
/// messages of that key, and for a held one the message it waits behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OrderMark {
    /// `x-tchu-order-key`.
    pub(crate) key: String,
    /// `x-tchu-held-seq`.
    pub(crate) seq: u64,
    /// `x-tchu-held-by`: the id of the first parked message of the key, for a held one.
    pub(crate) held_by: Option<String>,
}

impl Failure {
    /// Parks the message (or the handler's part of it) in the dead-letter queue.
    pub(crate) fn park(
        handler: Option<Cow<'static, str>>,
        kind: FailureKind,
        reason: String,
    ) -> Self {
        Self {
            handler,
            kind,
            reason,
            retry_in: None,
            order: None,
        }
    }
}

/// What one handler's outcome calls for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Nothing more to do for this handler.
    Done,
    /// Part of the RPC reply.
    Answer(ReplyEntry),
    /// A copy for this handler: a retry later, or a dead letter.
    Copy(Failure),
}

/// The rules one handler is judged by.
#[derive(Clone, Copy)]
pub(crate) struct Rules<'a> {
    pub(crate) name: &'a Cow<'static, str>,
    pub(crate) responder: bool,
    pub(crate) retry: RetryPolicy,
    /// `retry(on(...))`: empty, every error retries.
    pub(crate) retry_on: &'a [crate::handler::RetryOnFn],
}

impl<'a> Rules<'a> {
    pub(crate) fn of(h: &'a Handler, default_retry: RetryPolicy) -> Self {
        Self {
            name: &h.name,
            responder: h.responder,
            retry: h.retry.unwrap_or(default_retry),
            retry_on: &h.retry_on,
        }
    }
}

/// Judges one handler's outcome on its `attempt`-th run. `caller_waits`: an RPC caller waits
/// for this message's answer. `random` in `0.0..=1.0` draws the jitter.
pub(crate) fn judge(
    rules: &Rules<'_>,
    outcome: Result<Outcome, HandlerError>,
    attempt: u32,
    caller_waits: bool,
    random: f64,
) -> Verdict {
    let handler = rules.name.to_string();
    match outcome {
        Ok(Outcome::Done) => Verdict::Done,
        Ok(Outcome::Reply(value)) => Verdict::Answer(ReplyEntry::Answered {
            handler,
            value,
            is_error: false,
        }),
        Ok(Outcome::BusinessError(value)) => Verdict::Answer(ReplyEntry::Answered {
            handler,
            value,
            is_error: true,
        }),
        // The caller gets the failure; retrying or parking a request nobody will wait for
        // helps no one.
        Err(e) if rules.responder && caller_waits => Verdict::Answer(ReplyEntry::Failed {
            handler,
            error: e.message().to_owned(),
        }),
        Err(e) => Verdict::Copy(Failure {
            handler: Some(rules.name.clone()),
            kind: e.kind().into(),
            reason: e.message().to_owned(),
            retry_in: retry_delay(rules, &e, attempt, caller_waits, random),
            order: None,
        }),
    }
}

/// Whether a failed `attempt`-th run is retried, and after how long: what [`judge`] decides
/// for a failure, asked on its own by ordered handlers, which retry in their lane.
pub(crate) fn retry_delay(
    rules: &Rules<'_>,
    e: &HandlerError,
    attempt: u32,
    caller_waits: bool,
    random: f64,
) -> Option<Duration> {
    let retries = !(rules.responder && caller_waits)
        && retryable(rules, e)
        && rules.retry.retries_after(attempt);
    retries.then(|| rules.retry.delay_for(attempt, random))
}

/// A panic always may succeed next time; a rejected argument never will; any other error
/// retries when `on(...)` lists one of the types in its chain (or when there is no `on`).
fn retryable(rules: &Rules<'_>, e: &HandlerError) -> bool {
    match e.kind() {
        HandlerErrorKind::Panicked => true,
        HandlerErrorKind::Rejected
        | HandlerErrorKind::SchemaMismatch
        | HandlerErrorKind::NoSaga => false,
        _ => rules.retry_on.is_empty() || e.causes().any(|c| rules.retry_on.iter().any(|on| on(c))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tchu_core::retry::Backoff;

    #[derive(Debug)]
    struct Transient;
    impl std::fmt::Display for Transient {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transient")
        }
    }
    impl std::error::Error for Transient {}

    fn only_transient(e: &(dyn std::error::Error + 'static)) -> bool {
        e.is::<Transient>()
    }

    const THREE: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        backoff: Backoff::Fixed(Duration::from_millis(100)),
        ..RetryPolicy::NONE
    };

    const NAME: &Cow<'static, str> = &Cow::Borrowed("h");
    const ONLY_TRANSIENT: &[crate::handler::RetryOnFn] = &[only_transient];

    fn rules(responder: bool, retry: RetryPolicy, on: bool) -> Rules<'static> {
        Rules {
            name: NAME,
            responder,
            retry,
            retry_on: if on { ONLY_TRANSIENT } else { &[] },
        }
    }

    fn failed(e: impl std::error::Error + Send + Sync + 'static) -> Result<Outcome, HandlerError> {
        Err(HandlerError::failed(Box::new(e)))
    }

    fn copy(kind: &str, reason: &str, retry_ms: Option<u64>) -> Verdict {
        Verdict::Copy(Failure {
            handler: Some("h".into()),
            kind: kind.parse().expect("a failure kind"),
            reason: reason.into(),
            retry_in: retry_ms.map(Duration::from_millis),
            order: None,
        })
    }

    #[test]
    fn every_outcome_has_one_verdict() {
        let panic = || Err(HandlerError::new(HandlerErrorKind::Panicked, "boom"));
        let rejected = || Err(HandlerError::rejected("bad shape"));
        let io = || failed(std::io::Error::other("disk"));
        // (case, rules, outcome, attempt, caller waits, verdict)
        type Case = (
            &'static str,
            Rules<'static>,
            Result<Outcome, HandlerError>,
            u32,
            bool,
            Verdict,
        );
        #[rustfmt::skip]
        let table: Vec<Case> = vec![
            ("done", rules(false, THREE, false), Ok(Outcome::Done), 1, false, Verdict::Done),
            ("an observer is done in a request too", rules(false, THREE, false), Ok(Outcome::Done), 1, true, Verdict::Done),
            ("reply", rules(true, THREE, false), Ok(Outcome::Reply(json!(1))), 1, true,
                Verdict::Answer(ReplyEntry::Answered { handler: "h".into(), value: json!(1), is_error: false })),
            ("business error", rules(true, THREE, false), Ok(Outcome::BusinessError(json!({"e": 1}))), 1, true,
                Verdict::Answer(ReplyEntry::Answered { handler: "h".into(), value: json!({"e": 1}), is_error: true })),
            ("a failed responder tells its caller", rules(true, THREE, false), io(), 1, true,
                Verdict::Answer(ReplyEntry::Failed { handler: "h".into(), error: "disk".into() })),
            ("a failed responder nobody waits for retries", rules(true, THREE, false), io(), 1, false, copy("failed", "disk", Some(100))),
            ("first failure retries", rules(false, THREE, false), io(), 1, false, copy("failed", "disk", Some(100))),
            ("second failure retries", rules(false, THREE, false), io(), 2, false, copy("failed", "disk", Some(100))),
            ("last failure parks", rules(false, THREE, false), io(), 3, false, copy("failed", "disk", None)),
            ("no retry policy parks", rules(false, RetryPolicy::NONE, false), io(), 1, false, copy("failed", "disk", None)),
            ("an error not in on(...) parks", rules(false, THREE, true), io(), 1, false, copy("failed", "disk", None)),
            ("an error in on(...) retries", rules(false, THREE, true), failed(Transient), 1, false, copy("failed", "transient", Some(100))),
            ("a panic retries", rules(false, THREE, true), panic(), 1, false, copy("panicked", "boom", Some(100))),
            ("a last panic parks", rules(false, THREE, true), panic(), 3, false, copy("panicked", "boom", None)),
            ("a rejected argument never retries", rules(false, THREE, false), rejected(), 1, false, copy("rejected", "bad shape", None)),
            ("attempt beyond the policy parks", rules(false, THREE, false), io(), 9, false, copy("failed", "disk", None)),
        ];
        for (name, rules, outcome, attempt, caller_waits, want) in table {
            assert_eq!(
                judge(&rules, outcome, attempt, caller_waits, 1.0),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn jitter_draws_the_delay() {
        let jittered = RetryPolicy {
            jitter: true,
            ..THREE
        };
        let r = rules(false, jittered, false);
        let io = || failed(std::io::Error::other("disk"));
        assert_eq!(
            judge(&r, io(), 1, false, 0.25),
            copy("failed", "disk", Some(25))
        );
        assert_eq!(
            judge(&r, io(), 1, false, 0.0),
            copy("failed", "disk", Some(0))
        );
    }
}
