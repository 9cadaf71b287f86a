use tchu_core::{EncodeError, TopicError};

/// The result type of tchu's fallible operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in tchu's runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker could not be reached (the URL is shown with its password redacted).
    #[error("cannot connect to the broker at {url}: {source}")]
    Connect {
        /// The broker URL, password redacted.
        url: String,
        /// The AMQP client's error.
        #[source]
        source: lapin::Error,
    },
    /// An AMQP operation failed.
    #[error("broker operation `{op}` failed: {source}")]
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
    #[error("the broker refused `{op}`: {source}")]
    Refused {
        /// The operation, like `basic.publish`.
        op: &'static str,
        /// The AMQP client's error, with the broker's reason.
        #[source]
        source: lapin::Error,
    },
    /// No queue is bound to the topic: the broker returned the message (mandatory flag).
    #[error(
        "no queue is bound to topic `{topic}`: no service subscribes to it, the event was not delivered"
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
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A topic or pattern breaks the grammar.
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
    /// The service or client is configured inconsistently.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The broker connection was lost and not restored in time; the operation did not happen.
    #[error("the broker connection was not restored within {waited:?}; nothing was sent")]
    Disconnected {
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// The RabbitMQ management API failed or could not be reached (`<service> check` lists
    /// bindings through it: AMQP cannot).
    #[error("RabbitMQ management API: {0}")]
    Management(String),
    /// The connection or service was shut down.
    #[error("the tchu client is closed")]
    Closed,
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
