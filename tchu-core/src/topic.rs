//! Topics (concrete routing keys) and patterns (`*`, `#`), with AMQP topic-exchange matching.
//!
//! Entry points: [`validate_topic`], [`validate_pattern`] and [`pattern_matches`] are `const fn`,
//! so generated code checks subscriptions at compile time with the same code the runtime uses;
//! [`Topic`] and [`TopicPattern`] are the validated owned forms for run time.
//!
//! Grammar:
//! - 1 to 255 bytes (an AMQP short string);
//! - dot-separated words, none empty (no leading, trailing or double dot);
//! - word characters are printable ASCII except `.`, `*` and `#` (RabbitMQ accepts any byte, but
//!   topics travel in logs, headers and queue names, where whitespace and non-ASCII cause grief);
//! - `*` (exactly one word) and `#` (zero or more words) only as whole words, and only in patterns.
//!
//! Matching is RabbitMQ's, not tchu-tchu's local matcher (which lets `*` span dots and treats `#`
//! literally, its bug B3): `user.*` matches `user.created` but not `user.a.b`; `user.#` matches
//! `user`, `user.a` and `user.a.b`; `#` in the middle works. Consecutive `#` words (`#.#`) are
//! refused: they match nothing a single `#` does not, and cost the broker dearly.

use core::fmt;

/// Longest topic or pattern, in bytes: AMQP routing keys are short strings.
pub const MAX_LEN: usize = 255;

/// What is wrong with a topic or pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicErrorKind {
    /// The string is empty.
    Empty,
    /// The string is longer than [`MAX_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A word is empty: a leading, trailing or double dot.
    EmptyWord,
    /// A byte that is not allowed in a word.
    InvalidChar {
        /// The offending byte (the first byte of a non-ASCII character).
        byte: u8,
    },
    /// `*` or `#` mixed with other characters in one word, like `ord*`.
    PartialWildcard {
        /// The wildcard found.
        wildcard: u8,
    },
    /// A wildcard where a concrete topic is required (an event's topic, a publish).
    WildcardInTopic {
        /// The wildcard found.
        wildcard: u8,
    },
    /// `#.#`: consecutive `#` words match nothing a single `#` does not, and made RabbitMQ's
    /// topic routing blow up (a denial of service, fixed in 4.3.5).
    ConsecutiveHash,
}

/// A topic or pattern that does not follow the grammar, with the byte offset of the problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicError {
    kind: TopicErrorKind,
    offset: usize,
}

impl TopicError {
    const fn new(kind: TopicErrorKind, offset: usize) -> Self {
        Self { kind, offset }
    }

    /// What is wrong.
    pub const fn kind(&self) -> TopicErrorKind {
        self.kind
    }

    /// Byte offset in the string where the problem is.
    pub const fn offset(&self) -> usize {
        self.offset
    }

    /// A short fixed description, usable in `const` panics.
    pub const fn message(&self) -> &'static str {
        match self.kind {
            TopicErrorKind::Empty => "topic is empty",
            TopicErrorKind::TooLong { .. } => "topic is longer than 255 bytes",
            TopicErrorKind::EmptyWord => "empty word (leading, trailing or double dot)",
            TopicErrorKind::InvalidChar { .. } => "character not allowed in a topic",
            TopicErrorKind::PartialWildcard { .. } => "`*` and `#` must be whole words",
            TopicErrorKind::WildcardInTopic { .. } => {
                "wildcards are only allowed in subscription patterns"
            }
            TopicErrorKind::ConsecutiveHash => "consecutive `#` words: write a single `#`",
        }
    }
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.offset;
        match self.kind {
            TopicErrorKind::Empty => f.write_str("topic is empty"),
            TopicErrorKind::TooLong { len } => {
                write!(f, "topic is {len} bytes long, the limit is {MAX_LEN}")
            }
            TopicErrorKind::EmptyWord => write!(
                f,
                "empty word at byte {at} (words are separated by single dots, with none at either end)"
            ),
            TopicErrorKind::InvalidChar { byte } if byte.is_ascii() => write!(
                f,
                "character {:?} at byte {at} is not allowed (use printable ASCII other than `.`, `*`, `#`)",
                byte as char
            ),
            TopicErrorKind::InvalidChar { .. } => write!(
                f,
                "non-ASCII character at byte {at} is not allowed (use printable ASCII other than `.`, `*`, `#`)"
            ),
            TopicErrorKind::PartialWildcard { wildcard } => write!(
                f,
                "`{}` at byte {at} must be a whole word, like `user.{}`",
                wildcard as char, wildcard as char
            ),
            TopicErrorKind::WildcardInTopic { wildcard } => write!(
                f,
                "wildcard `{}` at byte {at}: a topic must be concrete; wildcards belong in `#[tchu::subscribe]` patterns",
                wildcard as char
            ),
            TopicErrorKind::ConsecutiveHash => write!(
                f,
                "`#.#` at byte {at}: consecutive `#` words match nothing more than one `#` does, and cost the broker dearly (a routing denial of service before RabbitMQ 4.3.5); write a single `#`"
            ),
        }
    }
}

impl std::error::Error for TopicError {}

const fn check(s: &str, allow_wildcards: bool) -> Result<(), TopicError> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(TopicError::new(TopicErrorKind::Empty, 0));
    }
    if b.len() > MAX_LEN {
        return Err(TopicError::new(
            TopicErrorKind::TooLong { len: b.len() },
            MAX_LEN,
        ));
    }
    let mut start = 0;
    let mut i = 0;
    let mut after_hash = false;
    while i <= b.len() {
        if i == b.len() || b[i] == b'.' {
            if i == start {
                return Err(TopicError::new(TopicErrorKind::EmptyWord, start));
            }
            let hash = i - start == 1 && b[start] == b'#';
            if hash && after_hash && allow_wildcards {
                return Err(TopicError::new(TopicErrorKind::ConsecutiveHash, start - 2));
            }
            after_hash = hash;
            let mut j = start;
            while j < i {
                let c = b[j];
                if c == b'*' || c == b'#' {
                    if i - start != 1 {
                        return Err(TopicError::new(
                            TopicErrorKind::PartialWildcard { wildcard: c },
                            j,
                        ));
                    }
                    if !allow_wildcards {
                        return Err(TopicError::new(
                            TopicErrorKind::WildcardInTopic { wildcard: c },
                            j,
                        ));
                    }
                } else if c <= b' ' || c >= 0x7f {
                    return Err(TopicError::new(TopicErrorKind::InvalidChar { byte: c }, j));
                }
                j += 1;
            }
            start = i + 1;
        }
        i += 1;
    }
    Ok(())
}

/// Checks a concrete topic: the grammar above, no wildcards.
///
/// ```
/// use tchu_core::topic::validate_topic;
/// assert!(validate_topic("user.created").is_ok());
/// assert!(validate_topic("user.*").is_err());
/// ```
///
/// # Errors
/// A [`TopicError`] saying what is wrong and where.
pub const fn validate_topic(s: &str) -> Result<(), TopicError> {
    check(s, false)
}

/// Checks a subscription pattern: the grammar above, `*` and `#` allowed as whole words.
///
/// # Errors
/// A [`TopicError`] saying what is wrong and where.
pub const fn validate_pattern(s: &str) -> Result<(), TopicError> {
    check(s, true)
}

/// Marks "no word left" in the matcher's cursor.
const END: usize = usize::MAX;

const fn word_end(b: &[u8], start: usize) -> usize {
    let mut i = start;
    while i < b.len() && b[i] != b'.' {
        i += 1;
    }
    i
}

const fn next_word(b: &[u8], end: usize) -> usize {
    if end >= b.len() { END } else { end + 1 }
}

const fn is_word(b: &[u8], start: usize, end: usize, w: u8) -> bool {
    end - start == 1 && b[start] == w
}

const fn words_eq(a: &[u8], a0: usize, a1: usize, b: &[u8], b0: usize, b1: usize) -> bool {
    if a1 - a0 != b1 - b0 {
        return false;
    }
    let mut i = 0;
    while i < a1 - a0 {
        if a[a0 + i] != b[b0 + i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether a routing key matches a pattern, with RabbitMQ's topic-exchange semantics.
///
/// `*` matches exactly one word, `#` zero or more. The empty string has no words (as in RabbitMQ).
/// Runs in `O(pattern words × key words)`: `#` is handled like a glob star with a single
/// backtracking point, so no input makes it exponential.
///
/// ```
/// use tchu_core::pattern_matches;
/// assert!(pattern_matches("user.*", "user.created"));
/// assert!(!pattern_matches("user.*", "user.a.b"));
/// assert!(pattern_matches("user.#", "user"));
/// assert!(pattern_matches("a.#.z", "a.b.c.z"));
/// const OK: bool = pattern_matches("#.created", "user.created");
/// assert!(OK);
/// ```
pub const fn pattern_matches(pattern: &str, key: &str) -> bool {
    let p = pattern.as_bytes();
    let k = key.as_bytes();
    let mut pi = if p.is_empty() { END } else { 0 };
    let mut ki = if k.is_empty() { END } else { 0 };
    // Last `#` seen and the key word it was tried against: the only backtracking point needed.
    let mut star_p = END;
    let mut star_k = END;
    loop {
        if ki == END {
            // Key used up: whatever is left of the pattern must be `#`s, which match nothing.
            while pi != END {
                let pe = word_end(p, pi);
                if !is_word(p, pi, pe, b'#') {
                    return false;
                }
                pi = next_word(p, pe);
            }
            return true;
        }
        if pi != END {
            let pe = word_end(p, pi);
            if is_word(p, pi, pe, b'#') {
                star_p = pi;
                star_k = ki;
                pi = next_word(p, pe);
                continue;
            }
            let ke = word_end(k, ki);
            if is_word(p, pi, pe, b'*') || words_eq(p, pi, pe, k, ki, ke) {
                pi = next_word(p, pe);
                ki = next_word(k, ke);
                continue;
            }
        }
        if star_p == END {
            return false;
        }
        // Let the last `#` swallow one more word and retry from the pattern word after it.
        star_k = next_word(k, word_end(k, star_k));
        ki = star_k;
        pi = next_word(p, word_end(p, star_p));
    }
}

/// A validated concrete topic, such as `user.created`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(String);

impl Topic {
    /// Validates and wraps a topic.
    ///
    /// ```
    /// let t = tchu_core::Topic::new("user.created")?;
    /// assert_eq!(t.as_str(), "user.created");
    /// # Ok::<(), tchu_core::TopicError>(())
    /// ```
    ///
    /// # Errors
    /// A [`TopicError`] when the string breaks the grammar or holds a wildcard.
    pub fn new(s: impl Into<String>) -> Result<Self, TopicError> {
        let s = s.into();
        validate_topic(&s)?;
        Ok(Self(s))
    }

    /// The topic as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A validated subscription pattern, such as `user.*` or `orders.#`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPattern(String);

impl TopicPattern {
    /// Validates and wraps a pattern.
    ///
    /// ```
    /// let p = tchu_core::TopicPattern::new("user.*")?;
    /// assert!(p.matches("user.created"));
    /// # Ok::<(), tchu_core::TopicError>(())
    /// ```
    ///
    /// # Errors
    /// A [`TopicError`] when the string breaks the grammar.
    pub fn new(s: impl Into<String>) -> Result<Self, TopicError> {
        let s = s.into();
        validate_pattern(&s)?;
        Ok(Self(s))
    }

    /// The pattern as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a routing key matches, with AMQP semantics (see [`pattern_matches`]).
    pub fn matches(&self, key: &str) -> bool {
        pattern_matches(&self.0, key)
    }

    /// Whether the pattern has a `*` or `#` word.
    pub fn has_wildcards(&self) -> bool {
        self.0.split('.').any(|w| w == "*" || w == "#")
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TopicPattern {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<Topic> for TopicPattern {
    fn from(t: Topic) -> Self {
        Self(t.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slow, obviously-correct reference matcher over word lists.
    fn reference(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some(&"#"), _) => reference(&p[1..], k) || (!k.is_empty() && reference(p, &k[1..])),
            (Some(_), None) => false,
            (Some(&w), Some(&kw)) => (w == "*" || w == kw) && reference(&p[1..], &k[1..]),
        }
    }

    fn words(s: &str) -> Vec<&str> {
        if s.is_empty() {
            vec![]
        } else {
            s.split('.').collect()
        }
    }

    #[test]
    fn matcher_agrees_with_reference_on_all_small_cases() {
        let alphabet = ["a", "b", "*", "#"];
        let keys = [
            "",
            "a",
            "b",
            "a.a",
            "a.b",
            "b.a",
            "a.b.a",
            "a.a.a.b",
            "b.b.b.b.a",
        ];
        let mut patterns = vec![String::new()];
        for _ in 0..4 {
            let mut next = vec![];
            for p in &patterns {
                for w in alphabet {
                    next.push(if p.is_empty() {
                        w.to_string()
                    } else {
                        format!("{p}.{w}")
                    });
                }
            }
            patterns.extend(next.iter().cloned());
            patterns.dedup();
        }
        patterns.sort();
        patterns.dedup();
        for p in &patterns {
            for k in keys {
                assert_eq!(
                    pattern_matches(p, k),
                    reference(&words(p), &words(k)),
                    "pattern {p:?} key {k:?}"
                );
            }
        }
    }

    #[test]
    fn pathological_pattern_is_fast() {
        let p = ["#"; 100].join(".") + ".x";
        let k = ["a"; 120].join(".");
        assert!(!pattern_matches(&p, &k));
    }
}
