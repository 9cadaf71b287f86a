//! `tchu publish` and `tchu call`, through [`tchu::Client`].

use crate::exit::{self, Failure};
use crate::output::Out;
use crate::{CallArgs, PublishArgs};
use serde_json::{Value, json};
use std::io::Read;
use std::time::Instant;
use tchu::CallError;
use tchu::amqp::CONNECT_TIMEOUT;

/// Checks the topic and reads the payload (`-` is stdin): both before any connection.
fn input(topic: &str, json_arg: &str) -> Result<Value, Failure> {
    tchu::topic::validate_topic(topic)
        .map_err(|e| Failure::usage(format!("invalid topic `{topic}`: {e}")))?;
    let text = if json_arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::usage(format!("cannot read the payload from stdin: {e}")))?;
        s
    } else {
        json_arg.to_owned()
    };
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Failure::usage(format!("the payload is not valid JSON: {e}")))?;
    match &value {
        Value::Object(o) if o.contains_key(tchu::wire::META_KEY) => Err(Failure::usage(format!(
            "the payload must not contain the reserved key `{}`",
            tchu::wire::META_KEY
        ))),
        Value::Object(_) => Ok(value),
        other => Err(Failure::usage(format!(
            "the payload must be a JSON object, not {}",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                _ => "an array",
            }
        ))),
    }
}

/// Connects a [`tchu::Client`], bounded by [`CONNECT_TIMEOUT`] per address, writing for the
/// tchu-tchu version given (else `TCHU_TCHU_VERSION`'s, else 3.x).
async fn client(url: &str, tchu_tchu: Option<tchu::TchuTchu>) -> Result<tchu::Client, Failure> {
    let addresses = tchu::BrokerUrl::parse_list(url)
        .map_err(|e| Failure::usage(e.to_string()))?
        .len();
    let limit = CONNECT_TIMEOUT * u32::try_from(addresses).unwrap_or(u32::MAX);
    let mut builder = tchu::Client::builder().url(url);
    if let Some(version) = tchu_tchu {
        builder = builder.tchu_tchu(version);
    }
    match tokio::time::timeout(limit, builder.connect()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(Failure::from_tchu(&e)),
        Err(_) => Err(Failure::connect(format!(
            "cannot connect to the broker at {}: no answer within {limit:?}",
            tchu::redact_url(url)
        ))),
    }
}

/// `tchu publish TOPIC JSON [--format] [--delay] [--header]... [--expiration] [--priority]`: a
/// confirmed, mandatory publish (a delayed one is confirmed once the broker holds it); prints
/// the message id.
///
/// # Errors
/// Exit 2 for a bad topic or payload (before connecting), 3 when the broker is unreachable,
/// 1 when the topic is unroutable or the broker refuses the message.
pub async fn publish(url: &str, args: &PublishArgs, out: &Out) -> Result<(), Failure> {
    let payload = input(&args.topic, &args.payload)?;
    let options = args.options();
    options.check().map_err(|e| Failure::from_tchu(&e))?;
    let client = client(url, args.tchu_tchu)
        .await?
        .with_format(args.format.format());
    // Only the Celery formats carry `_tchu_meta`: the native one is the same for both.
    let tchu_tchu = (args.format != crate::WireFormat::Native).then(|| client.tchu_tchu().major());
    let result = client
        .publish_raw_with(&args.topic, &payload, &options)
        .await;
    client.close().await;
    let id = result.map_err(|e| Failure::from_tchu(&e))?;
    if out.json {
        out.object(&json!({
            "ok": true,
            "id": id,
            "topic": args.topic,
            "format": args.format.name(),
            "tchu_tchu": tchu_tchu,
            "delay_ms": args.delay.map(|d| d.as_millis() as u64),
        }))
    } else {
        let form = tchu_tchu
            .map(|v| format!(" for tchu-tchu {v}.x"))
            .unwrap_or_default();
        out.info(format_args!(
            "published {} ({} format{form}, confirmed by the broker)",
            args.topic,
            args.format.name(),
        ));
        out.line(&id)
    }
}

/// `tchu call TOPIC JSON [--timeout]`: prints the responder's answer.
///
/// # Errors
/// Exit 2 for a bad topic or payload, 3 when the broker is unreachable, 1 when no responder
/// is bound or the answer does not decode, 4 on timeout, 5 when the responder answered with
/// an error.
pub async fn call(url: &str, args: &CallArgs, out: &Out) -> Result<(), Failure> {
    let payload = input(&args.topic, &args.payload)?;
    let client = client(url, args.tchu_tchu).await?;
    let started = Instant::now();
    let result = client.call_raw(&args.topic, &payload, args.timeout).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    client.close().await;
    let response = result.map_err(|e| call_failure(&args.topic, e))?;
    if out.json {
        out.object(&json!({
            "ok": true,
            "topic": args.topic,
            "response": response,
            "elapsed_ms": elapsed_ms,
        }))
    } else {
        let pretty = serde_json::to_string_pretty(&response).unwrap_or_default();
        out.line(&pretty)
    }
}

fn call_failure(topic: &str, e: CallError<Value>) -> Failure {
    match e {
        CallError::Business(v) => Failure::new(
            exit::REMOTE,
            "business_error",
            format!("`{topic}` answered with a business error: {v}"),
        )
        .with_detail(v),
        CallError::HandlerFailed { handler, message } => Failure::new(
            exit::REMOTE,
            "handler_failed",
            format!("responder `{handler}` failed: {message}"),
        )
        .with_detail(json!({"handler": handler, "message": message})),
        CallError::Remote { exc_type, message } => Failure::new(
            exit::REMOTE,
            "remote_failure",
            format!("the responder failed with {exc_type}: {message}"),
        )
        .with_detail(json!({"exc_type": exc_type, "message": message})),
        CallError::Timeout { after, .. } => Failure::new(
            exit::TIMEOUT,
            "timeout",
            format!("timeout: no answer to `{topic}` within {after:?}"),
        ),
        CallError::NoResponder { .. } => Failure::failed(
            "no_responder",
            format!("no responder for `{topic}`: no service handles it"),
        ),
        CallError::Decode { reason } => Failure::failed(
            "bad_answer",
            format!("the answer to `{topic}` could not be decoded: {reason}"),
        ),
        CallError::Connection(e) | CallError::Request(e) => {
            let f = Failure::from_tchu(&e);
            Failure {
                message: format!("call to `{topic}`: {}", f.message),
                ..f
            }
        }
        other => Failure::failed("call_failed", tchu::error_chain(&other).to_string()),
    }
}
