//! Connecting with options: [`ClientBuilder`].

use super::{BROKER_URL_ENV, Client, DEFAULT_BROKER_URL, DEFAULT_MAX_MESSAGE_BYTES};
use crate::broker_url::ca_from_env;
use crate::error::Result;
use crate::transport::Transport;
use std::time::Duration;
use tchu_core::{Format, TchuTchu};

/// Environment variable naming the tchu-tchu version of the fleet when
/// [`ClientBuilder::tchu_tchu`] is not called: `2` (or `2.4.0`, `2.x`) publishes the 2.x form,
/// `3` the default one.
pub const TCHU_TCHU_VERSION_ENV: &str = "TCHU_TCHU_VERSION";

/// How long a publish waits by default for a lost connection to come back.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// The options of a [`Client`]'s connection: an owned builder with bare setters (as
/// `tokio::runtime::Builder`), ending in [`connect`](Self::connect). What belongs to the
/// connection (the address, the CA, how long publishes wait for a lost connection) is set here,
/// once; a connected client's handles differ only in what [`Client::with_format`] and
/// [`Client::with_max_message_bytes`] give them.
///
/// ```no_run
/// # async fn demo() -> tchu_runtime::Result<()> {
/// use std::time::Duration;
/// let client = tchu_runtime::Client::builder()
///     .url("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .publish_timeout(Duration::from_secs(5))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: Option<String>,
    ca_pem: Option<String>,
    publish_timeout: Duration,
    format: Format,
    tchu_tchu: Option<TchuTchu>,
    max_message_bytes: usize,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            url: None,
            ca_pem: None,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            format: Format::CeleryV2,
            tchu_tchu: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

impl ClientBuilder {
    /// The broker: one URL or a comma-separated list (see [`Client::connect`]). Default:
    /// `TCHU_BROKER_URL`, else `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// An extra CA (a PEM certificate chain) to trust for `amqps://` brokers, besides the
    /// system's roots. Default: the file `TCHU_TLS_CA_FILE` names, if set.
    pub fn ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// How long a publish (and a service started with this client, for its own broker
    /// operations) waits for a lost connection to come back before failing with
    /// [`Error::Disconnected`](crate::Error::Disconnected). Default: 30 s.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// The wire format publishes use (default: Celery v2, what Python tchu-tchu's `TchuClient`
    /// sends).
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Which Python tchu-tchu the fleet's consumers run: [`TchuTchu::V2`] writes Celery
    /// messages without `_tchu_meta`, as tchu-tchu 2.x publishes them (its handlers would
    /// otherwise receive that key in their data). Default: `TCHU_TCHU_VERSION` if set, else
    /// [`TchuTchu::V3`]. See [`Client::with_tchu_tchu`].
    pub fn tchu_tchu(mut self, version: TchuTchu) -> Self {
        self.tchu_tchu = Some(version);
        self
    }

    /// The size limit of messages (default 16 MiB): see [`Client::with_max_message_bytes`].
    pub fn max_message_bytes(mut self, max: usize) -> Self {
        self.max_message_bytes = max;
        self
    }

    /// Connects to RabbitMQ and declares the `tchu_events` exchange.
    ///
    /// # Errors
    /// As [`Client::connect`]; [`Error::CaFile`](crate::Error::CaFile) when
    /// `TCHU_TLS_CA_FILE` names a file that cannot be read;
    /// [`Error::InvalidSetting`](crate::Error::InvalidSetting) when `TCHU_TCHU_VERSION` is
    /// neither 2 nor 3.
    pub async fn connect(self) -> Result<Client> {
        let tchu_tchu = match self.tchu_tchu {
            Some(version) => version,
            None => tchu_tchu_from_env()?,
        };
        let url = match self.url {
            Some(url) => url,
            None => std::env::var(BROKER_URL_ENV).unwrap_or_else(|_| DEFAULT_BROKER_URL.into()),
        };
        let ca_pem = match self.ca_pem {
            Some(pem) => Some(pem),
            None => ca_from_env()?,
        };
        let transport = Transport::connect(&url, "client", ca_pem, self.publish_timeout).await?;
        Ok(Client::from_transport(transport)
            .with_format(self.format)
            .with_tchu_tchu(tchu_tchu)
            .with_max_message_bytes(self.max_message_bytes))
    }
}

/// The version `TCHU_TCHU_VERSION` names; the default when it is unset or empty.
pub(crate) fn tchu_tchu_from_env() -> Result<TchuTchu> {
    match std::env::var(TCHU_TCHU_VERSION_ENV) {
        Ok(v) if !v.trim().is_empty() => TchuTchu::parse(&v).ok_or(crate::Error::InvalidSetting {
            name: TCHU_TCHU_VERSION_ENV,
            value: v,
            expected: "2 or 3 (tchu-tchu's major version, like 2.4.0)",
        }),
        _ => Ok(TchuTchu::default()),
    }
}
