//! Which control headers tchu honours. The headers that steer dispatch (which handler runs,
//! which topic it runs for, which attempt it is, how long it still waits) are honoured only
//! when signed by a tchu service holding the same key: any other publisher could otherwise
//! pick a handler, skip the broker's routing, or reset a retry count.

use crate::headers::{
    CONTROL_HEADERS, INBOX_FORCE_HEADER, LATER_CONTROL_HEADERS, SIGNATURE_HEADER, is_control,
};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tchu_core::envelope::WireMessage;

/// The key control headers are signed with.
#[derive(Clone)]
pub(crate) struct SigningKey([u8; 32]);

/// Whether a message's control headers may be honoured.
#[derive(Debug, PartialEq)]
pub(crate) enum Trust {
    /// It carries none.
    NoControl,
    /// A tchu service signed them.
    Signed,
    /// Present without a valid signature.
    Untrusted(&'static str),
}

impl SigningKey {
    /// A key from a secret of any length.
    pub(crate) fn from_secret(secret: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"tchu control headers v1\0");
        h.update(secret);
        Self(h.finalize().into())
    }

    fn mac(&self, msg: &WireMessage) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(&Sha256::digest(&msg.body));
        for name in CONTROL_HEADERS {
            mac.update(b"\0");
            mac.update(name.as_bytes());
            mac.update(b"=");
            if let Some(v) = msg.headers.get(*name) {
                mac.update(canonical(v).as_bytes());
            }
        }
        for name in LATER_CONTROL_HEADERS {
            if let Some(v) = msg.headers.get(*name) {
                mac.update(b"\0");
                mac.update(name.as_bytes());
                mac.update(b"=");
                mac.update(canonical(v).as_bytes());
            }
        }
        mac
    }

    /// Signs a copy tchu is about to publish (or drops a stale signature when it carries no
    /// control header).
    pub(crate) fn sign(&self, msg: &mut WireMessage) {
        if has_control(msg) {
            let sig = hex(&self.mac(msg).finalize().into_bytes());
            msg.headers.insert(SIGNATURE_HEADER.into(), sig.into());
        } else {
            msg.headers.remove(SIGNATURE_HEADER);
        }
    }

    /// Checks a delivery's control headers.
    pub(crate) fn verify(&self, msg: &WireMessage) -> Trust {
        if !has_control(msg) {
            return Trust::NoControl;
        }
        let Some(given) = msg.headers.get(SIGNATURE_HEADER).and_then(Value::as_str) else {
            return Trust::Untrusted("control headers without a signature");
        };
        let Some(given) = unhex(given) else {
            return Trust::Untrusted("a malformed signature");
        };
        // `verify_slice` compares in constant time.
        if self.mac(msg).verify_slice(&given).is_ok() {
            Trust::Signed
        } else {
            Trust::Untrusted("a signature that does not match")
        }
    }
}

fn has_control(msg: &WireMessage) -> bool {
    msg.headers.keys().any(|k| is_control(k))
}

/// Marks a dead letter's headers for a forced inbox run when it is replayed (`tchu dlq replay
/// --force`): `dedup` handlers run it even when its key is recorded. The mark, a fresh token
/// in `x-tchu-inbox-force`, is signed with the key services derive from the broker
/// credentials of `broker_urls` (or `TCHU_SIGNING_KEY`), so only someone holding them can
/// force a re-run. A message whose control headers do not verify is refused: signing them now
/// would launder a stranger's headers.
///
/// # Errors
/// An invalid broker URL, or [`Error::Untrusted`](crate::Error::Untrusted): control headers
/// that do not verify.
pub fn mark_forced_replay(
    broker_urls: &str,
    body: &[u8],
    headers: &mut serde_json::Map<String, Value>,
) -> crate::Result<()> {
    let key = operator_key(broker_urls)?;
    as_message(body, headers, |msg| {
        msg.headers.remove(INBOX_FORCE_HEADER);
        match key.verify(msg) {
            Trust::Untrusted(why) => Err(crate::Error::Untrusted { reason: why }),
            Trust::NoControl | Trust::Signed => {
                let token = uuid::Uuid::new_v4().simple().to_string();
                msg.headers.insert(INBOX_FORCE_HEADER.into(), token.into());
                key.sign(msg);
                Ok(())
            }
        }
    })
}

/// Marks an event read from the event log for a replay into one service's queue (`tchu
/// replay`): its original routing key in `x-tchu-original-key`, so the service reads the topic
/// it was published with though the copy goes to the queue by its name, and where it was read
/// (`at`, `tchu_events.log@1234`) in `x-tchu-log-offset`, signed with the key
/// services derive from the broker credentials of `broker_urls` (or `TCHU_SIGNING_KEY`). An
/// event whose own control headers do not verify is refused: signing them now would launder a
/// stranger's headers (the tool then replays it unchanged, and the service parks it as it
/// would have live).
///
/// # Errors
/// An invalid broker URL, or [`Error::Untrusted`](crate::Error::Untrusted).
pub fn mark_log_replay(
    broker_urls: &str,
    body: &[u8],
    headers: &mut serde_json::Map<String, Value>,
    (routing_key, at): (&str, &str),
) -> crate::Result<()> {
    let key = operator_key(broker_urls)?;
    as_message(body, headers, |msg| {
        if let Trust::Untrusted(why) = key.verify(msg) {
            return Err(crate::Error::Untrusted { reason: why });
        }
        let original = crate::headers::ORIGINAL_KEY_HEADER;
        msg.headers.insert(original.into(), routing_key.into());
        msg.headers
            .insert(crate::headers::LOG_OFFSET_HEADER.into(), at.into());
        key.sign(msg);
        Ok(())
    })
}

/// Marks a message read from the event log as replayed from `at` (`tchu_events.log@1234`),
/// signed, unless its own control headers do not verify (signing them now would launder a
/// stranger's headers: it is then left unmarked, to be parked as it would have been live).
pub(crate) fn mark_replayed(key: &SigningKey, msg: &mut WireMessage, at: &str) {
    if let Trust::Untrusted(_) = key.verify(msg) {
        return;
    }
    msg.headers
        .insert(crate::headers::LOG_OFFSET_HEADER.into(), at.into());
    key.sign(msg);
}

/// Signs the control headers of a message an operator tool writes itself (the release request
/// of `tchu dlq replay` and `tchu dlq skip` for a held key), with the key services derive from
/// the broker credentials of `broker_urls` (or `TCHU_SIGNING_KEY`).
///
/// # Errors
/// An invalid broker URL.
pub fn sign_control(
    broker_urls: &str,
    body: &[u8],
    headers: &mut serde_json::Map<String, Value>,
) -> crate::Result<()> {
    let key = operator_key(broker_urls)?;
    as_message(body, headers, |msg| key.sign(msg));
    Ok(())
}

/// Runs `f` on a message of `body` and `headers`, then gives the headers back.
fn as_message<T>(
    body: &[u8],
    headers: &mut serde_json::Map<String, Value>,
    f: impl FnOnce(&mut WireMessage) -> T,
) -> T {
    let mut msg = WireMessage {
        body: body.to_vec(),
        headers: std::mem::take(headers),
        ..WireMessage::default()
    };
    let out = f(&mut msg);
    *headers = msg.headers;
    out
}

/// The key a service with the credentials of `broker_urls` signs with.
fn operator_key(broker_urls: &str) -> crate::Result<SigningKey> {
    Ok(match std::env::var(crate::headers::SIGNING_KEY_ENV) {
        Ok(k) if !k.is_empty() => SigningKey::from_secret(k.as_bytes()),
        _ => {
            let urls = crate::BrokerUrl::parse_list(broker_urls)?;
            let first = urls.first().ok_or(crate::Error::NoBrokerAddress)?;
            SigningKey::from_secret(&crate::transport::credentials_secret(first))
        }
    })
}

/// How a header value is signed: strings as they are, numbers in decimal, whatever width the
/// AMQP round trip gave them.
fn canonical(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::{ATTEMPT_HEADER, DELAY_HEADER, HANDLER_HEADER, ORIGINAL_KEY_HEADER};
    use serde_json::json;

    fn copy() -> WireMessage {
        let mut m = WireMessage {
            routing_key: "svc".into(),
            body: br#"[["{}"], {}, {}]"#.to_vec(),
            ..WireMessage::default()
        };
        m.headers.insert(HANDLER_HEADER.into(), json!("svc::h"));
        m.headers.insert(ATTEMPT_HEADER.into(), json!(2));
        m
    }

    #[test]
    fn signed_copies_verify_and_tampering_does_not() {
        let key = SigningKey::from_secret(b"k");
        let mut m = copy();
        assert_eq!(
            key.verify(&m),
            Trust::Untrusted("control headers without a signature")
        );
        key.sign(&mut m);
        assert_eq!(key.verify(&m), Trust::Signed);
        // Other headers may change (the replay tool adds its count).
        m.headers.insert("x-tchu-replayed".into(), json!(1));
        assert_eq!(key.verify(&m), Trust::Signed);
        let tampered = [
            (HANDLER_HEADER, json!("svc::other")),
            (ATTEMPT_HEADER, json!(1)),
            (DELAY_HEADER, json!(60000)),
            (ORIGINAL_KEY_HEADER, json!("admin.reset")),
        ];
        for (name, value) in tampered {
            let mut t = m.clone();
            t.headers.insert(name.into(), value);
            assert!(matches!(key.verify(&t), Trust::Untrusted(_)), "{name}");
        }
        let mut body = m.clone();
        body.body.push(b' ');
        assert!(matches!(key.verify(&body), Trust::Untrusted(_)));
        assert!(matches!(
            SigningKey::from_secret(b"other").verify(&m),
            Trust::Untrusted(_)
        ));
        let mut junk = m.clone();
        junk.headers.insert(SIGNATURE_HEADER.into(), json!("zz"));
        assert_eq!(key.verify(&junk), Trust::Untrusted("a malformed signature"));
    }

    #[test]
    fn a_later_control_header_is_signed_and_old_signatures_still_hold() {
        use crate::headers::INBOX_FORCE_HEADER;
        let key = SigningKey::from_secret(b"k");
        let mut old = copy();
        key.sign(&mut old);
        let before = old.headers[SIGNATURE_HEADER].clone();
        // The signature of a copy without the new header is the one it always had.
        let mut again = copy();
        key.sign(&mut again);
        assert_eq!(again.headers[SIGNATURE_HEADER], before);
        // Added without signing again: refused; signed: honoured.
        let mut forced = old.clone();
        forced
            .headers
            .insert(INBOX_FORCE_HEADER.into(), json!("true"));
        assert!(matches!(key.verify(&forced), Trust::Untrusted(_)));
        key.sign(&mut forced);
        assert_eq!(key.verify(&forced), Trust::Signed);
        // Alone, it needs a signature too.
        let mut bare = WireMessage::default();
        bare.headers
            .insert(INBOX_FORCE_HEADER.into(), json!("true"));
        assert_eq!(
            key.verify(&bare),
            Trust::Untrusted("control headers without a signature")
        );
    }

    #[test]
    fn numbers_sign_alike_whatever_their_width() {
        let key = SigningKey::from_secret(b"k");
        let mut m = copy();
        key.sign(&mut m);
        m.headers.insert(ATTEMPT_HEADER.into(), json!(2i64));
        assert_eq!(key.verify(&m), Trust::Signed);
    }

    #[test]
    fn plain_events_need_no_signature() {
        let key = SigningKey::from_secret(b"k");
        let mut m = WireMessage::default();
        assert_eq!(key.verify(&m), Trust::NoControl);
        m.headers.insert(SIGNATURE_HEADER.into(), json!("stale"));
        key.sign(&mut m);
        assert!(!m.headers.contains_key(SIGNATURE_HEADER));
    }
}
