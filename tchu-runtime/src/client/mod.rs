//! The client: connects to a transport and publishes events with broker confirms.

mod builder;
mod call;
mod options;

use crate::error::Result;
use crate::rpc::{CallError, Replies};
use crate::transport::{EXCHANGE, MemoryBroker, Transport};
#[cfg(feature = "postgres")]
pub(crate) use builder::tchu_tchu_from_env;
pub use builder::{ClientBuilder, DEFAULT_PUBLISH_TIMEOUT, TCHU_TCHU_VERSION_ENV};
pub use call::Call;
pub use options::{MAX_EXTRA_HEADER_BYTES, PublishOptions};
use serde::Serialize;
use std::borrow::Borrow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tchu_core::envelope::{EncodeOptions, WireMessage, encode_typed};
use tchu_core::{Event, Format, Request, TchuTchu, topic::validate_topic};

/// Environment variable holding the broker URL.
pub const BROKER_URL_ENV: &str = "TCHU_BROKER_URL";
pub use crate::broker_url::TLS_CA_FILE_ENV;
/// Broker URL used when [`BROKER_URL_ENV`] is unset.
pub const DEFAULT_BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A connection to the broker (RabbitMQ or the in-memory one) for publishing events.
///
/// Cheap to clone: clones share one connection and one confirm-mode channel. A handler can take
/// a `Client` argument to publish further events.
///
/// ```no_run
/// # #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// # struct UserCreated { user_id: u64 }
/// # impl tchu_core::Event for UserCreated { const TOPIC: &'static str = "user.created"; }
/// # async fn demo() -> tchu_runtime::Result<()> {
/// let client = tchu_runtime::Client::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// let id = client.publish(&UserCreated { user_id: 1 }).await?; // returns once the broker confirmed
/// println!("published {id}");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    format: Format,
    tchu_tchu: TchuTchu,
    max_message_bytes: usize,
}

/// How many publisher confirms [`Client::publish_all`] keeps in flight.
pub const PUBLISH_WINDOW: usize = 256;

/// Largest message body tchu publishes or accepts by default (RabbitMQ's own limit is 128 MiB;
/// anything near it hurts the broker long before).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

struct Shared {
    transport: Transport,
    /// The reply consumer, opened on the first call and reopened after a connection loss.
    replies: tokio::sync::Mutex<Option<Arc<Replies>>>,
    /// Sent as `reply_to` on v2 messages, as tchu-tchu's publisher does on every publish.
    reply_to: String,
    /// Set once the delay route's levels are declared on the broker.
    delay_levels: tokio::sync::OnceCell<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("transport", &self.shared.transport.describe())
            .field("format", &self.format)
            .field("tchu_tchu", &self.tchu_tchu)
            .finish()
    }
}

impl Client {
    /// Connects to RabbitMQ and declares the `tchu_events` exchange. `url` may list several
    /// brokers separated by commas (a cluster): the first reachable one is used, and the
    /// connection fails over in order when lost. The connection is supervised: publishes and
    /// services wait for a reconnection instead of failing. `amqps://` addresses need the `tls`
    /// feature; `TCHU_TLS_CA_FILE` names an extra CA to trust.
    ///
    /// # Errors
    /// [`Error::Connect`](crate::Error::Connect) when the broker cannot be reached or refuses the credentials.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder().url(url).connect().await
    }

    /// Connects over `amqps://` trusting `ca_pem` (a PEM certificate chain) besides the system's
    /// roots: for brokers with a private CA. Needs the `tls` feature for `amqps://` addresses.
    ///
    /// # Errors
    /// As [`Client::connect`]; a certificate from another CA fails the handshake.
    pub async fn connect_with_ca(url: &str, ca_pem: &str) -> Result<Self> {
        Self::builder().url(url).ca_pem(ca_pem).connect().await
    }

    /// Connects to the URL in `TCHU_BROKER_URL`, or to `amqp://guest:guest@127.0.0.1:5672/%2f`.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn from_env() -> Result<Self> {
        Self::builder().connect().await
    }

    /// Options for the connection (its address, CA, publish timeout): see [`ClientBuilder`].
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client on an in-memory broker.
    pub fn memory(broker: &MemoryBroker) -> Self {
        Self::from_transport(Transport::memory(broker))
    }

    pub(crate) fn from_transport(transport: Transport) -> Self {
        Self {
            shared: Arc::new(Shared {
                transport,
                replies: tokio::sync::Mutex::new(None),
                reply_to: uuid::Uuid::new_v4().to_string(),
                delay_levels: tokio::sync::OnceCell::new(),
            }),
            format: Format::CeleryV2,
            tchu_tchu: TchuTchu::V3,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// The same client, publishing in another wire format (default: Celery v2, what Python
    /// tchu-tchu's `TchuClient` sends).
    pub fn with_format(&self, format: Format) -> Self {
        Self {
            format,
            ..self.clone()
        }
    }

    /// The same client, writing its Celery messages for tchu-tchu 2.x consumers
    /// ([`TchuTchu::V2`]: no `_tchu_meta`, and events without a `reply_to`) or 3.x ones
    /// ([`TchuTchu::V3`], the default). tchu's own consumers read both forms.
    ///
    /// ```no_run
    /// # async fn demo() -> tchu_runtime::Result<()> {
    /// use tchu_core::TchuTchu;
    /// let client = tchu_runtime::Client::from_env().await?.with_tchu_tchu(TchuTchu::V2);
    /// client.publish_raw("user.created", &serde_json::json!({"user_id": 1})).await?;
    /// # Ok(()) }
    /// ```
    pub fn with_tchu_tchu(&self, version: TchuTchu) -> Self {
        Self {
            tchu_tchu: version,
            ..self.clone()
        }
    }

    /// Which tchu-tchu this handle's Celery messages are written for.
    pub fn tchu_tchu(&self) -> TchuTchu {
        self.tchu_tchu
    }

    fn wire(&self) -> Wire<'_> {
        Wire {
            format: self.format,
            tchu_tchu: self.tchu_tchu,
            reply_to: &self.shared.reply_to,
            max_message_bytes: self.max_message_bytes,
        }
    }

    /// The same client with another size limit: larger payloads are refused on publish
    /// ([`Error::TooLarge`](crate::Error::TooLarge)), and a service started with this client
    /// dead-letters larger deliveries instead of decoding them.
    pub fn with_max_message_bytes(&self, max: usize) -> Self {
        Self {
            max_message_bytes: max,
            ..self.clone()
        }
    }

    /// The size limit of this handle.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// The wire format this handle publishes in.
    pub fn format(&self) -> Format {
        self.format
    }

    #[cfg(feature = "service")]
    pub(crate) fn transport(&self) -> &Transport {
        &self.shared.transport
    }

    /// Whether this client runs on the in-memory broker.
    pub fn is_memory(&self) -> bool {
        self.shared.transport.is_memory()
    }

    /// Publishes a typed event on its topic and waits for the broker's confirm. Returns the
    /// message id.
    ///
    /// # Errors
    /// [`Error::Unroutable`](crate::Error::Unroutable) when no queue is bound to the topic (the broker returned it);
    /// [`Error::Nacked`](crate::Error::Nacked) when the broker refused it; [`Error::Amqp`](crate::Error::Amqp) on connection trouble;
    /// [`Error::Encode`](crate::Error::Encode) when the event does not serialise to a JSON object.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<String> {
        self.publish_with(event, &PublishOptions::new()).await
    }

    /// Publishes a typed event with options: a delay, extra headers, an expiration, a priority
    /// (see [`PublishOptions`]). Confirmed by the broker as [`Client::publish`] is; a delayed
    /// event is confirmed once the broker holds it, and delivered when it is due.
    ///
    /// # Errors
    /// As [`Client::publish`], plus [`Error::PublishOptions`](crate::Error::PublishOptions) for
    /// options tchu cannot carry. A delayed event is not checked for subscribers: one nobody
    /// is bound to when it is due is dropped by the broker.
    pub async fn publish_with<E: Event>(
        &self,
        event: &E,
        options: impl Borrow<PublishOptions>,
    ) -> Result<String> {
        let schema = crate::catalog::fingerprint(E::TOPIC);
        self.publish_payload(E::TOPIC, event, schema, options.borrow(), &|_| {})
            .await
    }

    /// Publishes a typed event `delay` from now, held by the broker (to the millisecond; see
    /// [`PublishOptions::delay`]).
    ///
    /// # Errors
    /// As [`Client::publish_with`].
    pub async fn publish_in<E: Event>(&self, event: &E, delay: Duration) -> Result<String> {
        self.publish_with(event, &PublishOptions::new().delay(delay))
            .await
    }

    /// Publishes a typed event to be delivered at `when` (see [`PublishOptions::due_at`]).
    ///
    /// # Errors
    /// As [`Client::publish_with`].
    pub async fn publish_at<E: Event>(&self, event: &E, when: SystemTime) -> Result<String> {
        self.publish_with(event, &PublishOptions::new().due_at(when))
            .await
    }

    /// Publishes any JSON object on a topic, for tools and dynamic producers.
    ///
    /// # Errors
    /// As [`Client::publish`], plus [`Error::Topic`](crate::Error::Topic) for a topic that breaks the grammar.
    pub async fn publish_raw(&self, topic: &str, payload: &serde_json::Value) -> Result<String> {
        self.publish_payload(topic, payload, None, &PublishOptions::new(), &|_| {})
            .await
    }

    /// [`Client::publish_raw`] with options.
    ///
    /// # Errors
    /// As [`Client::publish_raw`] and [`Client::publish_with`].
    pub async fn publish_raw_with(
        &self,
        topic: &str,
        payload: &serde_json::Value,
        options: impl Borrow<PublishOptions>,
    ) -> Result<String> {
        self.publish_payload(topic, payload, None, options.borrow(), &|_| {})
            .await
    }

    /// [`Client::publish_with`] for tchu's own messages: `finish` adds what no caller may
    /// (control headers, and their signature) once the options are applied.
    #[cfg(feature = "service")]
    pub(crate) async fn publish_finished<E: Event>(
        &self,
        event: &E,
        options: &PublishOptions,
        finish: &(dyn Fn(&mut WireMessage) + Sync),
    ) -> Result<String> {
        let schema = crate::catalog::fingerprint(E::TOPIC);
        self.publish_payload(E::TOPIC, event, schema, options, finish)
            .await
    }

    async fn publish_payload<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        payload: &T,
        schema: Option<&str>,
        options: &PublishOptions,
        finish: &(dyn Fn(&mut WireMessage) + Sync),
    ) -> Result<String> {
        let (id, mut msg) = encode_event(topic, payload, self.wire())?;
        stamp_schema(&mut msg, schema);
        let route = options.apply(&mut msg)?;
        finish(&mut msg);
        let kind = crate::observe::SpanKind::Producer;
        let mut span =
            crate::observe::message_span(|| format!("publish {topic}"), kind, &msg, topic);
        let sent = match route {
            None => self.shared.transport.publish(EXCHANGE, &msg, true).await,
            Some(route) => {
                span.attr("tchu.delay_ms", route.ms);
                let declared = &self.shared.delay_levels;
                (self.shared.transport)
                    .publish_delayed(msg, &route, declared)
                    .await
            }
        };
        if let Err(e) = &sent {
            span.fail(e);
        }
        sent?;
        tracing::debug!(topic, id = %id, "published");
        Ok(id)
    }

    /// Publishes already-encoded events in order, awaiting their confirms together: one result
    /// per message, in order (the outbox relay's path).
    #[cfg(feature = "postgres")]
    pub(crate) async fn publish_encoded(&self, msgs: &[WireMessage]) -> Vec<Result<()>> {
        let window = msgs.len();
        self.shared
            .transport
            .publish_batch(EXCHANGE, msgs, window)
            .await
    }

    /// Publishes many typed events at once, in order, with up to [`PUBLISH_WINDOW`] publisher
    /// confirms in flight: no task per event, and one round trip per window instead of one per
    /// event. One result per event, in order: `Ok(id)` once the broker confirmed it (mandatory,
    /// persistent, as [`Client::publish`]). After a failure to send (a lost connection, a
    /// channel the broker closed), the events after it are not sent and report
    /// [`Error::Disconnected`](crate::Error::Disconnected): publishing again those that did not
    /// return `Ok` is at-least-once, never a loss. An event that does not encode reports its
    /// error and the others are sent.
    ///
    /// ```no_run
    /// # #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    /// # struct Tick { n: u64 }
    /// # impl tchu_core::Event for Tick { const TOPIC: &'static str = "ticks"; }
    /// # async fn demo(client: tchu_runtime::Client) -> tchu_runtime::Result<()> {
    /// let ticks: Vec<Tick> = (0..10_000).map(|n| Tick { n }).collect();
    /// let results = client.publish_all(&ticks).await;
    /// let unconfirmed = results.iter().filter(|r| r.is_err()).count();
    /// assert_eq!(unconfirmed, 0);
    /// # Ok(()) }
    /// ```
    pub async fn publish_all<'a, E: Event + 'a>(
        &self,
        events: impl IntoIterator<Item = &'a E>,
    ) -> Vec<Result<String>> {
        let schema = crate::catalog::fingerprint(E::TOPIC);
        let mut results: Vec<Result<String>> = Vec::new();
        let (mut ids, mut msgs, mut slots) = (Vec::new(), Vec::new(), Vec::new());
        for event in events {
            match encode_event(E::TOPIC, event, self.wire()) {
                Ok((id, mut msg)) => {
                    stamp_schema(&mut msg, schema);
                    slots.push(results.len());
                    results.push(Ok(String::new()));
                    ids.push(id);
                    msgs.push(msg);
                }
                Err(e) => results.push(Err(e)),
            }
        }
        let kind = crate::observe::SpanKind::Producer;
        let name = || format!("publish {}", E::TOPIC);
        let mut spans: Vec<_> = (msgs.iter())
            .map(|m| crate::observe::message_span(name, kind, m, E::TOPIC))
            .collect();
        let sent = (self.shared.transport)
            .publish_batch(EXCHANGE, &msgs, PUBLISH_WINDOW)
            .await;
        for (((slot, id), outcome), span) in slots.into_iter().zip(ids).zip(sent).zip(&mut spans) {
            if let Err(e) = &outcome {
                span.fail(e);
            }
            results[slot] = outcome.map(|()| id);
        }
        results
    }

    /// Calls a request event's responder and waits for its typed answer.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    /// # struct Pay { cents: i64 }
    /// # impl tchu_core::Event for Pay { const TOPIC: &'static str = "rpc.pay"; }
    /// # impl tchu_core::Request for Pay { type Response = String; type Error = tchu_core::RpcError; }
    /// # async fn demo(client: tchu_runtime::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let receipt: String = client.call(&Pay { cents: 500 }).timeout(Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// The future resolves to the response, or a [`CallError`]: the business error, timeout, no
    /// responder (at once, not by timing out), the responder's failure, an undecodable answer,
    /// or connection trouble.
    pub fn call<'a, R: Request>(&'a self, request: &'a R) -> Call<'a, R> {
        Call::new(self, request)
    }

    /// Calls any topic with a JSON object, for tools: the answer, or the business error, as JSON.
    ///
    /// A raw call cannot tell a responder's unmarked `null` from a Python observer's `None`, so
    /// it takes neither as the answer: it waits for a reply that says something (a tchu
    /// responder's `null` is marked, and is an answer).
    ///
    /// # Errors
    /// As [`Client::call`], with the business error as a JSON value.
    pub async fn call_raw(
        &self,
        topic: &str,
        payload: &serde_json::Value,
        timeout: std::time::Duration,
    ) -> std::result::Result<serde_json::Value, CallError<serde_json::Value>> {
        crate::rpc::raw_answer(self.call_value(topic, payload, timeout, false).await)
    }

    /// The reply consumer for calls, opened on the current connection; a consumer left on an
    /// older connection is replaced. Waits for a reconnection no longer than `deadline`.
    pub(crate) async fn replies(&self, deadline: tokio::time::Instant) -> Result<Arc<Replies>> {
        let current = self.shared.transport.generation();
        let mut slot = self.shared.replies.lock().await;
        if let Some(r) = slot
            .as_ref()
            .filter(|r| r.is_alive() && Some(r.generation()) == current)
        {
            return Ok(r.clone());
        }
        let endpoint = self.shared.transport.open_replies(deadline).await?;
        let r = Replies::start(endpoint, self.max_message_bytes());
        *slot = Some(r.clone());
        Ok(r)
    }

    /// Closes the connection. Other clones stop working too.
    pub async fn close(&self) {
        self.shared.transport.close().await;
    }
}

/// Adds the event type's schema fingerprint ([`tchu_core::headers::SCHEMA_HEADER`]).
pub(crate) fn stamp_schema(msg: &mut WireMessage, schema: Option<&str>) {
    if let Some(fp) = schema {
        msg.headers
            .insert(tchu_core::headers::SCHEMA_HEADER.into(), fp.into());
    }
}

/// How a publisher writes its events: the format, the tchu-tchu version, its reply queue (set
/// on Celery v2 events as tchu-tchu's publisher does) and the size limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wire<'a> {
    pub(crate) format: Format,
    pub(crate) tchu_tchu: TchuTchu,
    pub(crate) reply_to: &'a str,
    pub(crate) max_message_bytes: usize,
}

/// Encodes an event as `Client::publish` sends it: a new id, the format's bytes, the current
/// trace context, the size limit checked. Returns the id and the message.
pub(crate) fn encode_event<T: Serialize + ?Sized>(
    topic: &str,
    payload: &T,
    wire: Wire<'_>,
) -> Result<(String, WireMessage)> {
    validate_topic(topic)?;
    let id = uuid::Uuid::new_v4().to_string();
    let mut msg = encode_typed(
        topic,
        payload,
        &EncodeOptions {
            format: wire.format,
            id: &id,
            is_rpc: false,
            reply_to: (wire.format == Format::CeleryV2).then_some(wire.reply_to),
            tchu_tchu: wire.tchu_tchu,
        },
    )?;
    crate::observe::stamp(&mut msg.headers);
    if msg.body.len() > wire.max_message_bytes {
        return Err(crate::Error::TooLarge {
            size: msg.body.len(),
            max: wire.max_message_bytes,
        });
    }
    Ok((id, msg))
}
