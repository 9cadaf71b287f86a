//! Admission: what a delivery is, before any handler runs. Either a message to dispatch
//! ([`Inbound`]), or what to do with it instead ([`Disposition`]). Pure, and table-tested below.

use super::Disposition;
use super::verdict::Failure;
use crate::headers::{ATTEMPT_HEADER, DELAY_HEADER, HANDLER_HEADER, ORIGINAL_KEY_HEADER};
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
pub(crate) fn admit(msg: &mut WireMessage, max_bytes: usize) -> Result<Inbound, Disposition> {
    // A retry still waiting: on to the next delay tier, without running anything.
    if let Some(left) = msg
        .headers
        .get(DELAY_HEADER)
        .and_then(Value::as_u64)
        .filter(|l| *l > 0)
    {
        return Err(Disposition::DelayHop { remaining_ms: left });
    }
    if msg.body.len() > max_bytes {
        let reason = format!(
            "the message is {} bytes, over the limit of {max_bytes} bytes",
            msg.body.len()
        );
        return Err(park("too_large", reason));
    }
    if let Some(key) = msg.headers.get(ORIGINAL_KEY_HEADER).and_then(Value::as_str) {
        msg.routing_key = key.to_owned();
    }
    let env = match decode(msg) {
        Ok(Decoded::Event(env)) => env,
        Ok(Decoded::ForeignTask { task }) => return Err(Disposition::Ignore { task }),
        Err(e) => return Err(park("undecodable", e.to_string())),
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

fn park(kind: &'static str, reason: String) -> Disposition {
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

    fn event(topic: &str) -> WireMessage {
        encode(
            topic,
            &json!({"n": 1}),
            &EncodeOptions {
                format: Format::CeleryV2,
                id: "id-1",
                is_rpc: false,
                reply_to: Some("caller"),
            },
        )
        .unwrap()
    }

    fn with(mut m: WireMessage, key: &str, v: Value) -> WireMessage {
        m.headers.insert(key.into(), v);
        m
    }

    fn kind(d: &Disposition) -> String {
        match d {
            Disposition::Copies { failures, .. } => failures[0].kind.to_owned(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn admission_table() {
        let mut oversized = event("a.b");
        oversized.body = vec![b' '; 2048];
        let mut not_json = event("a.b");
        not_json.body = b"{nope".to_vec();
        let foreign = with(event("a.b"), "task", json!("tchu_tchu.handler.x"));
        let cases: Vec<(&str, WireMessage, &str)> = vec![
            ("an event", event("a.b"), "dispatch"),
            (
                "a delay hop",
                with(event("a.b"), DELAY_HEADER, json!(500)),
                "DelayHop { remaining_ms: 500 }",
            ),
            (
                "no delay left",
                with(event("a.b"), DELAY_HEADER, json!(0)),
                "dispatch",
            ),
            ("too large", oversized, "too_large"),
            ("not JSON", not_json, "undecodable"),
            (
                "a foreign Celery task",
                foreign,
                "Ignore { task: \"tchu_tchu.handler.x\" }",
            ),
        ];
        for (name, mut msg, want) in cases {
            let got = match admit(&mut msg, 1024) {
                Ok(_) => "dispatch".to_owned(),
                Err(d) => kind(&d),
            };
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn copies_are_targeted_and_counted() {
        let mut m = with(event("a.b"), HANDLER_HEADER, json!("svc::h"));
        m = with(m, ATTEMPT_HEADER, json!(3));
        let i = admit(&mut m, 1 << 20).unwrap();
        assert_eq!(i.targeted.as_deref(), Some("svc::h"));
        assert_eq!(i.attempt, 3);
        // An attempt header without a target counts for nothing; zero is the first run.
        let mut m = with(event("a.b"), ATTEMPT_HEADER, json!(7));
        assert_eq!(admit(&mut m, 1 << 20).unwrap().attempt, 1);
        let mut m = with(
            with(event("a.b"), HANDLER_HEADER, json!("h")),
            ATTEMPT_HEADER,
            json!(0),
        );
        assert_eq!(admit(&mut m, 1 << 20).unwrap().attempt, 1);
    }

    #[test]
    fn a_copy_gets_its_original_routing_key_back() {
        let mut m = event("a.b");
        m.routing_key = "svc.delay.100ms".into();
        let mut m = with(m, ORIGINAL_KEY_HEADER, json!("a.b"));
        admit(&mut m, 1 << 20).unwrap();
        assert_eq!(m.routing_key, "a.b");
    }

    #[test]
    fn only_requests_have_somewhere_to_answer() {
        let mut plain = event("a.b");
        assert_eq!(admit(&mut plain, 1 << 20).unwrap().reply_to, None);
        let mut rpc = encode(
            "a.b",
            &json!({}),
            &EncodeOptions {
                format: Format::CeleryV2,
                id: "id",
                is_rpc: true,
                reply_to: Some("caller"),
            },
        )
        .unwrap();
        assert_eq!(
            admit(&mut rpc, 1 << 20).unwrap().reply_to.as_deref(),
            Some("caller")
        );
    }
}
