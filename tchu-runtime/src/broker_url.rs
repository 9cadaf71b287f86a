//! Broker URLs: a list of addresses parsed once, and passwords kept out of every text.
//!
//! Every place that connects (the client, the producer, the management client, the `tchu`
//! tool) goes through [`BrokerUrl::parse_list`], so lapin never sees a URL string: its own
//! parse errors quote the whole URL, password included.
//!
//! A list separates addresses with a comma followed by a scheme (`amqp://` or `amqps://`), so a
//! comma anywhere else, in a password for instance, belongs to the address. Percent-encoding
//! (`%2C`) works too, as in any URL.

use crate::error::{Error, Result};
use lapin::uri::AMQPUri;
use std::fmt;

/// The heartbeat interval tchu proposes, in seconds, for an address that sets none
/// (`?heartbeat=N` sets another, `?heartbeat=0` turns heartbeats off). A connection whose
/// packets vanish (a network partition, a host gone without closing its sockets) is given up
/// after two silent intervals: 20 s, where the broker's own proposal (60 s) would take two
/// minutes, all the while a service reports itself consuming and publishes wait for nothing.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// One broker address: the parsed URI lapin connects with, and its text with the password
/// replaced by `***`, which is all that `Display` and `Debug` ever show.
///
/// ```
/// let urls = tchu_runtime::BrokerUrl::parse_list("amqp://bob:s3cret,pw@127.0.0.1:5672/%2f")?;
/// assert_eq!(urls.len(), 1);
/// assert_eq!(urls[0].to_string(), "amqp://bob:***@127.0.0.1:5672/%2f");
/// assert_eq!(format!("{:?}", urls[0]), "BrokerUrl(amqp://bob:***@127.0.0.1:5672/%2f)");
/// # Ok::<(), tchu_runtime::Error>(())
/// ```
#[derive(Clone)]
pub struct BrokerUrl {
    uri: AMQPUri,
    shown: String,
}

impl BrokerUrl {
    /// Parses one address.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] naming the address with its password hidden.
    pub fn parse(url: &str) -> Result<Self> {
        let shown = redact_url(url);
        let invalid = |reason: &str| Error::InvalidUrl {
            what: "broker",
            url: shown.clone(),
            reason: scrub(reason, url),
        };
        let scheme = url.find("://").map(|i| url[..i].to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("amqp" | "amqps")) {
            return Err(invalid("it must start with amqp:// or amqps://"));
        }
        let mut uri: AMQPUri = url.parse().map_err(|e: String| invalid(&e))?;
        // amq-protocol-uri keeps only what the `url` crate calls a domain, and falls back to
        // `localhost` for a bracketed IPv6 address; the host is taken from the URL itself.
        if let Some(host) = host_of(url) {
            uri.authority.host = host;
        }
        uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
        Ok(Self { uri, shown })
    }

    /// Parses a list of addresses (see the module documentation for the separator).
    ///
    /// # Errors
    /// [`Error::NoBrokerAddress`] for an empty list, [`Error::InvalidUrl`] for an invalid address
    /// (passwords hidden).
    pub fn parse_list(list: &str) -> Result<Vec<Self>> {
        let urls = split_list(list)
            .into_iter()
            .map(Self::parse)
            .collect::<Result<Vec<_>>>()?;
        if urls.is_empty() {
            return Err(Error::NoBrokerAddress);
        }
        Ok(urls)
    }

    /// The parsed URI, for connecting.
    pub fn uri(&self) -> &AMQPUri {
        &self.uri
    }

    /// Whether the address is `amqps://`.
    pub fn is_tls(&self) -> bool {
        self.uri.scheme == lapin::uri::AMQPScheme::AMQPS
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({})", self.shown)
    }
}

/// Splits a list of broker URLs at each comma followed by a scheme; empty parts are dropped.
fn split_list(list: &str) -> Vec<&str> {
    let starts_address = |rest: &str| {
        let rest = rest.trim_start().as_bytes();
        [&b"amqp://"[..], b"amqps://"]
            .iter()
            .any(|s| rest.len() >= s.len() && rest[..s.len()].eq_ignore_ascii_case(s))
    };
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, _) in list.match_indices(',') {
        if starts_address(&list[i + 1..]) {
            parts.push(&list[start..i]);
            start = i + 1;
        }
    }
    parts.push(&list[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// Where an address's credentials are: the byte range of the userinfo (before the last `@` of
/// the authority) and of its password (after the first `:` of the userinfo), if any.
fn secret_range(url: &str) -> Option<std::ops::Range<usize>> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let at = start + url[start..].rfind('@')?;
    let colon = start + url[start..at].find(':')?;
    Some(colon + 1..at)
}

/// The host of an address as written (an IPv6 address without its brackets).
fn host_of(url: &str) -> Option<String> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let authority_start = rest.rfind('@').map_or(0, |at| at + 1);
    let authority = &rest[authority_start..];
    let end = authority.find(['/', '?', '#']).unwrap_or(authority.len());
    let hostport = &authority[..end];
    let host = match hostport.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => hostport.rsplit_once(':').map_or(hostport, |(h, _)| h),
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// Hides the password of a broker URL, or of each address of a list, for logs, errors and
/// `Debug` output. Whatever the shape (no scheme, several `@`, `,` `%` or `:` in the password,
/// an IPv6 host), everything between the user name and the last `@` is replaced.
///
/// ```
/// use tchu_runtime::redact_url;
/// assert_eq!(redact_url("amqp://bob:s3cret@host:5672/%2f"), "amqp://bob:***@host:5672/%2f");
/// assert_eq!(redact_url("bob:s3c@ret@127.0.0.1"), "bob:***@127.0.0.1");
/// assert_eq!(redact_url("amqp://a:x,y@h1,amqp://b:z@h2"), "amqp://a:***@h1,amqp://b:***@h2");
/// ```
pub fn redact_url(url: &str) -> String {
    split_list(url)
        .into_iter()
        .map(|one| match secret_range(one) {
            Some(r) => format!("{}***{}", &one[..r.start], &one[r.end..]),
            None => one.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Removes an address's password from a message that may quote it (lapin's and the `url`
/// crate's errors quote what they were given), raw or percent-decoded.
pub(crate) fn scrub(message: &str, url: &str) -> String {
    let mut out = message.replace(url, &redact_url(url));
    if let Some(r) = secret_range(url) {
        let raw = &url[r];
        let decoded = percent_decode(raw);
        for secret in [raw, decoded.as_str()] {
            if !secret.is_empty() {
                out = out.replace(secret, "***");
            }
        }
    }
    out
}

/// Decodes `%XX` escapes (a user name or password written in a URL, an OTLP header value);
/// an invalid escape is kept as written.
pub(crate) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Environment variable naming a PEM file of an extra CA to trust for `amqps://` brokers.
pub const TLS_CA_FILE_ENV: &str = "TCHU_TLS_CA_FILE";

/// The extra CA that [`TLS_CA_FILE_ENV`] names, read.
pub(crate) fn ca_from_env() -> Result<Option<String>> {
    match std::env::var(TLS_CA_FILE_ENV) {
        Ok(path) => {
            std::fs::read_to_string(&path)
                .map(Some)
                .map_err(|source| crate::Error::CaFile {
                    path: path.into(),
                    source: source.into(),
                })
        }
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cretpw";

    /// Addresses of every shape, each holding the secret somewhere in its password.
    const SHAPES: &[&str] = &[
        "amqp://bob:s3cretpw@127.0.0.1:5672/%2f",
        "bob:s3cretpw@127.0.0.1:5672",
        "amqp://bob:s3cretpw,x@127.0.0.1:5672/%2f",
        "amqp://bob:x,s3cretpw@127.0.0.1:5672/%2f",
        "amqp://bob:s3cretpw@x@127.0.0.1:5672/%2f",
        "amqp://bob:s3cretpw%2Cx@127.0.0.1:5672/%2f",
        "amqp://bob:s3cretpw:x@127.0.0.1:5672/%2f",
        "amqp://bob:s3cretpw@[::1]:5672/%2f",
        "amqp://bob:s3cretpw@127.0.0.1:notaport/%2f",
        "amqps://bob:s3cretpw@127.0.0.1/%2f?heartbeat=nope",
        "ftp://bob:s3cretpw@127.0.0.1/",
        "amqp://bob:s3cret%ZZpw@127.0.0.1/",
        "amqp://a:s3cretpw@h1:5672/%2f,amqp://b:s3cretpw@h2:5672/%2f",
        "amqp://a:s3cretpw@h1:5672/%2f, amqps://b:s3cretpw,x@h2:5671/%2f",
        "amqp://bob:s3%63retpw@127.0.0.1/",
    ];

    #[test]
    fn heartbeat_defaults_to_ten_seconds_unless_the_address_sets_one() {
        let heartbeat = |url: &str| BrokerUrl::parse(url).unwrap().uri().query.heartbeat;
        assert_eq!(heartbeat("amqp://h/%2f"), Some(DEFAULT_HEARTBEAT_SECS));
        assert_eq!(heartbeat("amqp://h/%2f?heartbeat=30"), Some(30));
        assert_eq!(heartbeat("amqp://h/%2f?heartbeat=0"), Some(0));
    }

    #[test]
    fn no_text_ever_holds_the_password() {
        for url in SHAPES {
            let shown = redact_url(url);
            assert!(!shown.contains(SECRET), "{url} -> {shown}");
            match BrokerUrl::parse_list(url) {
                Ok(list) => {
                    for u in list {
                        for text in [u.to_string(), format!("{u:?}")] {
                            assert!(!text.contains(SECRET), "{url} -> {text}");
                        }
                    }
                }
                Err(e) => {
                    for text in [e.to_string(), format!("{e:?}")] {
                        assert!(!text.contains(SECRET), "{url} -> {text}");
                        assert!(!text.contains("s3cret"), "{url} -> {text}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_comma_in_a_password_does_not_split_the_list() {
        let one = BrokerUrl::parse_list("amqp://bob:s3cret,pw@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].uri().authority.userinfo.password, "s3cret,pw");
        let encoded = BrokerUrl::parse_list("amqp://bob:s3cret%2Cpw@127.0.0.1/%2f").unwrap();
        assert_eq!(encoded[0].uri().authority.userinfo.password, "s3cret,pw");
        let two = BrokerUrl::parse_list("amqp://a:p,q@h1/%2f, AMQPS://b:r@h2/%2f").unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[0].uri().authority.userinfo.password, "p,q");
        assert!(two[1].is_tls());
        assert_eq!(two[1].uri().authority.host, "h2");
    }

    #[test]
    fn ip_hosts_are_kept() {
        let v4 = BrokerUrl::parse("amqp://u:p@10.1.2.3:5673/%2f").unwrap();
        assert_eq!(v4.uri().authority.host, "10.1.2.3");
        assert_eq!(v4.uri().authority.port, 5673);
        let v6 = BrokerUrl::parse("amqp://u:p@[::1]:5672/%2f").unwrap();
        assert_eq!(v6.uri().authority.host, "::1");
        let upstream: AMQPUri = "amqp://u:p@[::1]:5672/%2f".parse().unwrap();
        assert_eq!(
            upstream.authority.host, "localhost",
            "amq-protocol-uri keeps IPv6 hosts now: the override in `parse` can go"
        );
        let name = BrokerUrl::parse("amqp://u:p@rabbit.internal/%2f").unwrap();
        assert_eq!(name.uri().authority.host, "rabbit.internal");
    }

    #[test]
    fn bad_addresses_are_config_errors() {
        for bad in ["", " , ", "bob:pw@host", "http://h/", "amqp://u:p@h:99999/"] {
            assert!(
                matches!(
                    BrokerUrl::parse_list(bad),
                    Err(Error::InvalidUrl { .. } | Error::NoBrokerAddress)
                ),
                "{bad}"
            );
        }
    }
}
