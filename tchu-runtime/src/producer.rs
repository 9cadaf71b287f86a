//! A publish-only producer for serverless functions and command-line tools.

use crate::client::Client;
use crate::error::Result;
use tchu_core::{Event, Format, TchuTchu};

/// Publish-only: connect, publish with broker confirms, close. No service, no reply consumer,
/// no background work beyond the connection itself — what a cloud function needs.
///
/// It is a scope guard: dropping it closes the connection (prefer [`Producer::close`], which
/// waits for the close to complete).
///
/// ```no_run
/// # #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// # struct UserCreated { user_id: u64 }
/// # impl tchu_core::Event for UserCreated { const TOPIC: &'static str = "user.created"; }
/// # async fn demo() -> tchu_runtime::Result<()> {
/// let producer = tchu_runtime::Producer::from_env().await?;
/// producer.publish(&UserCreated { user_id: 1 }).await?;       // confirmed by the broker
/// producer.publish_raw("audit.login", &serde_json::json!({"user_id": 1})).await?;
/// producer.close().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Producer {
    client: Option<Client>,
}

impl Producer {
    /// Connects to `url` (see [`Client::connect`]).
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn connect(url: &str) -> Result<Self> {
        Ok(Self {
            client: Some(Client::connect(url).await?),
        })
    }

    /// Connects to `TCHU_BROKER_URL`, or the local default.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn from_env() -> Result<Self> {
        Ok(Self {
            client: Some(Client::from_env().await?),
        })
    }

    /// A producer over an existing client (the in-memory broker in tests, for instance).
    pub fn from_client(client: Client) -> Self {
        Self {
            client: Some(client),
        }
    }

    /// Publishes in another wire format: [`Format::CeleryV1`] is what tchu-tchu's
    /// `ServerlessProducer` sends; the default is the full client's Celery v2.
    #[must_use]
    pub fn with_format(mut self, format: Format) -> Self {
        self.client = self.client.take().map(|c| c.with_format(format));
        self
    }

    /// Writes the Celery messages for tchu-tchu 2.x consumers ([`TchuTchu::V2`]: no
    /// `_tchu_meta`) or 3.x ones (the default, or what `TCHU_TCHU_VERSION` names).
    #[must_use]
    pub fn with_tchu_tchu(mut self, version: TchuTchu) -> Self {
        self.client = self.client.take().map(|c| c.with_tchu_tchu(version));
        self
    }

    fn client(&self) -> &Client {
        // Only `close` and `drop` take the client, and both consume the producer.
        self.client
            .as_ref()
            .unwrap_or_else(|| unreachable!("producer used after close"))
    }

    /// Publishes a typed event, confirmed by the broker; returns its message id.
    ///
    /// # Errors
    /// As [`Client::publish`]: unroutable, refused, too large, or no connection in time.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<String> {
        self.client().publish(event).await
    }

    /// Publishes any JSON object on a topic, confirmed by the broker; returns its message id.
    ///
    /// # Errors
    /// As [`Client::publish_raw`].
    pub async fn publish_raw(&self, topic: &str, payload: &serde_json::Value) -> Result<String> {
        self.client().publish_raw(topic, payload).await
    }

    /// Publishes a typed event with options (a delay, headers, expiration, priority): see
    /// [`Client::publish_with`]. A delayed event is held by the broker, so the function may
    /// end as soon as this returns.
    ///
    /// # Errors
    /// As [`Client::publish_with`].
    pub async fn publish_with<E: Event>(
        &self,
        event: &E,
        options: impl std::borrow::Borrow<crate::PublishOptions>,
    ) -> Result<String> {
        self.client().publish_with(event, options).await
    }

    /// Publishes a typed event `delay` from now: see [`Client::publish_in`].
    ///
    /// # Errors
    /// As [`Client::publish_with`].
    pub async fn publish_in<E: Event>(
        &self,
        event: &E,
        delay: std::time::Duration,
    ) -> Result<String> {
        self.client().publish_in(event, delay).await
    }

    /// Publishes a typed event to be delivered at `when`: see [`Client::publish_at`].
    ///
    /// # Errors
    /// As [`Client::publish_with`].
    pub async fn publish_at<E: Event>(
        &self,
        event: &E,
        when: std::time::SystemTime,
    ) -> Result<String> {
        self.client().publish_at(event, when).await
    }

    /// Publishes any JSON object on a topic with options: see [`Client::publish_raw_with`].
    ///
    /// # Errors
    /// As [`Client::publish_raw_with`].
    pub async fn publish_raw_with(
        &self,
        topic: &str,
        payload: &serde_json::Value,
        options: impl std::borrow::Borrow<crate::PublishOptions>,
    ) -> Result<String> {
        self.client()
            .publish_raw_with(topic, payload, options)
            .await
    }

    /// Closes the connection and waits for it.
    pub async fn close(mut self) {
        if let Some(c) = self.client.take() {
            c.close().await;
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if let Some(c) = self.client.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move { c.close().await });
        }
    }
}
