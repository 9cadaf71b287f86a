//! A stored message: a `WireMessage` as a `tchu_outbox` row and back.

use crate::sql::OUTBOX_CHANNEL;
use serde_json::{Map, Value};
use sqlx::postgres::PgConnection;
use tchu_core::envelope::{Properties, WireMessage};

/// A row as the relay reads it.
pub(super) type Row = (i64, String, String, String, Vec<u8>);

/// Inserts the message and notifies the relays (delivered on commit, once per transaction).
pub(super) async fn insert(tx: &mut PgConnection, msg: &WireMessage) -> sqlx::Result<()> {
    let headers = Value::Object(msg.all_headers()).to_string();
    sqlx::query(
        "INSERT INTO tchu_outbox (routing_key, properties, headers, body) VALUES ($1, $2, $3, $4)",
    )
    .bind(&msg.routing_key)
    .bind(properties_json(&msg.properties).to_string())
    .bind(headers)
    .bind(&msg.body)
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(OUTBOX_CHANNEL)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The message of a row, or why the row cannot be one (edited by hand).
pub(super) fn message(row: &Row) -> Result<WireMessage, String> {
    let (_, routing_key, properties, headers, body) = row;
    let headers = match serde_json::from_str(headers) {
        Ok(Value::Object(m)) => m,
        _ => return Err("its headers are not a JSON object".into()),
    };
    let properties = match serde_json::from_str(properties) {
        Ok(Value::Object(m)) => properties_of(&m),
        _ => return Err("its properties are not a JSON object".into()),
    };
    Ok(WireMessage {
        routing_key: routing_key.clone(),
        properties,
        headers,
        celery: None,
        body: body.clone(),
    })
}

fn properties_json(p: &Properties) -> Value {
    serde_json::json!({
        "content_type": p.content_type,
        "content_encoding": p.content_encoding,
        "delivery_mode": p.delivery_mode,
        "priority": p.priority,
        "correlation_id": p.correlation_id,
        "reply_to": p.reply_to,
        "message_id": p.message_id,
        "expiration": p.expiration,
    })
}

fn properties_of(m: &Map<String, Value>) -> Properties {
    let text = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
    let byte = |k: &str| {
        m.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| u8::try_from(n).ok())
    };
    Properties {
        content_type: text("content_type"),
        content_encoding: text("content_encoding"),
        delivery_mode: byte("delivery_mode"),
        priority: byte("priority"),
        correlation_id: text("correlation_id"),
        reply_to: text("reply_to"),
        message_id: text("message_id"),
        expiration: text("expiration"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_its_row() {
        let msg = tchu_core::envelope::encode(
            "order.placed",
            &serde_json::json!({"order_id": 7, "note": "é"}),
            &tchu_core::envelope::EncodeOptions {
                format: tchu_core::Format::CeleryV2,
                id: "6a4b0e55-0000-4000-8000-000000000001",
                is_rpc: false,
                reply_to: Some("r"),
                ..Default::default()
            },
        )
        .unwrap();
        let row: Row = (
            1,
            msg.routing_key.clone(),
            properties_json(&msg.properties).to_string(),
            Value::Object(msg.headers.clone()).to_string(),
            msg.body.clone(),
        );
        assert_eq!(message(&row).unwrap(), msg);
    }
}
