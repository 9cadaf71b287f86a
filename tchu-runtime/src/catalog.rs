//! What a binary knows about its events: every `#[tchu::event]` type registers itself at link
//! time, so a service can export the JSON Schema of every event, response and error, and an
//! AsyncAPI 3.0 document of itself, without a list kept by hand.

#[cfg(feature = "service")]
pub use documents::{asyncapi_document, schemas_document};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::Value;

/// The schemas of one payload type, as functions so nothing is computed until asked.
#[derive(Debug, Clone, Copy)]
pub struct SchemaFns {
    /// The type's standalone JSON Schema (draft 2020-12, definitions under `$defs`).
    pub root: fn() -> Value,
    /// The type's schema inside a document whose definitions live in `generator`.
    pub sub: fn(&mut SchemaGenerator) -> Schema,
}

impl SchemaFns {
    /// The schema functions of `T`.
    pub const fn of<T: JsonSchema>() -> Self {
        Self {
            root: root_schema::<T>,
            sub: SchemaGenerator::subschema_for::<T>,
        }
    }
}

fn root_schema<T: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null)
}

/// An event type, as `#[tchu::event]` registers it.
#[derive(Debug)]
pub struct EventDescriptor {
    /// The type's name.
    pub name: &'static str,
    /// `module_path!()` where it is defined.
    pub module: &'static str,
    /// Its topic.
    pub topic: &'static str,
    /// Its payload's schemas.
    pub payload: SchemaFns,
    /// The response's schemas, for RPC requests.
    pub response: Option<SchemaFns>,
    /// The business error's schemas, for RPC requests.
    pub error: Option<SchemaFns>,
}

inventory::collect!(EventDescriptor);

/// Every event type linked into the binary, by topic then name.
pub fn registered_events() -> Vec<&'static EventDescriptor> {
    let mut v: Vec<_> = inventory::iter::<EventDescriptor>.into_iter().collect();
    v.sort_by_key(|e| (e.topic, e.name, e.module));
    v
}

/// The broker an AsyncAPI document names.
#[derive(Debug, Clone)]
pub struct Server {
    /// `host:port`.
    pub host: String,
    /// `amqps`.
    pub tls: bool,
    /// The virtual host.
    pub vhost: String,
}

/// The service documents (`schema`, `asyncapi`): they need a [`crate::Service`].
#[cfg(feature = "service")]
pub(crate) mod documents {
    use super::{EventDescriptor, Server, registered_events};
    use crate::handler::HandlerDescriptor;
    use crate::service::Service;
    use crate::transport::EXCHANGE;
    use schemars::{SchemaGenerator, generate::SchemaSettings};
    use serde_json::{Map, Value, json};
    use tchu_core::pattern_matches;

    /// The event type a typed handler takes.
    pub(crate) fn event_of(h: &HandlerDescriptor) -> Option<&'static EventDescriptor> {
        let (name, topic) = (h.event?, h.event_topic?);
        registered_events()
            .into_iter()
            .find(|e| e.name == name && e.topic == topic)
    }

    /// The JSON Schemas of every linked event (payload, and response and error for requests), with
    /// the handlers of `service` that take each: the document `<service> schema` prints.
    pub fn schemas_document(service: &Service) -> Value {
        let handlers = service.handlers();
        let events: Vec<Value> = registered_events()
            .into_iter()
            .map(|e| {
                let handled_by: Vec<&str> = handlers
                    .iter()
                    .filter(|h| event_of(h).is_some_and(|x| std::ptr::eq(x, e)))
                    .map(|h| h.name)
                    .collect();
                json!({
                    "name": e.name,
                    "module": e.module,
                    "topic": e.topic,
                    "schema": (e.payload.root)(),
                    "response": e.response.map(|s| (s.root)()),
                    "error": e.error.map(|s| (s.root)()),
                    "handled_by": handled_by,
                })
            })
            .collect();
        json!({ "service": service.queue(), "events": events })
    }

    /// AsyncAPI's map keys allow `[A-Za-z0-9_-]` only.
    fn component_key(s: &str) -> String {
        s.chars()
            .map(|c| match c {
                'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '-' => c.to_string(),
                '.' | ':' => "_".into(),
                '*' => "star".into(),
                '#' => "hash".into(),
                _ => "-".into(),
            })
            .collect()
    }

    fn unique_key(map: &Map<String, Value>, base: String) -> String {
        if !map.contains_key(&base) {
            return base;
        }
        (2..)
            .map(|i| format!("{base}_{i}"))
            .find(|k| !map.contains_key(k))
            .unwrap_or(base)
    }

    struct Doc {
        gen_: SchemaGenerator,
        channels: Map<String, Value>,
        messages: Map<String, Value>,
        operations: Map<String, Value>,
        /// `(topic or pattern) -> channel key`.
        channel_of: Vec<(String, String)>,
        /// `(event pointer, kind) -> message key`.
        message_of: Vec<(usize, &'static str, String)>,
    }

    impl Doc {
        fn channel(&mut self, address: &str, vhost: &str) -> String {
            if let Some((_, k)) = self.channel_of.iter().find(|(a, _)| a == address) {
                return k.clone();
            }
            let key = unique_key(&self.channels, component_key(address));
            self.channels.insert(
            key.clone(),
            json!({
                "address": address,
                "title": address,
                "messages": {},
                "bindings": { "amqp": {
                    "is": "routingKey",
                    "exchange": { "name": EXCHANGE, "type": "topic", "durable": true, "autoDelete": false, "vhost": vhost },
                    "bindingVersion": "0.3.0",
                }},
            }),
        );
            self.channel_of.push((address.to_owned(), key.clone()));
            key
        }

        fn message(&mut self, e: &'static EventDescriptor, kind: &'static str) -> Option<String> {
            let id = e as *const EventDescriptor as usize;
            if let Some((_, _, k)) = self
                .message_of
                .iter()
                .find(|(p, kd, _)| *p == id && *kd == kind)
            {
                return Some(k.clone());
            }
            let (fns, name, summary) = match kind {
                "event" => (
                    e.payload,
                    e.name.to_owned(),
                    format!("`{}` on `{}`", e.name, e.topic),
                ),
                "response" => (
                    e.response?,
                    format!("{}Response", e.name),
                    format!("The response to `{}`", e.name),
                ),
                _ => (
                    e.error?,
                    format!("{}Error", e.name),
                    format!("The business error answering `{}`", e.name),
                ),
            };
            let key = unique_key(&self.messages, component_key(&name));
            let payload = (fns.sub)(&mut self.gen_);
            let mut msg = json!({
                "name": name,
                "title": name,
                "summary": summary,
                "contentType": "application/json",
                "payload": payload,
            });
            if kind == "event" {
                msg["correlationId"] = json!({
                    "description": "The message id (Celery's `id` header); RPC replies carry it as their AMQP correlation id.",
                    "location": "$message.header#/id",
                });
            } else {
                msg["description"] = json!(
                    "Sent to the caller's `reply_to` (RabbitMQ direct reply-to) inside a Celery `rpc://` result (`{\"status\": \"SUCCESS\", \"result\": ...}`); tchu and tchu-tchu callers unwrap it."
                );
            }
            self.messages.insert(key.clone(), msg);
            self.message_of.push((id, kind, key.clone()));
            Some(key)
        }

        /// Adds the message to the channel's list and returns a reference to it there.
        fn on_channel(&mut self, channel: &str, message: &str) -> Value {
            let ch = &mut self.channels[channel]["messages"];
            ch[message] = json!({ "$ref": format!("#/components/messages/{message}") });
            json!({ "$ref": format!("#/channels/{channel}/messages/{message}") })
        }
    }

    /// The AsyncAPI 3.0 document of `service`: channels are topics and handler patterns on
    /// `tchu_events`, messages the event schemas, operations the handlers (`receive`, with a
    /// `reply` for RPC responders) and every event type linked into the binary (`send`).
    ///
    /// `server` is the broker and `version` the service's own version.
    pub fn asyncapi_document(service: &Service, server: Option<&Server>, version: &str) -> Value {
        let vhost = server.map_or("/", |s| s.vhost.as_str());
        let mut settings = SchemaSettings::draft07();
        settings.definitions_path = "/components/schemas".into();
        settings.meta_schema = None;
        let mut doc = Doc {
            gen_: settings.into_generator(),
            channels: Map::new(),
            messages: Map::new(),
            operations: Map::new(),
            channel_of: Vec::new(),
            message_of: Vec::new(),
        };
        let events = registered_events();
        let handlers = service.handlers();
        let mut reply_channel = None;

        for h in &handlers {
            let ch = doc.channel(h.pattern, vhost);
            let mut msgs = Vec::new();
            let typed = event_of(h);
            let matching: Vec<&'static EventDescriptor> = match typed {
                Some(e) => vec![e],
                None => events
                    .iter()
                    .copied()
                    .filter(|e| pattern_matches(h.pattern, e.topic))
                    .collect(),
            };
            for e in &matching {
                if let Some(m) = doc.message(e, "event") {
                    msgs.push(doc.on_channel(&ch, &m));
                }
            }
            if matching.is_empty() || typed.is_none() {
                // A raw handler takes any JSON object published under its pattern.
                if !doc.messages.contains_key("AnyEvent") {
                    doc.messages.insert(
                    "AnyEvent".into(),
                    json!({
                        "name": "AnyEvent",
                        "title": "Any event",
                        "summary": "Any JSON object published on a matching topic (a raw handler).",
                        "contentType": "application/json",
                        "payload": { "type": "object" },
                    }),
                );
                }
                msgs.push(doc.on_channel(&ch, "AnyEvent"));
            }
            let mut op = json!({
                "action": "receive",
                "channel": { "$ref": format!("#/channels/{ch}") },
                "title": h.name,
                "summary": format!("Handler `{}` ({}:{})", h.name, h.file, h.line),
                "messages": msgs,
                "bindings": { "amqp": {
                    "ack": h.ack == tchu_core::retry::AckPolicy::Late,
                    "bindingVersion": "0.3.0",
                }},
            });
            if let (true, Some(e)) = (h.responder, typed) {
                let reply = reply_channel.get_or_insert_with(|| {
                doc.channels.insert(
                    "rpc_reply".into(),
                    json!({
                        "address": null,
                        "title": "RPC reply",
                        "description": "The caller's reply queue (RabbitMQ direct reply-to, `amq.rabbitmq.reply-to`), named by the request's `reply_to` property.",
                        "messages": {},
                    }),
                );
                "rpc_reply".to_owned()
            });
                let reply = reply.clone();
                let mut replies = Vec::new();
                for kind in ["response", "error"] {
                    if let Some(m) = doc.message(e, kind) {
                        replies.push(doc.on_channel(&reply, &m));
                    }
                }
                op["reply"] = json!({
                    "address": { "location": "$message.header#/reply_to", "description": "The request's AMQP `reply_to` property." },
                    "channel": { "$ref": format!("#/channels/{reply}") },
                    "messages": replies,
                });
            }
            let key = unique_key(
                &doc.operations,
                format!("receive_{}", component_key(h.name)),
            );
            doc.operations.insert(key, op);
        }

        for e in &events {
            let ch = doc.channel(e.topic, vhost);
            let Some(m) = doc.message(e, "event") else {
                continue;
            };
            let r = doc.on_channel(&ch, &m);
            let mut op = json!({
                "action": "send",
                "channel": { "$ref": format!("#/channels/{ch}") },
                "title": format!("publish {}", e.name),
                "summary": format!("`{}` (linked into this binary, so it may publish it)", e.name),
                "messages": [r],
                "bindings": { "amqp": { "deliveryMode": 2, "mandatory": true, "bindingVersion": "0.3.0" } },
            });
            if e.response.is_some() {
                let reply = reply_channel
                    .get_or_insert_with(|| {
                        doc.channels.insert(
                        "rpc_reply".into(),
                        json!({
                            "address": null,
                            "title": "RPC reply",
                            "description": "The caller's reply queue (RabbitMQ direct reply-to).",
                            "messages": {},
                        }),
                    );
                        "rpc_reply".to_owned()
                    })
                    .clone();
                let mut replies = Vec::new();
                for kind in ["response", "error"] {
                    if let Some(m) = doc.message(e, kind) {
                        replies.push(doc.on_channel(&reply, &m));
                    }
                }
                op["reply"] = json!({
                    "channel": { "$ref": format!("#/channels/{reply}") },
                    "messages": replies,
                });
            }
            let key = unique_key(&doc.operations, format!("send_{}", component_key(e.name)));
            doc.operations.insert(key, op);
        }

        let schemas = doc.gen_.take_definitions(true);
        let mut out = json!({
            "asyncapi": "3.0.0",
            "info": {
                "title": service.queue(),
                "version": version,
                "description": format!(
                    "tchu service `{}`: consumes the durable queue `{}` bound on the topic exchange `{}`; failures go to `{}`.",
                    service.queue(), service.queue(), EXCHANGE, service.dead_letter_queue()
                ),
            },
            "defaultContentType": "application/json",
            "channels": doc.channels,
            "operations": doc.operations,
            "components": { "messages": doc.messages, "schemas": schemas },
        });
        if let Some(server) = server {
            out["servers"] = json!({ "rabbitmq": {
                "host": server.host,
                "protocol": if server.tls { "amqps" } else { "amqp" },
                "protocolVersion": "0.9.1",
                "description": format!("RabbitMQ, virtual host `{}`", server.vhost),
            }});
        }
        out
    }
}
