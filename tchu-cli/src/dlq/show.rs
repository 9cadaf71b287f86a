//! `tchu dlq show`: one parked message in full.

use super::Names;
use super::parked::{Parked, peek, text};
use crate::broker::{self};
use crate::exit::Failure;
use crate::output::Out;
use lapin::Channel;
use serde_json::{Value, json};

pub(super) async fn show(
    ch: &Channel,
    names: &Names,
    count: u64,
    index: u64,
    all: bool,
    out: &Out,
) -> Result<(), Failure> {
    if !all && index >= count {
        return Err(Failure::failed(
            "no_such_message",
            format!(
                "{} holds {count} message(s): there is no index {index}",
                names.dlq
            ),
        ));
    }
    let max = if all { count } else { index + 1 };
    let mut first = true;
    peek(ch, &names.dlq, max, |p| {
        if !all && p.index != index {
            return Ok(true);
        }
        if out.json {
            out.object(&Value::Object(p.detail(&names.dlq)))?;
        } else {
            if !first {
                out.line("")?;
            }
            print_detail(out, &p, &names.dlq, count)?;
        }
        first = false;
        Ok(true)
    })
    .await?;
    if first {
        // The queue shrank between the count and the reads.
        return Err(Failure::failed(
            "no_such_message",
            format!("{} no longer holds a message at index {index}", names.dlq),
        ));
    }
    if all && out.json {
        out.object(&json!({"summary": true, "ok": true, "queue": names.dlq, "total": count}))?;
    }
    Ok(())
}

pub(super) fn print_detail(out: &Out, p: &Parked, dlq: &str, count: u64) -> Result<(), Failure> {
    let d = &p.described;
    out.line(&format!("message {} of {count} in {dlq}", p.index))?;
    out.line(&format!("  id:          {}", d.id))?;
    out.line(&format!("  topic:       {}", d.topic))?;
    out.line(&format!(
        "  routing key: {}",
        p.msg.delivery.routing_key.as_str()
    ))?;
    if let Some(f) = d.format {
        out.line(&format!(
            "  format:      {f}{}",
            if d.is_rpc { " (RPC)" } else { "" }
        ))?;
    }
    out.line("properties:")?;
    for (k, v) in broker::properties(&p.msg.delivery.properties) {
        out.line(&format!("  {k}: {}", text(&v)))?;
    }
    out.line("headers:")?;
    for (k, v) in &p.headers {
        out.line(&format!("  {k}: {}", text(v)))?;
    }
    match (&d.payload, &d.foreign_task, &d.decode_error) {
        (Some(payload), _, _) => {
            out.line("payload:")?;
            out.line(&serde_json::to_string_pretty(payload).unwrap_or_default())
        }
        (None, Some(task), _) => {
            out.line(&format!("body (Celery task {task}, not a tchu event):"))?;
            out.line(&String::from_utf8_lossy(&p.msg.delivery.data))
        }
        (None, None, e) => {
            out.line(&format!(
                "body (undecodable: {}):",
                e.as_deref().unwrap_or("unknown")
            ))?;
            out.line(&String::from_utf8_lossy(&p.msg.delivery.data))
        }
    }
}
