//! `tchu tail PATTERN`: a temporary queue bound to the pattern, printing events as they arrive.

use crate::TailArgs;
use crate::broker::{self, op};
use crate::exit::Failure;
use crate::output::Out;
use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::Value;

/// Runs `tail` until Ctrl-C (or SIGTERM), `--count` events or `--timeout`.
///
/// # Errors
/// Exit 2 for an invalid pattern (before connecting), 3 when the broker is unreachable or the
/// connection is lost, 1 when the broker refuses the declarations.
pub async fn run(url: &str, args: &TailArgs, out: &Out) -> Result<(), Failure> {
    tchu::topic::validate_pattern(&args.pattern)
        .map_err(|e| Failure::usage(format!("invalid pattern `{}`: {e}", args.pattern)))?;
    let deadline = args.timeout.map(|t| tokio::time::Instant::now() + t);
    let conn = broker::connect(url).await?;
    let result = tail(&conn, args, out, deadline).await;
    let _ = conn.close(200, "tchu tail done".into()).await;
    let received = result?;
    out.info(format_args!("received {received} event(s)"));
    Ok(())
}

async fn tail(
    conn: &lapin::Connection,
    args: &TailArgs,
    out: &Out,
    deadline: Option<tokio::time::Instant>,
) -> Result<u64, Failure> {
    // Listening before `tailing` is printed: a Ctrl-C right after it must not kill the process.
    let stop = tchu::shutdown_signal();
    let mut consumer = subscribe(conn, &args.pattern).await?;
    out.info(format_args!("tailing {} (Ctrl-C to stop)", args.pattern));
    tokio::pin!(stop);
    let timeout = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timeout);
    let mut received = 0u64;
    loop {
        tokio::select! {
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    print_event(out, args.headers, &delivery)?;
                    received += 1;
                    if args.count.is_some_and(|n| received >= n) {
                        break;
                    }
                }
                Some(Err(e)) => return Err(broker::amqp_failure("consuming", &e)),
                None => {
                    return Err(Failure::failed(
                        "cancelled",
                        "the broker cancelled the tail consumer",
                    ));
                }
            },
            () = &mut stop => break,
            () = &mut timeout => break,
        }
    }
    Ok(received)
}

/// A consumer on a temporary queue (exclusive, auto-deleted) bound to `pattern`.
async fn subscribe(conn: &lapin::Connection, pattern: &str) -> Result<lapin::Consumer, Failure> {
    let ch = op("channel.open", conn.create_channel()).await?;
    // So that tail works on a fresh broker, declared exactly as services declare it.
    tchu::amqp::declare_exchange(&ch)
        .await
        .map_err(|e| Failure::from_tchu(&e))?;
    let temporary = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = ch.queue_declare("".into(), temporary, FieldTable::default());
    let queue = op("queue.declare", queue).await?;
    let bind = ch.queue_bind(
        queue.name().clone(),
        tchu::EXCHANGE.into(),
        pattern.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    );
    op("queue.bind", bind).await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let consume = ch.basic_consume(
        queue.name().clone(),
        "tchu-tail".into(),
        no_ack,
        FieldTable::default(),
    );
    op("basic.consume", consume).await
}

fn print_event(
    out: &Out,
    with_headers: bool,
    delivery: &lapin::message::Delivery,
) -> Result<(), Failure> {
    let now = tchu::time::now_iso8601(true);
    let routing_key = delivery.routing_key.as_str();
    let d = broker::describe(routing_key, &delivery.properties, &delivery.data);
    let headers = with_headers.then(|| broker::headers(&delivery.properties));
    if out.json {
        let mut m = serde_json::Map::new();
        m.insert("received_at".into(), now.into());
        m.insert("routing_key".into(), routing_key.into());
        m.extend(d.to_json(&delivery.data));
        if let Some(h) = headers {
            m.insert("headers".into(), Value::Object(h));
        }
        return out.object(&Value::Object(m));
    }
    let id = if d.id.is_empty() { "-" } else { d.id.as_str() };
    let body = match (&d.payload, &d.foreign_task, &d.decode_error) {
        (Some(p), _, _) => p.to_string(),
        (None, Some(task), _) => format!("(Celery task {task}, not a tchu event)"),
        (None, None, Some(e)) => format!(
            "(undecodable: {e}) {}",
            crate::output::one_line(&String::from_utf8_lossy(&delivery.data), 200)
        ),
        (None, None, None) => String::new(),
    };
    let mut line = format!("{now} {} {id} {body}", d.topic);
    if let Some(h) = headers {
        line.push_str(" headers=");
        line.push_str(&Value::Object(h).to_string());
    }
    out.line(&line)
}
