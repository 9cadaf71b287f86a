//! One occurrence of a schedule: the message a replica sends to its service's queue when the
//! occurrence is due, and the extractor its handler takes.

use super::Compiled;
use crate::handler::{FromMessage, HandlerError, Incoming, NoReply, SCHEDULE_TOPIC_PREFIX};
use crate::headers::{OCCURRENCE_HEADER, Signer};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tchu_core::envelope::{EncodeOptions, Format, WireMessage, encode_typed};

/// An occurrence of a schedule, as its handler receives it: which one, when it was due, and
/// how many missed ones before it were dropped ([`Missed::RunOnce`](crate::Missed::RunOnce)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    schedule: String,
    id: String,
    due: SystemTime,
    missed: u32,
}

impl Occurrence {
    /// The schedule's name.
    pub fn schedule(&self) -> &str {
        &self.schedule
    }

    /// The occurrence's id, the same for every copy of it: the message id, what the inbox
    /// de-duplicates on.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// When it was due (it may run later: a retry, a replica that came back).
    pub fn due(&self) -> SystemTime {
        self.due
    }

    /// How many occurrences before this one were missed and dropped.
    pub fn missed(&self) -> u32 {
        self.missed
    }
}

impl crate::handler::Handler {
    /// A schedule that publishes an event at each occurrence, made by `make` (confirmed by the
    /// broker; a failure retries by the handler's policy). At least once: a replica killed
    /// between the broker's confirm and the end of the run makes another publish it again,
    /// inbox or not (the publish is not in the inbox's transaction). Consumers that must not
    /// see it twice de-duplicate on a field `make` fills from [`Occurrence::id`].
    #[track_caller]
    pub fn publishing<E, F>(spec: crate::handler::ScheduleSpec, make: F) -> Self
    where
        E: tchu_core::Event,
        F: Fn(&Occurrence) -> E + Send + Sync + 'static,
    {
        let make = std::sync::Arc::new(make);
        Self::every(
            spec,
            move |(run, client): (Occurrence, crate::client::Client)| {
                let event = make(&run);
                async move { client.publish(&event).await.map(drop) }
            },
        )
    }
}

/// The payload of an occurrence's message.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Payload {
    pub(crate) schedule: String,
    /// When it was due, in the schedule's time zone (for people reading the queue).
    pub(crate) due: String,
    pub(crate) due_unix_ms: i64,
    pub(crate) missed: u32,
}

impl FromMessage for Occurrence {
    type Rpc = NoReply;

    fn from_message(incoming: &Incoming) -> Result<Self, HandlerError> {
        let message = &incoming.message;
        // Admission parked any message whose control headers are not signed by the service:
        // a present occurrence header was written by one of its replicas.
        let sent_for = message
            .headers()
            .get(OCCURRENCE_HEADER)
            .and_then(|v| v.as_str());
        let p: Option<Payload> = message.decode().ok();
        match (sent_for, p) {
            (Some(name), Some(p))
                if p.schedule == name
                    && message.topic().strip_prefix(SCHEDULE_TOPIC_PREFIX) == Some(name) =>
            {
                let ms = u64::try_from(p.due_unix_ms).unwrap_or(0);
                Ok(Self {
                    schedule: p.schedule,
                    id: message.id().to_owned(),
                    due: UNIX_EPOCH + Duration::from_millis(ms),
                    missed: p.missed,
                })
            }
            _ => Err(HandlerError::rejected(format!(
                "`{}` is not an occurrence its service's schedule sent",
                message.topic()
            ))),
        }
    }
}

/// The id of the occurrence of `schedule` in `service` due at `due`: a UUID (what Celery
/// messages carry) made from those three, so every replica sending it sends the same id.
pub(crate) fn occurrence_id(service: &str, schedule: &str, due: DateTime<Utc>) -> String {
    let mut h = Sha256::new();
    for part in [service, schedule, &due.timestamp_millis().to_string()] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    let digest: [u8; 32] = h.finalize().into();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// The message of one occurrence, for the default exchange to route to `queue` only, signed.
/// Celery's format, whatever the client's: it carries the topic apart from the routing key.
pub(crate) fn message(
    queue: &str,
    s: &Compiled,
    due: DateTime<Utc>,
    missed: u32,
    sign: &Signer,
) -> crate::Result<WireMessage> {
    let id = occurrence_id(queue, &s.name, due);
    let payload = Payload {
        schedule: s.name.clone(),
        due: due.with_timezone(&s.tz).to_rfc3339(),
        due_unix_ms: due.timestamp_millis(),
        missed,
    };
    let topic = format!("{SCHEDULE_TOPIC_PREFIX}{}", s.name);
    let options = EncodeOptions {
        format: Format::CeleryV2,
        id: &id,
        is_rpc: false,
        reply_to: None,
        tchu_tchu: Default::default(),
    };
    let mut msg = encode_typed(&topic, &payload, &options).map_err(crate::Error::Encode)?;
    crate::observe::stamp(&mut msg.headers);
    msg.headers
        .insert(OCCURRENCE_HEADER.into(), s.name.clone().into());
    sign(&mut msg);
    msg.routing_key = queue.to_owned();
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_replica_names_an_occurrence_alike() {
        let due = DateTime::from_timestamp_millis(1_800_000_000_000).unwrap();
        let a = occurrence_id("svc", "report", due);
        assert_eq!(a, occurrence_id("svc", "report", due));
        assert_ne!(a, occurrence_id("svc", "other", due));
        assert_ne!(a, occurrence_id("other", "report", due));
        let later = due + chrono::TimeDelta::seconds(1);
        assert_ne!(a, occurrence_id("svc", "report", later));
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }
}
