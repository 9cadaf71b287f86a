//! A typed call: the builder [`Call`] and how a client sends a request and waits.

use super::Client;
use crate::error::Error;
use crate::rpc::{Answer, CallError, DEFAULT_CALL_TIMEOUT, decode_answer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;
use tchu_core::Request;

/// A call in preparation: set a deadline with [`Call::timeout`], then `.await` it.
#[must_use = "a call does nothing until awaited"]
pub struct Call<'a, R: Request> {
    client: &'a Client,
    request: &'a R,
    timeout: Duration,
}

impl<R: Request> std::fmt::Debug for Call<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("topic", &R::TOPIC)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<'a, R: Request> Call<'a, R> {
    pub(crate) fn new(client: &'a Client, request: &'a R) -> Self {
        Self {
            client,
            request,
            timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// How long to wait for the answer (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl<'a, R: Request> IntoFuture for Call<'a, R> {
    type Output = std::result::Result<R::Response, CallError<R::Error>>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let (value, is_error) = self
                .client
                .call_value(
                    R::TOPIC,
                    self.request,
                    self.timeout,
                    R::Response::deserialize(Value::Null).is_ok(),
                )
                .await
                .map_err(|e| {
                    e.map_business(|_| {
                        unreachable!("raw calls never produce typed business errors")
                    })
                })?;
            decode_answer::<R::Response, R::Error>(value, is_error)
        })
    }
}

impl Client {
    /// Sends a request and waits for its answer. `null_is_answer`: whether an unmarked `null`
    /// reply (what a Python service whose only matching handlers are observers sends) answers
    /// this call; when not, the call goes on waiting for the responder.
    pub(crate) async fn call_value(
        &self,
        topic: &str,
        payload: &(impl Serialize + ?Sized + Sync),
        timeout: Duration,
        null_is_answer: bool,
    ) -> Answer {
        let deadline = tokio::time::Instant::now() + timeout;
        let replies = self.replies(deadline).await.map_err(|e| match e {
            Error::Disconnected { .. } => CallError::Timeout {
                topic: topic.to_owned(),
                after: timeout,
            },
            other => CallError::Connection(other),
        })?;
        replies
            .call(
                (self.format(), self.tchu_tchu()),
                topic,
                payload,
                timeout,
                null_is_answer,
            )
            .await
    }
}
