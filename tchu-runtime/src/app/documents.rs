//! The service documents: the JSON Schemas (`schema`) and the AsyncAPI 3.0 document
//! (`asyncapi`) of a service, built from its handlers and every event linked into the binary.

use crate::catalog::{EventDescriptor, Server, registered_events};
use crate::handler::Handler;
use crate::service::Service;
use crate::transport::EXCHANGE;
use schemars::{SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value, json};
use tchu_core::pattern_matches;

/// The event type a typed handler takes.
pub(crate) fn event_of(h: &Handler) -> Option<&'static EventDescriptor> {
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
                .map(Handler::name)
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

/// Which of an event's messages: the event itself, or the response or error of a request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MessageKind {
    Event,
    Response,
    Error,
}

const CORRELATION: &str = "The message id (Celery's `id` header); RPC replies carry it as their \
                           AMQP correlation id.";
const REPLY_BODY: &str = "Sent to the caller's `reply_to` (RabbitMQ direct reply-to) inside a \
                          Celery `rpc://` result (`{\"status\": \"SUCCESS\", \"result\": ...}`); \
                          tchu and tchu-tchu callers unwrap it.";
const REPLY_CHANNEL: &str = "The caller's reply queue (RabbitMQ direct reply-to, \
                             `amq.rabbitmq.reply-to`), named by the request's `reply_to` property.";

/// The AsyncAPI document being built.
struct Doc {
    gen_: SchemaGenerator,
    vhost: String,
    channels: Map<String, Value>,
    messages: Map<String, Value>,
    operations: Map<String, Value>,
    /// `(topic or pattern) -> channel key`.
    channel_of: Vec<(String, String)>,
    /// `(event pointer, kind) -> message key`.
    message_of: Vec<(usize, MessageKind, String)>,
}

impl Doc {
    fn new(vhost: &str) -> Self {
        let mut settings = SchemaSettings::draft07();
        settings.definitions_path = "/components/schemas".into();
        settings.meta_schema = None;
        Self {
            gen_: settings.into_generator(),
            vhost: vhost.to_owned(),
            channels: Map::new(),
            messages: Map::new(),
            operations: Map::new(),
            channel_of: Vec::new(),
            message_of: Vec::new(),
        }
    }

    /// The channel of a topic or pattern on [`EXCHANGE`], added on first use.
    fn channel(&mut self, address: &str) -> String {
        if let Some((_, k)) = self.channel_of.iter().find(|(a, _)| a == address) {
            return k.clone();
        }
        let key = unique_key(&self.channels, component_key(address));
        let exchange = json!({
            "name": EXCHANGE, "type": "topic", "durable": true, "autoDelete": false,
            "vhost": self.vhost,
        });
        let channel = json!({
            "address": address,
            "title": address,
            "messages": {},
            "bindings": { "amqp": {
                "is": "routingKey", "exchange": exchange, "bindingVersion": "0.3.0",
            }},
        });
        self.channels.insert(key.clone(), channel);
        self.channel_of.push((address.to_owned(), key.clone()));
        key
    }

    /// The channel RPC replies go to, added on first use.
    fn reply_channel(&mut self) -> String {
        const KEY: &str = "rpc_reply";
        if !self.channels.contains_key(KEY) {
            let channel = json!({
                "address": null,
                "title": "RPC reply",
                "description": REPLY_CHANNEL,
                "messages": {},
            });
            self.channels.insert(KEY.into(), channel);
        }
        KEY.to_owned()
    }

    /// The message of `e` of `kind`, added on first use; `None` when the event has no such
    /// message (a response of a plain event).
    fn message(&mut self, e: &'static EventDescriptor, kind: MessageKind) -> Option<String> {
        let id = e as *const EventDescriptor as usize;
        if let Some((_, _, k)) = self
            .message_of
            .iter()
            .find(|(p, kd, _)| *p == id && *kd == kind)
        {
            return Some(k.clone());
        }
        let (fns, name, summary) = match kind {
            MessageKind::Event => (e.payload, e.name.to_owned(), {
                format!("`{}` on `{}`", e.name, e.topic)
            }),
            MessageKind::Response => (e.response?, format!("{}Response", e.name), {
                format!("The response to `{}`", e.name)
            }),
            MessageKind::Error => (e.error?, format!("{}Error", e.name), {
                format!("The business error answering `{}`", e.name)
            }),
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
        if kind == MessageKind::Event {
            msg["correlationId"] =
                json!({ "description": CORRELATION, "location": "$message.header#/id" });
        } else {
            msg["description"] = json!(REPLY_BODY);
        }
        self.messages.insert(key.clone(), msg);
        self.message_of.push((id, kind, key.clone()));
        Some(key)
    }

    /// The message a raw handler takes: any JSON object published under its pattern.
    fn any_event(&mut self) -> String {
        const KEY: &str = "AnyEvent";
        if !self.messages.contains_key(KEY) {
            let msg = json!({
                "name": KEY,
                "title": "Any event",
                "summary": "Any JSON object published on a matching topic (a raw handler).",
                "contentType": "application/json",
                "payload": { "type": "object" },
            });
            self.messages.insert(KEY.into(), msg);
        }
        KEY.to_owned()
    }

    /// Adds the message to the channel's list and returns a reference to it there.
    fn on_channel(&mut self, channel: &str, message: &str) -> Value {
        let ch = &mut self.channels[channel]["messages"];
        ch[message] = json!({ "$ref": format!("#/components/messages/{message}") });
        json!({ "$ref": format!("#/channels/{channel}/messages/{message}") })
    }

    /// References to the response and error messages of a request, on the reply channel.
    fn replies(&mut self, e: &'static EventDescriptor) -> (String, Vec<Value>) {
        let reply = self.reply_channel();
        let mut replies = Vec::new();
        for kind in [MessageKind::Response, MessageKind::Error] {
            if let Some(m) = self.message(e, kind) {
                replies.push(self.on_channel(&reply, &m));
            }
        }
        (reply, replies)
    }

    /// The `receive` operation of a handler, with a `reply` for RPC responders.
    fn receive(&mut self, h: &Handler, events: &[&'static EventDescriptor]) {
        let ch = self.channel(&h.pattern);
        let typed = event_of(h);
        let matching: Vec<&'static EventDescriptor> = match typed {
            Some(e) => vec![e],
            None => (events.iter().copied())
                .filter(|e| pattern_matches(&h.pattern, e.topic))
                .collect(),
        };
        let mut msgs = Vec::new();
        for e in &matching {
            if let Some(m) = self.message(e, MessageKind::Event) {
                msgs.push(self.on_channel(&ch, &m));
            }
        }
        if matching.is_empty() || typed.is_none() {
            let any = self.any_event();
            msgs.push(self.on_channel(&ch, &any));
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
            "x-tchu-origin": h.origin.as_str(),
        });
        if !h.metadata.is_empty() {
            op["x-tchu-metadata"] = json!(h.metadata);
        }
        if let (true, Some(e)) = (h.responder, typed) {
            let (reply, replies) = self.replies(e);
            let address = json!({
                "location": "$message.header#/reply_to",
                "description": "The request's AMQP `reply_to` property.",
            });
            op["reply"] = json!({
                "address": address,
                "channel": { "$ref": format!("#/channels/{reply}") },
                "messages": replies,
            });
        }
        let key = format!("receive_{}", component_key(&h.name));
        let key = unique_key(&self.operations, key);
        self.operations.insert(key, op);
    }

    /// The `send` operation of an event linked into the binary.
    fn send(&mut self, e: &'static EventDescriptor) {
        let ch = self.channel(e.topic);
        let Some(m) = self.message(e, MessageKind::Event) else {
            return;
        };
        let r = self.on_channel(&ch, &m);
        let amqp = json!({ "deliveryMode": 2, "mandatory": true, "bindingVersion": "0.3.0" });
        let mut op = json!({
            "action": "send",
            "channel": { "$ref": format!("#/channels/{ch}") },
            "title": format!("publish {}", e.name),
            "summary": format!("`{}` (linked into this binary, so it may publish it)", e.name),
            "messages": [r],
            "bindings": { "amqp": amqp },
        });
        if e.response.is_some() {
            let (reply, replies) = self.replies(e);
            op["reply"] = json!({
                "channel": { "$ref": format!("#/channels/{reply}") },
                "messages": replies,
            });
        }
        let key = unique_key(&self.operations, format!("send_{}", component_key(e.name)));
        self.operations.insert(key, op);
    }
}

/// The AsyncAPI 3.0 document of `service`: channels are topics and handler patterns on
/// `tchu_events`, messages the event schemas, operations the handlers (`receive`, with a
/// `reply` for RPC responders) and every event type linked into the binary (`send`).
///
/// `server` is the broker and `version` the service's own version.
pub fn asyncapi_document(service: &Service, server: Option<&Server>, version: &str) -> Value {
    let mut doc = Doc::new(server.map_or("/", |s| s.vhost.as_str()));
    let events = registered_events();
    for h in &service.handlers() {
        doc.receive(h, &events);
    }
    for e in &events {
        doc.send(e);
    }
    let schemas = doc.gen_.take_definitions(true);
    let description = format!(
        "tchu service `{}`: consumes the durable queue `{}` bound on the topic exchange `{}`; \
         failures go to `{}`.",
        service.queue(),
        service.queue(),
        EXCHANGE,
        service.dead_letter_queue()
    );
    let mut out = json!({
        "asyncapi": "3.0.0",
        "info": { "title": service.queue(), "version": version, "description": description },
        "defaultContentType": "application/json",
        "channels": doc.channels,
        "operations": doc.operations,
        "components": { "messages": doc.messages, "schemas": schemas },
    });
    crate::catalog::standardize(&mut out["components"]);
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
