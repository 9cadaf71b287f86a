use tchu_core::{EncodeError, TopicError};

/// The result type of tchu's fallible operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The AMQP client's (lapin's) error, as the cause of a tchu error. lapin writes the I/O error
/// behind it into its own text and returns it as its source too; here it is the source only
/// when the text does not already say it, so an error chain (`anyhow`'s `{:#}`,
/// [`error_chain`]) names each cause once. The lapin error itself is one `Deref` away.
#[derive(Debug)]
pub struct AmqpError(lapin::Error);

impl AmqpError {
    /// The lapin error, to match its kind.
    pub fn lapin(&self) -> &lapin::Error {
        &self.0
    }
}

impl std::ops::Deref for AmqpError {
    type Target = lapin::Error;

    fn deref(&self) -> &lapin::Error {
        &self.0
    }
}

impl From<lapin::Error> for AmqpError {
    fn from(e: lapin::Error) -> Self {
        Self(e)
    }
}

impl std::fmt::Display for AmqpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for AmqpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let cause = std::error::Error::source(&self.0)?;
        let said = self.0.to_string().contains(&cause.to_string());
        (!said).then_some(cause)
    }
}

/// Everything that can go wrong in tchu's runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker could not be reached (the URL is shown with its password redacted).
    #[error("cannot connect to the broker at {url}")]
    Connect {
        /// The broker URL, password redacted.
        url: String,
        /// The AMQP client's error.
        #[source]
        source: AmqpError,
    },
    /// An AMQP operation failed.
    #[error("broker operation `{op}` failed")]
    Amqp {
        /// The operation, like `queue.declare`.
        op: &'static str,
        /// The AMQP client's error.
        #[source]
        source: AmqpError,
    },
    /// The broker refused the operation itself (403 ACCESS_REFUSED, 404 NOT_FOUND, 406
    /// PRECONDITION_FAILED such as a message over its `max_message_size`): trying again will
    /// not help. The connection is unaffected.
    #[error("the broker refused `{op}`")]
    Refused {
        /// The operation, like `basic.publish`.
        op: &'static str,
        /// The AMQP client's error, with the broker's reason.
        #[source]
        source: AmqpError,
    },
    /// No queue is bound to the topic: the broker returned the message (mandatory flag).
    #[error(
        "no queue is bound to topic `{topic}`: no service subscribes to it, the event was not \
            delivered"
    )]
    Unroutable {
        /// The topic published to.
        topic: String,
    },
    /// The broker refused to take responsibility for the message (publisher confirm nack).
    #[error("the broker refused the message for `{topic}` (negative publisher confirm)")]
    Nacked {
        /// The topic published to.
        topic: String,
    },
    /// The encoded message is larger than the client's limit.
    #[error("the message is {size} bytes, over the limit of {max} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The payload could not be encoded.
    #[error("the payload could not be encoded")]
    Encode(#[from] EncodeError),
    /// A topic or pattern breaks the grammar.
    #[error("invalid topic")]
    Topic(#[from] TopicError),
    /// A broker or management URL does not parse (shown with its password redacted).
    #[error("invalid {what} URL `{url}`: {reason}")]
    InvalidUrl {
        /// Which URL: `broker` or `management`.
        what: &'static str,
        /// The URL, password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No broker address was given (an empty `TCHU_BROKER_URL` list).
    #[error("no broker address given")]
    NoBrokerAddress,
    /// A name is longer than AMQP allows (255 bytes for exchanges, queues, routing keys).
    #[error("{what} `{name}` is longer than 255 bytes")]
    NameTooLong {
        /// What the name is of, like `queue name`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// Something asked for needs a cargo feature this build of tchu lacks.
    #[error("{needed_for} needs tchu's `{feature}` feature")]
    FeatureMissing {
        /// The feature, like `tls`.
        feature: &'static str,
        /// What needed it.
        needed_for: String,
    },
    /// The extra CA file (`TCHU_TLS_CA_FILE`) cannot be read or parsed.
    #[error(
        "CA file {} cannot be used", path.display()
    )]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why it could not be used.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A setting read from the environment has a value tchu does not know.
    #[error("{name}={value:?}: expected {expected}")]
    InvalidSetting {
        /// The environment variable, like `TCHU_TCHU_VERSION`.
        name: &'static str,
        /// The value found.
        value: String,
        /// What it may be.
        expected: &'static str,
    },
    /// A service's definition is inconsistent (no handlers, two handlers with one name, a
    /// handler needing state that was not provided, an invalid queue name): every problem found.
    #[error(
        "invalid service `{queue}`: {}", problems.join("; ")
    )]
    InvalidService {
        /// The service queue.
        queue: String,
        /// Each problem, one sentence each.
        problems: Vec<String>,
    },
    /// An exchange or queue that is not declared (the in-memory broker knows only what was).
    #[error("{what} `{name}` is not declared")]
    NotDeclared {
        /// `exchange` or `queue`.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// A service's consumer ended and cannot be restored (the in-memory broker's queue went away).
    #[error("the consumer of `{queue}` was lost: {reason}")]
    ConsumerLost {
        /// The queue consumed.
        queue: String,
        /// Why.
        reason: String,
    },
    /// The consumer of RPC replies ended (its connection was lost) while a call waited.
    #[error("the RPC reply consumer was lost: {reason}")]
    RepliesLost {
        /// Why.
        reason: String,
    },
    /// A task of the service's own failed (panicked or was cancelled).
    #[error("a service task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The metrics exporter (`TCHU_METRICS_ADDR`) could not start.
    #[error("metrics exporter on `{addr}` did not start")]
    Metrics {
        /// The address asked for.
        addr: String,
        /// Why it did not start.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The health probes (`TCHU_HEALTH_ADDR`) could not start.
    #[cfg(feature = "service")]
    #[error("health probes on `{addr}` did not start")]
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
            the broker did not answer): the message may not have been taken"
    )]
    Disconnected {
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// A delivery's acknowledgement (or its return to the queue) was not sent: its channel
    /// was closed first, or under it. The broker redelivers the message.
    #[error(
        "broker operation `{op}` was not sent: its channel was closed; the broker will \
            redeliver the message"
    )]
    Unsettled {
        /// The operation, `basic.ack` or `basic.reject`.
        op: &'static str,
    },
    /// The RabbitMQ management API failed or could not be reached (`<service> check` lists
    /// bindings through it: AMQP cannot).
    #[error("RabbitMQ management API: {0}")]
    Management(String),
    /// A second shutdown signal stopped the service without waiting for its handlers (a
    /// binary built with `tchu::run!()` then exits with status 130).
    #[error("stopped at once by a second shutdown signal")]
    Interrupted,
    /// The connection or service was shut down.
    #[error("the tchu client is closed")]
    Closed,
    /// A message's `x-tchu-*` control headers do not carry a valid signature, so tchu will not
    /// sign them again (replaying it with `--force` would launder a stranger's headers).
    #[error("the message's control headers are not trusted: {reason}")]
    Untrusted {
        /// What is wrong with the signature.
        reason: &'static str,
    },
    /// The OpenTelemetry exporter's configuration (`OTEL_*` variables) cannot be used.
    #[error("OpenTelemetry: {0}")]
    Telemetry(String),
    /// A publish asked for something tchu cannot carry: a reserved header, a priority over 9,
    /// an expiration together with a delay, a delay beyond the longest the broker can hold.
    #[error("invalid publish options: {0}")]
    PublishOptions(String),
    /// An inbox or outbox store (PostgreSQL, Redis) is misconfigured or unreachable.
    #[error("store: {0}")]
    Store(String),
    /// A PostgreSQL operation of the outbox failed (the transaction is the caller's to roll
    /// back or retry).
    #[cfg(feature = "postgres")]
    #[error("PostgreSQL operation failed")]
    Database(#[from] sqlx::Error),
    /// A handler's own failure, for handlers that return `tchu::Result`.
    #[error(transparent)]
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
        move |source| Self::Amqp {
            op,
            source: source.into(),
        }
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

/// What kind of failure an [`Error`] is: what a caller matches on to decide what to do, without
/// matching every variant. New kinds may come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The broker could not be reached, or the connection or channel was lost: trying again
    /// later may work.
    Connection,
    /// The broker (or the client's own limit) refused the operation or the message: trying
    /// again unchanged will not help.
    Refused,
    /// No queue is bound to the topic: no service subscribes to it.
    Unroutable,
    /// What was asked for is invalid: a topic, a payload, a name, publish options.
    InvalidInput,
    /// The build or the environment lacks something: a URL, a cargo feature, a CA file, a
    /// port, a service definition that holds together, OpenTelemetry settings.
    Configuration,
    /// The RabbitMQ management API failed or could not be reached.
    Management,
    /// An inbox or outbox store (PostgreSQL, Redis) failed.
    Store,
    /// A handler failed.
    Handler,
    /// A second shutdown signal stopped the service without waiting for its handlers.
    Interrupted,
    /// The client or service was shut down.
    Closed,
    /// A task of tchu's own failed: a bug.
    Internal,
}

impl ErrorKind {
    /// The process exit code for a failure of this kind, the same for a `run!()` binary's
    /// commands and for the `tchu` tool: 3 the broker or the management API cannot be
    /// reached, 2 invalid input or configuration, 130 interrupted, 1 any other failure.
    #[must_use]
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Connection | Self::Management => 3,
            Self::InvalidInput | Self::Configuration => 2,
            Self::Interrupted => 130,
            _ => 1,
        }
    }
}

impl Error {
    /// What kind of failure this is.
    ///
    /// ```
    /// use tchu_runtime::{Error, ErrorKind};
    /// let e = Error::handler(std::io::Error::other("disk full"));
    /// assert_eq!(e.kind(), ErrorKind::Handler);
    /// ```
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Connect { .. } => ErrorKind::Connection,
            Self::Amqp { .. } => ErrorKind::Connection,
            Self::Refused { .. } => ErrorKind::Refused,
            Self::Unroutable { .. } => ErrorKind::Unroutable,
            Self::Nacked { .. } => ErrorKind::Refused,
            Self::TooLarge { .. } => ErrorKind::Refused,
            Self::Encode(_) => ErrorKind::InvalidInput,
            Self::Topic(_) => ErrorKind::InvalidInput,
            Self::InvalidUrl { .. } => ErrorKind::Configuration,
            Self::NoBrokerAddress => ErrorKind::Configuration,
            Self::NameTooLong { .. } => ErrorKind::InvalidInput,
            Self::FeatureMissing { .. } => ErrorKind::Configuration,
            Self::CaFile { .. } => ErrorKind::Configuration,
            Self::InvalidSetting { .. } => ErrorKind::Configuration,
            Self::InvalidService { .. } => ErrorKind::Configuration,
            Self::NotDeclared { .. } => ErrorKind::Refused,
            Self::ConsumerLost { .. } => ErrorKind::Connection,
            Self::RepliesLost { .. } => ErrorKind::Connection,
            Self::Task(_) => ErrorKind::Internal,
            Self::Metrics { .. } => ErrorKind::Configuration,
            #[cfg(feature = "service")]
            Self::Health { .. } => ErrorKind::Configuration,
            Self::Disconnected { .. } => ErrorKind::Connection,
            Self::Unsettled { .. } => ErrorKind::Connection,
            Self::Management(_) => ErrorKind::Management,
            Self::Interrupted => ErrorKind::Interrupted,
            Self::Closed => ErrorKind::Closed,
            Self::Untrusted { .. } => ErrorKind::InvalidInput,
            Self::Telemetry(_) => ErrorKind::Configuration,
            Self::PublishOptions(_) => ErrorKind::InvalidInput,
            Self::Store(_) => ErrorKind::Store,
            #[cfg(feature = "postgres")]
            Self::Database(_) => ErrorKind::Store,
            Self::Handler(_) => ErrorKind::Handler,
        }
    }

    /// The entry of the troubleshooting guide for this error: an anchor in
    /// [`tchu::troubleshooting`](https://docs.rs/tchu/latest/tchu/troubleshooting/), where
    /// the guide is published with the crate's documentation (`docs/troubleshooting.md` in
    /// the repository).
    ///
    /// ```
    /// let e = tchu_runtime::Error::Closed;
    /// assert_eq!(e.help(), "client-closed");
    /// ```
    #[must_use]
    pub fn help(&self) -> &'static str {
        match self {
            Self::Connect { .. } => entry("connect-refused"),
            Self::Amqp { .. } => entry("amqp-op-failed"),
            Self::Refused { .. } => entry("refused"),
            Self::Unroutable { .. } => entry("unroutable"),
            Self::Nacked { .. } => entry("nacked"),
            Self::TooLarge { .. } => entry("too-large"),
            Self::Encode(_) => entry("encode"),
            Self::Topic(_) => entry("invalid-topic"),
            Self::InvalidUrl { .. } => entry("broker-url"),
            Self::NoBrokerAddress => entry("broker-url"),
            Self::NameTooLong { .. } => entry("name-too-long"),
            Self::FeatureMissing { .. } => entry("feature-missing"),
            Self::CaFile { .. } => entry("ca-file"),
            Self::InvalidSetting { .. } => entry("invalid-setting"),
            Self::InvalidService { .. } => entry("invalid-service"),
            Self::NotDeclared { .. } => entry("service-stopped"),
            Self::ConsumerLost { .. } => entry("service-stopped"),
            Self::RepliesLost { .. } => entry("replies-lost"),
            Self::Task(_) => entry("service-stopped"),
            Self::Metrics { .. } => entry("metrics-exporter"),
            #[cfg(feature = "service")]
            Self::Health { .. } => entry("health-bind"),
            Self::Disconnected { .. } => entry("not-confirmed"),
            Self::Unsettled { .. } => entry("ack-failed"),
            Self::Management(_) => entry("management-api"),
            Self::Interrupted => entry("interrupted"),
            Self::Untrusted { .. } => entry("dlq-untrusted"),
            Self::Closed => entry("client-closed"),
            Self::Telemetry(_) => entry("otlp-export"),
            Self::PublishOptions(_) => entry("publish-options"),
            Self::Store(_) => entry("inbox-store"),
            #[cfg(feature = "postgres")]
            Self::Database(_) => entry("outbox-database"),
            Self::Handler(_) => entry("handler-failed"),
        }
    }
}

/// An error and every cause under it, on one line (`error: cause: cause`): what a log line
/// needs, since an error's `Display` says only what failed at its own level.
///
/// ```
/// let e = tchu_runtime::Error::handler(std::io::Error::other("disk full"));
/// assert_eq!(tchu_runtime::error_chain(&e).to_string(), "disk full");
/// ```
pub fn error_chain<E: std::error::Error + ?Sized>(e: &E) -> impl std::fmt::Display + '_ {
    struct Chain<'a, E: ?Sized>(&'a E);
    impl<E: std::error::Error + ?Sized> std::fmt::Display for Chain<'_, E> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", self.0)?;
            let mut cause = self.0.source();
            while let Some(c) = cause {
                write!(f, ": {c}")?;
                cause = c.source();
            }
            Ok(())
        }
    }
    Chain(e)
}

/// Names an entry of the troubleshooting guide (`tests/docs.rs` checks that each exists).
pub(crate) const fn entry(id: &'static str) -> &'static str {
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lapin_cause_is_named_once_in_the_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused here");
        let e = Error::Connect {
            url: "amqp://127.0.0.1:1".into(),
            source: lapin::Error::from(io).into(),
        };
        let chain = error_chain(&e).to_string();
        assert_eq!(chain.matches("refused here").count(), 1, "{chain}");
        assert!(chain.starts_with("cannot connect to the broker at amqp://127.0.0.1:1: "));
    }

    fn with_causes() -> Vec<Error> {
        let io = || std::io::Error::other("address in use");
        vec![
            Error::Metrics {
                addr: "127.0.0.1:9".into(),
                source: Box::new(io()),
            },
            Error::CaFile {
                path: "/ca.pem".into(),
                source: Box::new(io()),
            },
            #[cfg(feature = "service")]
            Error::Health {
                addr: "127.0.0.1:9".into(),
                source: io(),
            },
            Error::Topic(tchu_core::topic::validate_topic("a..b").unwrap_err()),
        ]
    }

    #[test]
    fn a_cause_is_the_source_and_is_not_repeated_in_the_message() {
        for e in with_causes() {
            let cause = std::error::Error::source(&e).expect("a source").to_string();
            assert!(!e.to_string().contains(&cause), "{e} repeats {cause}");
            let chain = error_chain(&e).to_string();
            assert_eq!(chain.matches(&cause).count(), 1, "{chain}");
            assert!(!chain.contains("troubleshooting.md"), "{chain}");
        }
    }

    #[cfg(feature = "service")]
    #[test]
    fn anyhow_prints_a_chain_once() {
        for e in with_causes() {
            let cause = std::error::Error::source(&e).unwrap().to_string();
            let printed = format!("{:#}", anyhow::Error::new(e));
            assert_eq!(printed.matches(&cause).count(), 1, "{printed}");
        }
    }

    #[test]
    fn the_kind_decides_the_exit_code() {
        assert_eq!(Error::Closed.kind(), ErrorKind::Closed);
        assert_eq!(Error::NoBrokerAddress.kind().exit_code(), 2);
        let lost = Error::Disconnected {
            waited: std::time::Duration::from_secs(1),
        };
        assert_eq!(lost.kind().exit_code(), 3);
        assert_eq!(Error::Interrupted.kind().exit_code(), 130);
        let unroutable = Error::Unroutable { topic: "a".into() };
        assert_eq!(
            (unroutable.kind().exit_code(), unroutable.help()),
            (1, "unroutable")
        );
    }
}
