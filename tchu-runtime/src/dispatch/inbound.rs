//! Admission: what a delivery is, before any handler runs. Either a message to dispatch
//! ([`Inbound`]), or what to do with it instead ([`Disposition`]). Pure, and table-tested below.

use super::Disposition;
use super::trust::{SigningKey, Trust};
use super::verdict::Failure;
use crate::headers::{
    ATTEMPT_HEADER, CONTROL_HEADERS, DELAY_HEADER, DELIVERY_COUNT_HEADER, FailureKind,
    HANDLER_HEADER, MALFORMED_HEADER, ORIGINAL_KEY_HEADER,
};
use serde_json::Value;
use tchu_core::envelope::{Decoded, Envelope, WireMessage, decode};

/// A message admitted for dispatch.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub(crate) env: Envelope,
    /// The handler a retried or replayed copy is for (`x-tchu-handler`).
    pub(crate) targeted: Option<String>,
    /// Which run of the targeted handler this is (1-based).
    pub(crate) attempt: u32,
    /// Where the RPC answer goes, when the sender asked for one.
    pub(crate) reply_to: Option<String>,
}

/// Admits a delivery, or says what to do with it instead. Restores the routing key a copy
/// had before it went through a delay or dead-letter queue.
pub(crate) fn admit(msg: &mut WireMessage, limits: &Limits<'_>) -> Result<Inbound, Disposition> {
    // First, as nothing below may rely on a control header before it is verified.
    if let Some(turned_away) = untrusted(msg, limits.key) {
        return Err(turned_away);
    }
    // The routing key a copy had before it went through a delay or dead-letter queue: what
    // every copy made from here on keeps.
    if let Some(key) = msg.headers.get(ORIGINAL_KEY_HEADER).and_then(Value::as_str) {
        msg.routing_key = key.to_owned();
    }
    if msg.body.len() > limits.max_bytes {
        let reason = format!(
            "the message is {} bytes, over the limit of {} bytes",
            msg.body.len(),
            limits.max_bytes
        );
        return Err(park(FailureKind::TooLarge, reason));
    }
    if let Some(what) = malformed(msg) {
        return Err(park(
            FailureKind::Malformed,
            format!("the AMQP frame could not be read as sent: {what}"),
        ));
    }
    if limits.quarantined
        && let Some(d) = crashed(msg, limits.redelivery_limit)
    {
        return Err(d);
    }
    // A retry still waiting: on to the next delay tier, without running anything.
    if let Some(left) = msg
        .headers
        .get(DELAY_HEADER)
        .and_then(Value::as_u64)
        .filter(|l| *l > 0)
    {
        return Err(Disposition::DelayHop { remaining_ms: left });
    }
    let env = match decode(msg) {
        Ok(Decoded::Event(env)) => env,
        Ok(Decoded::ForeignTask { task }) => return Err(Disposition::Ignore { task }),
        Err(e) => return Err(park(FailureKind::Undecodable, e.to_string())),
    };
    let targeted = msg
        .headers
        .get(HANDLER_HEADER)
        .and_then(Value::as_str)
        .map(str::to_owned);
    let attempt = match targeted {
        Some(_) => msg
            .headers
            .get(ATTEMPT_HEADER)
            .and_then(Value::as_u64)
            .map_or(1, |a| a.clamp(1, u64::from(u32::MAX)) as u32),
        None => 1,
    };
    let reply_to = if env.is_rpc {
        msg.properties.reply_to.clone()
    } else {
        None
    };
    Ok(Inbound {
        env,
        targeted,
        attempt,
        reply_to,
    })
}

/// Control headers a stranger wrote: parked, before anything (a run, or a copy tchu would sign)
/// could honour them.
pub(crate) fn untrusted(msg: &WireMessage, key: &SigningKey) -> Option<Disposition> {
    let Trust::Untrusted(why) = key.verify(msg) else {
        return None;
    };
    let reason = format!(
        "{why}: control headers ({}) are honoured only from tchu services holding the signing key",
        CONTROL_HEADERS.join(", ")
    );
    Some(park(FailureKind::Untrusted, reason))
}

/// What the frame guard found wrong in a delivery's routing key, properties or headers (see
/// `transport::amqp::guard`): it hands lapin a repaired frame marked with
/// [`MALFORMED_HEADER`] instead of one that would close the connection and bring the message
/// back on the next one.
fn malformed(msg: &WireMessage) -> Option<String> {
    let reason = msg.headers.get(MALFORMED_HEADER)?;
    Some(match reason {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// What admission checks a delivery against.
pub(crate) struct Limits<'a> {
    /// The largest body handled.
    pub(crate) max_bytes: usize,
    /// How many runs that end the process a message gets before it is parked.
    pub(crate) redelivery_limit: u32,
    /// Checks control headers.
    pub(crate) key: &'a SigningKey,
    /// Whether the delivery comes from the quarantine, where a redelivered message runs alone.
    pub(crate) quarantined: bool,
}

/// The guard against a message that kills the process (an abort, an out-of-memory kill, a
/// stack overflow in a handler), for a message taken from the quarantine. It got there because
/// it was redelivered: it ran once on the service queue (or was merely in flight) when a
/// process ended. There it runs alone, so each time it came back to the quarantine (the
/// broker counts, `x-delivery-count`: the quarantine is a quorum queue) a run of it ended the
/// process. Past `limit` runs it is parked instead.
fn crashed(msg: &WireMessage, limit: u32) -> Option<Disposition> {
    let returns = msg
        .headers
        .get(DELIVERY_COUNT_HEADER)
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let runs = returns.saturating_add(1);
    if runs < u64::from(limit) {
        return None;
    }
    let reason = format!(
        "ended the process {runs} times (once on the service queue, then {returns} times running alone), the limit is {limit}"
    );
    Some(park(FailureKind::Crashed, reason))
}

fn park(kind: FailureKind, reason: String) -> Disposition {
    Disposition::Copies {
        failures: vec![Failure::park(None, kind, reason)],
        attempt: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tchu_core::envelope::{EncodeOptions, Format, encode};

    fn key() -> SigningKey {
        SigningKey::from_secret(b"test")
    }

    fn event(topic: &str) -> WireMessage {
        encode(
            topic,
            &json!({"n": 1}),
            &EncodeOptions {
                format: Format::CeleryV2,
                id: "id-1",
                is_rpc: false,
                reply_to: Some("caller"),
                ..Default::default()
            },
        )
        .unwrap()
    }

    /// With a header set by a stranger.
    fn with(mut m: WireMessage, name: &str, v: Value) -> WireMessage {
        m.headers.insert(name.into(), v);
        m
    }

    /// With a header set by a tchu service (signed).
    fn signed(m: WireMessage, name: &str, v: Value) -> WireMessage {
        let mut m = with(m, name, v);
        key().sign(&mut m);
        m
    }

    fn limits(key: &SigningKey) -> Limits<'_> {
        Limits {
            max_bytes: 1024,
            redelivery_limit: 5,
            key,
            quarantined: false,
        }
    }

    fn admitted(msg: &mut WireMessage) -> Inbound {
        admit(msg, &limits(&key())).unwrap()
    }

    fn kind(d: &Disposition) -> String {
        match d {
            Disposition::Copies { failures, .. } => failures[0].kind.to_string(),
            other => format!("{other:?}"),
        }
    }

    fn check_admission(cases: Vec<(&str, WireMessage, &str)>) {
        for (name, mut msg, want) in cases {
            let got = match admit(&mut msg, &limits(&key())) {
                Ok(_) => "dispatch".to_owned(),
                Err(d) => kind(&d),
            };
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn admission_by_shape() {
        let mut oversized = event("a.b");
        oversized.body = vec![b' '; 2048];
        let mut not_json = event("a.b");
        not_json.body = b"{nope".to_vec();
        let foreign = with(event("a.b"), "task", json!("tchu_tchu.handler.x"));
        let marked = |why: &str| with(event("a.b"), MALFORMED_HEADER, json!(why));
        check_admission(vec![
            ("an event", event("a.b"), "dispatch"),
            ("too large", oversized, "too_large"),
            ("not JSON", not_json, "undecodable"),
            (
                "a foreign Celery task",
                foreign,
                "Ignore { task: \"tchu_tchu.handler.x\" }",
            ),
            (
                "marked by the frame guard",
                marked("the header name \"x-\u{FFFD}(\" is not UTF-8"),
                "malformed",
            ),
        ]);
    }

    #[test]
    fn admission_by_trust() {
        let mut forged = signed(event("a.b"), HANDLER_HEADER, json!("svc::h"));
        forged
            .headers
            .insert(HANDLER_HEADER.into(), json!("svc::admin"));
        let stranger = |name: &str, value: Value| with(event("a.b"), name, value);
        check_admission(vec![
            (
                "a delay hop",
                signed(event("a.b"), DELAY_HEADER, json!(500)),
                "DelayHop { remaining_ms: 500 }",
            ),
            (
                "no delay left",
                signed(event("a.b"), DELAY_HEADER, json!(0)),
                "dispatch",
            ),
            (
                "a stranger's delay",
                stranger(DELAY_HEADER, json!(60000)),
                "untrusted",
            ),
            (
                "a stranger's handler",
                stranger(HANDLER_HEADER, json!("svc::h")),
                "untrusted",
            ),
            (
                "a stranger's attempt",
                stranger(ATTEMPT_HEADER, json!(1)),
                "untrusted",
            ),
            (
                "a stranger's topic",
                stranger(ORIGINAL_KEY_HEADER, json!("admin.x")),
                "untrusted",
            ),
            ("a forged handler", forged, "untrusted"),
        ]);
    }

    #[test]
    fn runs_that_ended_the_process_are_counted_in_the_quarantine_only() {
        let key = key();
        let outcome = |m: WireMessage, quarantined: bool| {
            let mut m = m;
            let limits = Limits {
                quarantined,
                ..limits(&key)
            };
            match admit(&mut m, &limits) {
                Ok(_) => "dispatch".to_owned(),
                Err(d) => kind(&d),
            }
        };
        let returned = |n: u64| with(event("a.b"), "x-delivery-count", json!(n));
        // Limit 5: one run on the service queue, then four alone in the quarantine.
        assert_eq!(outcome(event("a.b"), true), "dispatch");
        assert_eq!(outcome(returned(3), true), "dispatch");
        assert_eq!(outcome(returned(4), true), "crashed");
        // On the service queue the header is a publisher's (or a quorum queue's count of
        // returns, which blames whatever was in flight): it decides nothing.
        assert_eq!(outcome(returned(9), false), "dispatch");
    }

    #[test]
    fn copies_are_targeted_and_counted() {
        let m = signed(event("a.b"), HANDLER_HEADER, json!("svc::h"));
        let mut m = signed(m, ATTEMPT_HEADER, json!(3));
        let i = admitted(&mut m);
        assert_eq!(i.targeted.as_deref(), Some("svc::h"));
        assert_eq!(i.attempt, 3);
        // An attempt header without a target counts for nothing; zero is the first run.
        let mut m = signed(event("a.b"), ATTEMPT_HEADER, json!(7));
        assert_eq!(admitted(&mut m).attempt, 1);
        let m = signed(event("a.b"), HANDLER_HEADER, json!("h"));
        let mut m = signed(m, ATTEMPT_HEADER, json!(0));
        assert_eq!(admitted(&mut m).attempt, 1);
    }

    #[test]
    fn a_copy_gets_its_original_routing_key_back() {
        let mut m = event("a.b");
        m.routing_key = "svc.delay.100ms".into();
        let mut m = signed(m, ORIGINAL_KEY_HEADER, json!("a.b"));
        admitted(&mut m);
        assert_eq!(m.routing_key, "a.b");
    }

    #[test]
    fn only_requests_have_somewhere_to_answer() {
        let mut plain = event("a.b");
        assert_eq!(admitted(&mut plain).reply_to, None);
        let mut rpc = encode(
            "a.b",
            &json!({}),
            &EncodeOptions {
                format: Format::CeleryV2,
                id: "id",
                is_rpc: true,
                reply_to: Some("caller"),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(admitted(&mut rpc).reply_to.as_deref(), Some("caller"));
    }
}
