//! The metric handles of a service's dispatch, registered once at start (names and labels:
//! [`crate::observe`]).

use crate::handler::{HandlerDescriptor, HandlerErrorKind};
use metrics::{Counter, Gauge, Histogram};

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
            HandlerErrorKind::Rejected | HandlerErrorKind::SchemaMismatch => 1,
            HandlerErrorKind::Panicked => 2,
            _ => 0,
        };
        self.failed[i].increment(1);
    }
}

/// A service's metric handles.
pub(crate) struct ServiceMetrics {
    pub in_flight: Gauge,
    // A short list compared by address: cheaper per delivery than hashing the name.
    handlers: Vec<(&'static str, HandlerMetrics)>,
    queue: String,
}

impl ServiceMetrics {
    pub(crate) fn new(queue: &str, handlers: &[&'static HandlerDescriptor]) -> Self {
        let q = queue.to_owned();
        let handlers = handlers
            .iter()
            .map(|h| {
                let labels = [("queue", q.clone()), ("handler", h.name.to_owned())];
                let failed = ["failed", "rejected", "panicked"].map(|kind| {
                    metrics::counter!("tchu_failed_total", "queue" => q.clone(), "handler" => h.name, "kind" => kind)
                });
                (
                    h.name,
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

    pub(crate) fn handler(&self, name: &'static str) -> Option<&HandlerMetrics> {
        self.handlers
            .iter()
            .find(|(n, _)| std::ptr::eq(*n, name) || *n == name)
            .map(|(_, m)| m)
    }

    pub(crate) fn dead_lettered(&self, reason: &'static str) {
        metrics::counter!("tchu_dead_lettered_total", "queue" => self.queue.clone(), "reason" => reason)
            .increment(1);
    }
}
