use tchu_core::{EncodeError, TopicError};

/// The result type of tchu's fallible operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in tchu's runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker could not be reached (the URL is shown with its password redacted).
    #[error(
        "cannot connect to the broker at {url}: {source}{see}",
        see = see("connect-refused")
    )]
    Connect {
        /// The broker URL, password redacted.
        url: String,
        /// The AMQP client's error.
        #[source]
        source: lapin::Error,
    },
    /// An AMQP operation failed.
    #[error(
        "broker operation `{op}` failed: {source}{see}",
        see = see("amqp-op-failed")
    )]
    Amqp {
        /// The operation, like `queue.declare`.
        op: &'static str,
        /// The AMQP client's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker refused the operation itself (403 ACCESS_REFUSED, 404 NOT_FOUND, 406
    /// PRECONDITION_FAILED such as a message over its `max_message_size`): trying again will
    /// not help. The connection is unaffected.
    #[error(
        "the broker refused `{op}`: {source}{see}",
        see = see("refused")
    )]
    Refused {
        /// The operation, like `basic.publish`.
        op: &'static str,
        /// The AMQP client's error, with the broker's reason.
        #[source]
        source: lapin::Error,
    },
    /// No queue is bound to the topic: the broker returned the message (mandatory flag).
    #[error(
        "no queue is bound to topic `{topic}`: no service subscribes to it, the event was not \
            delivered{see}",
        see = see("unroutable")
    )]
    Unroutable {
        /// The topic published to.
        topic: String,
    },
    /// The broker refused to take responsibility for the message (publisher confirm nack).
    #[error(
        "the broker refused the message for `{topic}` (negative publisher confirm){see}",
        see = see("nacked")
    )]
    Nacked {
        /// The topic published to.
        topic: String,
    },
    /// The encoded message is larger than the client's limit.
    #[error(
        "the message is {size} bytes, over the limit of {max} bytes{see}",
        see = see("too-large")
    )]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The payload could not be encoded.
    #[error("{0}{see}", see = see("encode"))]
    Encode(#[from] EncodeError),
    /// A topic or pattern breaks the grammar.
    #[error(
        "invalid topic: {0}{see}",
        see = see("invalid-topic")
    )]
    Topic(#[from] TopicError),
    /// A broker or management URL does not parse (shown with its password redacted).
    #[error(
        "invalid {what} URL `{url}`: {reason}{see}",
        see = see("broker-url")
    )]
    InvalidUrl {
        /// Which URL: `broker` or `management`.
        what: &'static str,
        /// The URL, password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No broker address was given (an empty `TCHU_BROKER_URL` list).
    #[error(
        "no broker address given{see}",
        see = see("broker-url")
    )]
    NoBrokerAddress,
    /// A name is longer than AMQP allows (255 bytes for exchanges, queues, routing keys).
    #[error(
        "{what} `{name}` is longer than 255 bytes{see}",
        see = see("name-too-long")
    )]
    NameTooLong {
        /// What the name is of, like `queue name`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// Something asked for needs a cargo feature this build of tchu lacks.
    #[error(
        "{needed_for} needs tchu's `{feature}` feature{see}",
        see = see("feature-missing")
    )]
    FeatureMissing {
        /// The feature, like `tls`.
        feature: &'static str,
        /// What needed it.
        needed_for: String,
    },
    /// The extra CA file (`TCHU_TLS_CA_FILE`) cannot be read or parsed.
    #[error(
        "CA file {}: {source}{see}", path.display(),
        see = see("ca-file")
    )]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why it could not be used.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A service's definition is inconsistent (no handlers, two handlers with one name, a
    /// handler needing state that was not provided, an invalid queue name): every problem found.
    #[error(
        "invalid service `{queue}`: {}{see}", problems.join("; "),
        see = see("invalid-service")
    )]
    InvalidService {
        /// The service queue.
        queue: String,
        /// Each problem, one sentence each.
        problems: Vec<String>,
    },
    /// An exchange or queue that is not declared (the in-memory broker knows only what was).
    #[error(
        "{what} `{name}` is not declared{see}",
        see = see("service-stopped")
    )]
    NotDeclared {
        /// `exchange` or `queue`.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// A service's consumer ended and cannot be restored (the in-memory broker's queue went away).
    #[error(
        "the consumer of `{queue}` was lost: {reason}{see}",
        see = see("service-stopped")
    )]
    ConsumerLost {
        /// The queue consumed.
        queue: String,
        /// Why.
        reason: String,
    },
    /// The consumer of RPC replies ended (its connection was lost) while a call waited.
    #[error(
        "the RPC reply consumer was lost: {reason}{see}",
        see = see("replies-lost")
    )]
    RepliesLost {
        /// Why.
        reason: String,
    },
    /// A task of the service's own failed (panicked or was cancelled).
    #[error(
        "a service task failed: {0}{see}",
        see = see("service-stopped")
    )]
    Task(#[source] tokio::task::JoinError),
    /// The metrics exporter (`TCHU_METRICS_ADDR`) could not start.
    #[error(
        "metrics exporter on `{addr}`: {source}{see}",
        see = see("metrics-exporter")
    )]
    Metrics {
        /// The address asked for.
        addr: String,
        /// Why it did not start.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The health probes (`TCHU_HEALTH_ADDR`) could not start.
    #[cfg(feature = "service")]
    #[error(
        "health probes on `{addr}`: {source}{see}",
        see = see("health-bind")
    )]
    Health {
        /// The address asked for.
        addr: String,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// No confirm in time: the connection was lost and not restored, or the broker did not
    /// answer. The broker may or may not have the message.
    #[error(
        "no confirm from the broker within {waited:?} (the connection was not restored, or \
            the broker did not answer): the message may not have been taken{see}",
        see = see("not-confirmed")
    )]
    Disconnected {
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// A delivery's acknowledgement (or its return to the queue) was not sent: its channel
    /// was closed first, or under it. The broker redelivers the message.
    #[error(
        "broker operation `{op}` was not sent: its channel was closed; the broker will \
            redeliver the message{see}",
        see = see("ack-failed")
    )]
    Unsettled {
        /// The operation, `basic.ack` or `basic.reject`.
        op: &'static str,
    },
    /// The RabbitMQ management API failed or could not be reached (`<service> check` lists
    /// bindings through it: AMQP cannot).
    #[error(
        "RabbitMQ management API: {0}{see}",
        see = see("management-api")
    )]
    Management(String),
    /// A second shutdown signal stopped the service without waiting for its handlers (a
    /// binary built with `tchu::run!()` then exits with status 130).
    #[error(
        "stopped at once by a second shutdown signal{see}",
        see = see("interrupted")
    )]
    Interrupted,
    /// The connection or service was shut down.
    #[error(
        "the tchu client is closed{see}",
        see = see("client-closed")
    )]
    Closed,
    /// The OpenTelemetry exporter's configuration (`OTEL_*` variables) cannot be used.
    #[error(
        "OpenTelemetry: {0}{see}",
        see = see("otlp-export")
    )]
    Telemetry(String),
    /// A publish asked for something tchu cannot carry: a reserved header, a priority over 9,
    /// an expiration together with a delay, a delay beyond the longest the broker can hold.
    #[error(
        "invalid publish options: {0}{see}",
        see = see("publish-options")
    )]
    PublishOptions(String),
    /// An inbox or outbox store (PostgreSQL, Redis) is misconfigured or unreachable.
    #[error(
        "store: {0}{see}",
        see = see("inbox-store")
    )]
    Store(String),
    /// A PostgreSQL operation of the outbox failed (the transaction is the caller's to roll
    /// back or retry).
    #[cfg(feature = "postgres")]
    #[error(
        "PostgreSQL: {0}{see}",
        see = see("outbox-database")
    )]
    Database(#[from] sqlx::Error),
    /// A handler's own failure, for handlers that return `tchu::Result`.
    #[error("{0}")]
    Handler(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// Wraps any error as a handler failure, for handlers returning [`Result`].
    ///
    /// ```
    /// let e = tchu_runtime::Error::handler(std::io::Error::other("disk full"));
    /// assert_eq!(e.to_string(), "disk full");
    /// ```
    pub fn handler(e: impl Into<Box<dyn std::error::Error + Send + Sync>> + 'static) -> Self {
        Self::Handler(boxed_error(e))
    }

    pub(crate) fn amqp(op: &'static str) -> impl FnOnce(lapin::Error) -> Self {
        move |source| Self::Amqp { op, source }
    }
}

/// Boxes a handler's error so that the box holds the error itself, where `retry(on(T))` can
/// find it by type. `anyhow::Error`'s own conversion boxes its private wrapper instead, which
/// hides the outermost error from downcasting; it is re-boxed here as the error it carries.
pub(crate) fn boxed_error<E>(e: E) -> Box<dyn std::error::Error + Send + Sync>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    #[cfg(feature = "service")]
    let e = {
        let any: Box<dyn std::any::Any> = Box::new(e);
        match any.downcast::<anyhow::Error>() {
            Ok(a) => return a.reallocate_into_boxed_dyn_error_without_backtrace(),
            Err(other) => match other.downcast::<E>() {
                Ok(e) => *e,
                Err(_) => unreachable!("the value is an E"),
            },
        }
    };
    e.into()
}

/// The pointer to a message's entry in the troubleshooting guide, appended to it.
pub(crate) fn see(entry: &'static str) -> See {
    See(entry)
}

/// ` (see docs/troubleshooting.md#<entry>)`.
pub(crate) struct See(&'static str);

impl std::fmt::Display for See {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, " (see docs/troubleshooting.md#{})", self.0)
    }
}
