//! [`PublishOptions`]: what one publish may add to the message tchu builds: a delay, headers of
//! the caller's own, a time to live, a priority. Checked before anything is sent.

use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::time::{Duration, SystemTime};
use tchu_core::WireMessage;
use tchu_core::delay::{self, DelayRoute};
use tchu_core::headers;

/// The headers' total size (as JSON) tchu accepts from a caller: they travel with tchu's own
/// in the message's content header, which must fit in one frame (RabbitMQ's default
/// `frame_max` is 128 KiB); 16 KiB leaves room for tchu's headers and the trace context.
pub const MAX_EXTRA_HEADER_BYTES: usize = 16 * 1024;

/// Options of one publish: [`crate::Client::publish_with`].
///
/// ```
/// # use std::time::Duration;
/// let options = tchu_runtime::PublishOptions::new()
///     .delay(Duration::from_secs(30))
///     .header("tenant", "acme")
///     .priority(5);
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishOptions {
    due: Option<Due>,
    headers: Map<String, Value>,
    expiration: Option<Duration>,
    priority: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Due {
    In(Duration),
    At(SystemTime),
}

impl PublishOptions {
    /// No options: what [`crate::Client::publish`] sends.
    pub fn new() -> Self {
        Self::default()
    }

    /// Delivers the event `delay` from now (to the millisecond), held by the broker: it
    /// survives a restart of the publisher and of the broker, and reaches every subscriber,
    /// Python ones included. At most [`tchu_core::delay::MAX_DELAY`] (about 49 days).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.due = Some(Due::In(delay));
        self
    }

    /// Delivers the event at `when` (as [`PublishOptions::delay`], counted when it is
    /// published; a time already past publishes at once).
    pub fn due_at(mut self, when: SystemTime) -> Self {
        self.due = Some(Due::At(when));
        self
    }

    /// Adds a header of the caller's own. Names starting with `x-`, tchu's own and Celery's
    /// protocol headers are refused at publish time: they steer the broker, tchu or Celery.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The message's time to live in each queue it reaches: after it, a message still waiting
    /// is dropped by the broker, unread (AMQP `expiration`). Cannot be combined with a delay.
    pub fn expiration(mut self, ttl: Duration) -> Self {
        self.expiration = Some(ttl);
        self
    }

    /// AMQP priority, 0 to 9: honoured by queues declared with `x-max-priority` only (tchu's and
    /// tchu-tchu's queues are not: there it is carried, not acted upon).
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// The delay left now, if any.
    fn delay_now(&self) -> Option<Duration> {
        match self.due? {
            Due::In(d) => Some(d),
            Due::At(t) => Some(t.duration_since(SystemTime::now()).unwrap_or_default()),
        }
    }

    /// Checks the options, writes them into `msg`, and says how the message travels: the delay
    /// route, or `None` to publish at once.
    pub(crate) fn apply(&self, msg: &mut WireMessage) -> Result<Option<DelayRoute>> {
        self.check_headers()?;
        let delay = self.delay_now();
        let route = delay.and_then(delay::route);
        if let (Some(_), Some(_)) = (&route, self.expiration) {
            return Err(refuse(
                "an expiration cannot be combined with a delay: the broker would apply it in \
                 the delay queue and drop it at the first hop",
            ));
        }
        if delay.is_some_and(|d| d > delay::MAX_DELAY) {
            return Err(refuse(format!(
                "a delay of {delay:?} is longer than the longest the broker can hold ({:?})",
                delay::MAX_DELAY
            )));
        }
        match self.priority {
            Some(p) if p > 9 => return Err(refuse(format!("priority {p} is not 0 to 9"))),
            p => msg.properties.priority = p.or(msg.properties.priority),
        }
        if let Some(ttl) = self.expiration {
            // Whole milliseconds, rounded up: RabbitMQ takes 0 to 2^32 - 1.
            let ms = ttl.as_nanos().div_ceil(1_000_000);
            if ms > u128::from(u32::MAX) {
                return Err(refuse(format!(
                    "an expiration of {ttl:?} is longer than RabbitMQ's limit of {} ms",
                    u32::MAX
                )));
            }
            msg.properties.expiration = Some(ms.to_string());
        }
        msg.headers
            .extend(self.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(r) = &route {
            for (name, wait) in &r.headers {
                msg.headers.insert(name.clone(), (*wait).into());
            }
        }
        Ok(route)
    }

    /// Checks the options without publishing: what [`crate::Client::publish_with`] would
    /// refuse (a command line checks its flags before connecting).
    ///
    /// # Errors
    /// [`Error::PublishOptions`] with the reason.
    pub fn check(&self) -> Result<()> {
        self.apply(&mut WireMessage::default()).map(drop)
    }

    fn check_headers(&self) -> Result<()> {
        for name in self.headers.keys() {
            if let Some(why) = reserved(name) {
                return Err(refuse(format!("header `{name}` is reserved: {why}")));
            }
        }
        let size = serde_json::to_vec(&self.headers).map_or(usize::MAX, |b| b.len());
        if size > MAX_EXTRA_HEADER_BYTES {
            return Err(refuse(format!(
                "the headers take {size} bytes, more than {MAX_EXTRA_HEADER_BYTES}"
            )));
        }
        Ok(())
    }
}

/// Why a caller may not set a header, if it may not.
fn reserved(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        Some("a header name is 1 to 255 bytes of printable characters")
    } else if name.starts_with("x-") || name == "CC" || name == "BCC" {
        Some("`x-` headers, `CC` and `BCC` steer the broker and tchu")
    } else if delay::is_delay_header(name) {
        Some("it steers the delay route")
    } else if name == headers::TRACEPARENT || name == headers::TRACESTATE {
        Some("the trace context is tchu's to set (it continues the current trace)")
    } else if tchu_core::envelope::CELERY_HEADERS.contains(&name) {
        Some("it is a Celery protocol header, which Python consumers act upon")
    } else {
        None
    }
}

fn refuse(why: impl Into<String>) -> Error {
    Error::PublishOptions(why.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(o: &PublishOptions) -> Result<(WireMessage, Option<DelayRoute>)> {
        let mut msg = WireMessage::default();
        let route = o.apply(&mut msg)?;
        Ok((msg, route))
    }

    #[test]
    fn options_land_in_the_message() {
        let o = PublishOptions::new()
            .header("tenant", "acme")
            .header("n", 3)
            .expiration(Duration::from_millis(1500))
            .priority(7);
        let (msg, route) = applied(&o).unwrap();
        assert_eq!(route, None);
        assert_eq!(msg.headers["tenant"], "acme");
        assert_eq!(msg.headers["n"], 3);
        assert_eq!(msg.properties.expiration.as_deref(), Some("1500"));
        assert_eq!(msg.properties.priority, Some(7));
    }

    #[test]
    fn a_delay_routes_through_the_levels() {
        let (msg, route) = applied(&PublishOptions::new().delay(Duration::from_millis(5))).unwrap();
        assert_eq!(route.unwrap().top, 2);
        assert_eq!(msg.headers["tchu-delay-b02"], "1");
        assert_eq!(msg.headers["tchu-delay-b01"], "0");
        assert_eq!(msg.headers["tchu-delay-b00"], "1");
        let past = SystemTime::now() - Duration::from_secs(5);
        assert_eq!(
            applied(&PublishOptions::new().due_at(past)).unwrap().1,
            None
        );
    }

    #[test]
    fn what_cannot_be_carried_is_refused() {
        let d = Duration::from_secs(1);
        for (o, why) in [
            (
                PublishOptions::new().header("x-tchu-handler", "h"),
                "reserved",
            ),
            (PublishOptions::new().header("task", "t"), "Celery"),
            (PublishOptions::new().header("traceparent", "t"), "trace"),
            (PublishOptions::new().header("tchu-delay-b03", "1"), "delay"),
            (PublishOptions::new().header("CC", "q"), "steer"),
            (PublishOptions::new().header("a\nb", "v"), "printable"),
            (
                PublishOptions::new().header("big", "v".repeat(20_000)),
                "bytes",
            ),
            (PublishOptions::new().priority(10), "0 to 9"),
            (PublishOptions::new().delay(d).expiration(d), "combined"),
            (
                PublishOptions::new().expiration(Duration::from_secs(50 * 86_400)),
                "limit",
            ),
            (
                PublishOptions::new().delay(Duration::from_secs(60 * 86_400)),
                "longest",
            ),
        ] {
            let e = applied(&o).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }
}
