//! `tchu dlq skip`: drop one parked message. The first parked message of a key of an ordered
//! handler is dropped by its service, which then runs the ones held behind it, in order.

use super::Names;
use super::held::{Order, ask_release, refuse_held};
use super::parked::{Parked, requeue_up_to};
use crate::broker::op;
use crate::exit::Failure;
use crate::output::Out;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use serde_json::json;

pub(super) async fn skip(
    ch: &Channel,
    names: &Names,
    count: u64,
    id: &str,
    url: &str,
    out: &Out,
) -> Result<(), Failure> {
    let mut last_tag = None;
    let found = async {
        for index in 0..count {
            let get = ch.basic_get(names.dlq.as_str().into(), BasicGetOptions { no_ack: false });
            let Some(msg) = op("basic.get", get).await? else {
                break;
            };
            let p = Parked::new(index, msg);
            if p.described.id == id {
                return Ok(Some(p));
            }
            last_tag = Some(p.tag());
        }
        Ok::<_, Failure>(None)
    }
    .await;
    let p = match found {
        Ok(Some(p)) => p,
        other => {
            requeue_up_to(ch, last_tag).await?;
            other?;
            return Err(Failure::failed(
                "no_such_message",
                format!("no message with id `{id}` in {}", names.dlq),
            ));
        }
    };
    let Some(o) = Order::of(&p, names) else {
        let ack = ch.basic_ack(p.tag(), BasicAckOptions { multiple: false });
        let acked = op("basic.ack", ack).await;
        // The messages looked at before it go back, in their places.
        requeue_up_to(ch, last_tag).await?;
        acked?;
        return report(out, &json!({"skipped": id, "from": names.dlq}), || {
            format!("dropped message {id} from {}", names.dlq)
        });
    };
    // It stays parked, given back with the others first: its service reads it from there.
    requeue_up_to(ch, Some(p.tag())).await?;
    if o.held {
        return Err(refuse_held(id, &o, names));
    }
    release(names, &o, id, url, out).await
}

/// Asks the service to drop the first parked message of a key and release the key.
async fn release(names: &Names, o: &Order, id: &str, url: &str, out: &Out) -> Result<(), Failure> {
    ask_release(url, names, o, true).await?;
    let json = json!({
        "skipped": id,
        "released_key": o.key,
        "handler": o.handler,
        "to": format!("{}.ordered", names.service),
    });
    report(out, &json, || {
        format!(
            "asked {}.ordered to drop message {id} and release key `{}` of {}: the held ones \
             run in order",
            names.service, o.key, o.handler
        )
    })
}

fn report(
    out: &Out,
    json: &serde_json::Value,
    text: impl FnOnce() -> String,
) -> Result<(), Failure> {
    if out.json {
        let mut json = json.clone();
        json["ok"] = true.into();
        out.object(&json)
    } else {
        out.line(&text())
    }
}
