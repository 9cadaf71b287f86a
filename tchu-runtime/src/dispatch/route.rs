//! Which handlers run: the one a retried or replayed copy names, or every handler whose
//! pattern matches the topic.

use super::inbound::Inbound;
use super::verdict::Failure;
use crate::handler::Handler;
use crate::headers::FailureKind;
use std::sync::Arc;
use tchu_core::pattern_matches;

/// Where a message goes.
#[derive(Debug)]
pub(crate) enum Route {
    /// These handlers run.
    Handlers(Vec<Arc<Handler>>),
    /// A request no handler matches: the caller is told at once (tchu-tchu's `no_handlers`
    /// answer), and there is nothing to park.
    NoHandlersReply,
    /// Nothing can run it: parked.
    Park(Failure),
}

/// Routes a message among a service's handlers: those of the ordered queue (`ordered`) or
/// those of the service queue. A copy naming its handler goes to it, from either queue.
pub(crate) fn select(all: &[Arc<Handler>], inbound: &Inbound, queue: &str, ordered: bool) -> Route {
    let targeted = inbound.targeted.as_deref();
    let handlers: Vec<Arc<Handler>> = all
        .iter()
        .filter(|h| match targeted {
            Some(name) => h.name == name,
            None => {
                h.ordered.is_some() == ordered && pattern_matches(&h.pattern, &inbound.env.topic)
            }
        })
        .cloned()
        .collect();
    if !handlers.is_empty() {
        return Route::Handlers(handlers);
    }
    let reason = match targeted {
        Some(name) => format!("service `{queue}` has no handler named `{name}`"),
        None if inbound.reply_to.is_some() => return Route::NoHandlersReply,
        None => format!(
            "no handler of service `{queue}` matches topic `{}`",
            inbound.env.topic
        ),
    };
    Route::Park(Failure::park(None, FailureKind::NoHandler, reason))
}
