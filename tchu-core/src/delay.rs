//! Delayed publishing through the broker alone, to any subscriber (Python ones included): the
//! binary delay levels and the headers that steer a message through them. No I/O.
//!
//! Level `b` is a headers exchange `tchu_delay.bNN` and a durable queue of the same name whose
//! messages live `2^b` ms, then dead-letter to level `b - 1` (level 0 to `tchu_events`). At each
//! level the message's header `tchu-delay-bNN` decides: `1` waits in that level's queue, `0`
//! passes on at once (an exchange-to-exchange binding). A delay of `d` ms is published into the
//! level of its highest set bit and waits exactly the sum of its set bits: `d` ms, plus the
//! broker's latency per hop. The routing key, the topic, is kept by every hop, so the message
//! reaches `tchu_events` as it was published and every queue bound to its topic receives it.
//!
//! Unlike the retry tiers (`crate::retry`), whose hops are chained by the consuming service, no
//! consumer takes part: each hop is decided by the headers the publisher set, so each level is
//! used at most once, hence powers of two.

use core::time::Duration;

/// How many levels: delays up to `2^LEVELS - 1` ms (about 49.7 days).
pub const LEVELS: u32 = 32;

/// The longest delay a publish can ask for.
pub const MAX_DELAY: Duration = Duration::from_millis((1u64 << LEVELS) - 1);

/// The name of level `b`'s exchange and queue.
pub fn level_name(b: u32) -> String {
    format!("tchu_delay.b{b:02}")
}

/// The header that says whether a message waits at level `b`.
pub fn level_header(b: u32) -> String {
    format!("tchu-delay-b{b:02}")
}

/// How long a message waits in level `b`'s queue.
pub const fn level_ttl_ms(b: u32) -> u64 {
    1u64 << b
}

/// Whether a header is one of the delay route's own.
pub fn is_delay_header(name: &str) -> bool {
    name.strip_prefix("tchu-delay-b")
        .is_some_and(|n| n.len() == 2 && n.bytes().all(|c| c.is_ascii_digit()))
}

/// The route of one delayed publish: the level to publish into and, for it and every level
/// below, whether the message waits there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayRoute {
    /// The whole delay, in milliseconds.
    pub ms: u64,
    /// The level whose exchange the message is published to (its delay's highest set bit).
    pub top: u32,
    /// `(header, "1" or "0")` for levels `top` down to 0.
    pub headers: Vec<(String, &'static str)>,
}

/// The route for a delay rounded up to whole milliseconds (so never early); `None` for no
/// delay (publish at once) or over [`MAX_DELAY`] (the caller refuses it).
pub fn route(delay: Duration) -> Option<DelayRoute> {
    let ms = u64::try_from(delay.as_nanos().div_ceil(1_000_000)).ok()?;
    if ms == 0 || ms > MAX_DELAY.as_millis() as u64 {
        return None;
    }
    let top = 63 - ms.leading_zeros();
    let headers = (0..=top)
        .rev()
        .map(|b| (level_header(b), if ms & (1 << b) != 0 { "1" } else { "0" }))
        .collect();
    Some(DelayRoute { ms, top, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waits(r: &DelayRoute) -> u64 {
        r.headers
            .iter()
            .filter(|(_, v)| *v == "1")
            .map(|(h, _)| level_ttl_ms(h[12..].parse().unwrap()))
            .sum()
    }

    #[test]
    fn a_route_waits_exactly_its_delay_and_starts_at_its_highest_bit() {
        for ms in [1, 2, 3, 7, 10, 1000, 1234, 86_400_000, (1 << 32) - 1] {
            let r = route(Duration::from_millis(ms)).unwrap();
            assert_eq!(waits(&r), ms, "{ms}");
            assert_eq!(r.top, 63 - ms.leading_zeros(), "{ms}");
            assert_eq!(
                r.headers.len() as u32,
                r.top + 1,
                "every level below has its say"
            );
            assert_eq!(r.headers[0].1, "1", "the top level always waits");
        }
    }

    #[test]
    fn nothing_to_route_below_a_millisecond_or_beyond_the_last_level() {
        assert_eq!(route(Duration::ZERO), None);
        assert_eq!(
            route(Duration::from_micros(10_900)).unwrap().ms,
            11,
            "rounded up"
        );
        assert_eq!(route(MAX_DELAY + Duration::from_millis(1)), None);
        assert!(route(MAX_DELAY).is_some());
    }

    #[test]
    fn names_are_fixed_width() {
        assert_eq!(level_name(3), "tchu_delay.b03");
        assert_eq!(level_header(31), "tchu-delay-b31");
        assert!(is_delay_header("tchu-delay-b07") && !is_delay_header("tchu-delay-b7x"));
    }
}
