//! The RabbitMQ management HTTP API, for what AMQP cannot tell: which bindings a queue has.
//!
//! Its address is `TCHU_MANAGEMENT_URL` (`http://user:pass@host:15672`), or derived from the
//! broker URL: same host and credentials, port 15672 (`https` and 15671 for `amqps`).

use crate::broker_url::{BrokerUrl, percent_decode, redact_url};
use crate::client::{BROKER_URL_ENV, DEFAULT_BROKER_URL};
use crate::error::{Error, Result};
use serde_json::Value;
use std::time::Duration;

/// Environment variable overriding the management API's address.
pub const MANAGEMENT_URL_ENV: &str = "TCHU_MANAGEMENT_URL";

/// A binding as the management API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingInfo {
    /// The exchange (empty for the default exchange's implicit binding).
    pub source: String,
    /// The binding key.
    pub routing_key: String,
}

/// A client of the management API for one virtual host.
#[derive(Clone)]
pub struct Management {
    base: String,
    authorization: String,
    vhost: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Management")
            .field("base", &self.base)
            .field("vhost", &self.vhost)
            .finish_non_exhaustive()
    }
}

impl Management {
    /// The management API of the broker `TCHU_BROKER_URL` names (its first address), or of
    /// `TCHU_MANAGEMENT_URL` when set.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] for a URL that does not parse.
    pub fn from_env() -> Result<Self> {
        let broker = std::env::var(BROKER_URL_ENV).unwrap_or_else(|_| DEFAULT_BROKER_URL.into());
        let explicit = std::env::var(MANAGEMENT_URL_ENV)
            .ok()
            .filter(|u| !u.is_empty());
        Self::new(&broker, explicit.as_deref())
    }

    /// The management API beside the broker at `broker_url` (its first address, when it is a
    /// list); `management_url` overrides its
    /// address (and credentials, when it has some).
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] for a URL that does not parse.
    pub fn new(broker_url: &str, management_url: Option<&str>) -> Result<Self> {
        let broker = BrokerUrl::parse_list(broker_url)?.swap_remove(0);
        let tls = broker.is_tls();
        let uri = broker.uri().clone();
        let (mut user, mut pass) = (
            uri.authority.userinfo.username.clone(),
            uri.authority.userinfo.password.clone(),
        );
        let base = match management_url {
            Some(m) => {
                let (base, credentials) = split_management_url(m)?;
                if let Some((u, p)) = credentials {
                    (user, pass) = (u, p);
                }
                base
            }
            None => {
                let host = &uri.authority.host;
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                if tls {
                    format!("https://{host}:15671")
                } else {
                    format!("http://{host}:15672")
                }
            }
        };
        #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false);
        if base.starts_with("https://") {
            #[cfg(not(feature = "tls"))]
            return Err(Error::FeatureMissing {
                feature: "tls",
                needed_for: format!(
                    "the https management API at {base} (or set {MANAGEMENT_URL_ENV} to http://)"
                ),
            });
            // The same private CA the broker connection trusts (TCHU_TLS_CA_FILE), if any.
            #[cfg(feature = "tls")]
            if let Ok(path) = std::env::var(crate::broker_url::TLS_CA_FILE_ENV) {
                let ca_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::CaFile {
                    path: path.clone().into(),
                    source,
                };
                let pem = std::fs::read(&path).map_err(|e| ca_error(e.into()))?;
                let cert =
                    ureq::tls::Certificate::from_pem(&pem).map_err(|e| ca_error(e.into()))?;
                config = config.tls_config(
                    ureq::tls::TlsConfig::builder()
                        .root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]))
                        .build(),
                );
            }
        }
        let agent = config.build().into();
        Ok(Self {
            base,
            authorization: format!("Basic {}", base64(format!("{user}:{pass}").as_bytes())),
            vhost: uri.vhost,
            agent,
        })
    }

    /// The API's base address, for messages.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The virtual host it looks at.
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// `GET`s a path; `None` for 404.
    fn get(&self, path: &str) -> Result<Option<Value>> {
        let url = format!("{}{path}", self.base);
        let agent = self.agent.clone();
        let auth = self.authorization.clone();
        let unreachable = |e: ureq::Error| {
            Error::Management(format!(
                "{url}: {e} (is the management plugin enabled? `rabbitmq-plugins enable rabbitmq_management`; or set {MANAGEMENT_URL_ENV})"
            ))
        };
        let mut resp = agent
            .get(&url)
            .header("Authorization", &auth)
            .call()
            .map_err(unreachable)?;
        match resp.status().as_u16() {
            404 => Ok(None),
            200..=299 => resp
                .body_mut()
                .read_json::<Value>()
                .map(Some)
                .map_err(|e| Error::Management(format!("{url}: unreadable answer: {e}"))),
            401 | 403 => Err(Error::Management(format!(
                "{url}: access refused ({}): the user needs the `monitoring` or `management` tag",
                resp.status()
            ))),
            _ => Err(Error::Management(format!("{url}: HTTP {}", resp.status()))),
        }
    }

    /// A queue's description (`type`, `durable`, `arguments`, `messages`...), `None` if absent.
    ///
    /// # Errors
    /// [`Error::Management`] when the API cannot be reached or refuses.
    pub fn queue(&self, name: &str) -> Result<Option<Value>> {
        self.get(&format!(
            "/api/queues/{}/{}",
            percent_encode(&self.vhost),
            percent_encode(name)
        ))
    }

    /// An exchange's description, `None` if absent.
    ///
    /// # Errors
    /// [`Error::Management`] when the API cannot be reached or refuses.
    pub fn exchange(&self, name: &str) -> Result<Option<Value>> {
        self.get(&format!(
            "/api/exchanges/{}/{}",
            percent_encode(&self.vhost),
            percent_encode(name)
        ))
    }

    /// Every binding whose destination is the queue (an empty list if the queue is absent).
    ///
    /// # Errors
    /// [`Error::Management`] when the API cannot be reached or refuses.
    pub fn queue_bindings(&self, queue: &str) -> Result<Vec<BindingInfo>> {
        let list = self.get(&format!(
            "/api/queues/{}/{}/bindings",
            percent_encode(&self.vhost),
            percent_encode(queue)
        ))?;
        Ok(list
            .as_ref()
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|b| BindingInfo {
                        source: b["source"].as_str().unwrap_or_default().to_owned(),
                        routing_key: b["routing_key"].as_str().unwrap_or_default().to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// A management URL as its address (no credentials) and, when it has some, its user name and
/// password.
fn split_management_url(m: &str) -> Result<(String, Option<(String, String)>)> {
    let (scheme, rest) = m.split_once("://").ok_or_else(|| Error::InvalidUrl {
        what: "management",
        url: redact_url(m),
        reason: format!("{MANAGEMENT_URL_ENV} needs a scheme (http:// or https://)"),
    })?;
    // The authority ends at the first `/` after the credentials: a password may hold `/` (and
    // `@`), so the last `@` comes first.
    let after_at = rest.rfind('@').map_or(0, |i| i + 1);
    let (authority, path) = match rest[after_at..].find('/') {
        Some(i) => rest.split_at(after_at + i),
        None => (rest, ""),
    };
    let (host, credentials) = match authority.rsplit_once('@') {
        Some((info, host)) => {
            let (u, p) = info.split_once(':').unwrap_or((info, ""));
            (host, Some((percent_decode(u), percent_decode(p))))
        }
        None => (authority, None),
    };
    Ok((
        format!("{scheme}://{host}{}", path.trim_end_matches('/')),
        credentials,
    ))
}

/// Every byte outside RFC 3986's unreserved set is escaped (the API wants `/` as `%2F`).
fn percent_encode(s: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const RESERVED: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(s, RESERVED).to_string()
}

fn base64(input: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("guest:guest", "Z3Vlc3Q6Z3Vlc3Q="),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn management_address_follows_the_broker_url() {
        let m = Management::new("amqp://u:p@10.1.2.3:5672/%2f", None).unwrap();
        assert_eq!(m.base(), "http://10.1.2.3:15672");
        assert_eq!(m.vhost(), "/");
        let tls = Management::new("amqps://u:p@h.example/prod", None);
        #[cfg(feature = "tls")]
        {
            let m = tls.unwrap();
            assert_eq!(m.base(), "https://h.example:15671");
            assert_eq!(m.vhost(), "prod");
        }
        #[cfg(not(feature = "tls"))]
        {
            let e = tls.unwrap_err();
            assert!(e.to_string().contains("`tls` feature"), "{e}");
        }
        let m = Management::new(
            "amqp://u:p@h/%2f",
            Some("http://admin:s%40cret@mgmt:8080/rabbit/"),
        )
        .unwrap();
        assert_eq!(m.base(), "http://mgmt:8080/rabbit");
        assert_eq!(
            m.authorization,
            format!("Basic {}", base64(b"admin:s@cret"))
        );
        // A password with `/` and `@` stays out of the base address (and so out of every
        // error and `Debug` output).
        let m =
            Management::new("amqp://u:p@h/%2f", Some("http://admin:pa/s@s@mgmt:15672/x")).unwrap();
        assert_eq!(m.base(), "http://mgmt:15672/x");
        assert!(!format!("{m:?}").contains("pa/s"), "{m:?}");
        assert_eq!(
            m.authorization,
            format!("Basic {}", base64(b"admin:pa/s@s"))
        );
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(percent_encode("/"), "%2F");
        assert_eq!(percent_encode("a.b-c_d"), "a.b-c_d");
        assert_eq!(percent_encode("a b#"), "a%20b%23");
    }
}
