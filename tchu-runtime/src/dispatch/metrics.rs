//! The metric handles of a service's dispatch, registered once at start (names and labels:
//! [`crate::observe`]).

use crate::handler::{Handler, HandlerErrorKind};
use metrics::{Counter, Gauge, Histogram};
use std::sync::Arc;

/// Per-handler metric handles, registered once at service start.
pub(crate) struct HandlerMetrics {
    pub handled: Counter,
    pub failed: [Counter; 3],
    pub retried: Counter,
    pub duration: Histogram,
}

impl HandlerMetrics {
    pub(crate) fn failed(&self, kind: HandlerErrorKind) {
        let i = match kind {
            HandlerErrorKind::Rejected
            | HandlerErrorKind::SchemaMismatch
            | HandlerErrorKind::NoSaga => 1,
            HandlerErrorKind::Panicked => 2,
            _ => 0,
        };
        self.failed[i].increment(1);
    }
}

/// A service's metric handles.
pub(crate) struct ServiceMetrics {
    pub in_flight: Gauge,
    // A short list: cheaper per delivery than hashing the name.
    handlers: Vec<(String, HandlerMetrics)>,
    queue: String,
}

impl ServiceMetrics {
    pub(crate) fn new(queue: &str, handlers: &[Arc<Handler>]) -> Self {
        let q = queue.to_owned();
        let handlers = handlers
            .iter()
            .map(|h| {
                let name = h.name.to_string();
                let labels = [("queue", q.clone()), ("handler", name.clone())];
                let failed = ["failed", "rejected", "panicked"].map(|kind| {
                    metrics::counter!("tchu_failed_total", "queue" => q.clone(), "handler" => name.clone(), "kind" => kind)
                });
                (
                    name,
                    HandlerMetrics {
                        handled: metrics::counter!("tchu_handled_total", &labels),
                        failed,
                        retried: metrics::counter!("tchu_retried_total", &labels),
                        duration: metrics::histogram!("tchu_handler_duration_seconds", &labels),
                    },
                )
            })
            .collect();
        Self {
            in_flight: metrics::gauge!("tchu_in_flight", "queue" => q.clone()),
            handlers,
            queue: q,
        }
    }

    pub(crate) fn handler(&self, name: &str) -> Option<&HandlerMetrics> {
        self.handlers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m)
    }

    pub(crate) fn dead_lettered(&self, reason: &'static str) {
        metrics::counter!("tchu_dead_lettered_total", "queue" => self.queue.clone(), "reason" => reason)
            .increment(1);
    }
}
