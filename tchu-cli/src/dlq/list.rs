//! `tchu dlq list`: one line per parked message.

use super::Names;
use super::held::HeldKeys;
use super::parked::peek;
use crate::exit::Failure;
use crate::output::{Out, one_line, table};
use lapin::Channel;
use serde_json::{Value, json};
use tchu::headers::{self};

/// How much of the error text a `list` line shows.
const ERROR_WIDTH: usize = 60;

pub(super) async fn list(
    ch: &Channel,
    names: &Names,
    count: u64,
    limit: Option<u64>,
    out: &Out,
) -> Result<(), Failure> {
    let max = limit.map_or(count, |l| l.min(count));
    let mut rows = vec![
        [
            "#",
            "ID",
            "TOPIC",
            "HANDLER",
            "KIND",
            "ATTEMPTS",
            "FAILED AT",
            "ERROR",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut held = HeldKeys::default();
    let listed = peek(ch, &names.dlq, max, |p| {
        held.add(&p, names);
        if out.json {
            out.object(&Value::Object(p.summary()))?;
        } else {
            let dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
            rows.push(vec![
                p.index.to_string(),
                dash(p.described.id.clone()),
                dash(p.described.topic.clone()),
                dash(p.handler()),
                dash(p.error_kind()),
                dash(p.header_text(headers::ATTEMPTS_HEADER)),
                dash(p.header_text(headers::FAILED_AT_HEADER)),
                dash(one_line(&p.error(), ERROR_WIDTH)),
            ]);
        }
        Ok(true)
    })
    .await?;
    if out.json {
        out.object(&json!({
            "summary": true,
            "ok": true,
            "queue": names.dlq,
            "total": count,
            "listed": listed,
            "held_keys": held.to_json(),
        }))
    } else {
        if listed > 0 {
            table(out, &rows)?;
        }
        let shown = if listed < count {
            format!(" (listed {listed})")
        } else {
            String::new()
        };
        out.line(&format!("{count} message(s) in {}{shown}", names.dlq))?;
        if held.is_empty() {
            return Ok(());
        }
        held.print(names, out)
    }
}
