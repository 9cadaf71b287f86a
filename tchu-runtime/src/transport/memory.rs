//! The in-memory broker: RabbitMQ's topic routing without a server, for unit tests and demos.
//!
//! It routes with the same matcher the runtime uses for dispatch and that the test suite checks
//! against a real broker, returns unroutable messages like the mandatory flag does, and keeps
//! every queue (dead-letter queues included) open to inspection. It is not a broker to deploy:
//! nothing is persisted and nothing crosses the process.

use super::{Acker, Delivery, EXCHANGE};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tchu_core::envelope::WireMessage;
use tchu_core::pattern_matches;
use tokio::sync::Notify;

/// An in-process broker with one topic exchange, `tchu_events`, and any number of queues.
///
/// Clone it freely: clones share the same queues.
///
/// ```
/// # async fn demo() -> tchu_runtime::Result<()> {
/// let broker = tchu_runtime::MemoryBroker::new();
/// let client = tchu_runtime::Client::memory(&broker);
/// // Nothing is bound yet, so publishing is refused rather than lost:
/// let err = client.publish_raw("user.created", &serde_json::json!({"id": 1})).await;
/// assert!(matches!(err, Err(tchu_runtime::Error::Unroutable { .. })));
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("MemoryBroker")
            .field("queues", &st.queues.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// Woken whenever a message is settled, for [`MemoryBroker::settled`].
    settled: Notify,
    /// What other parts keep per broker, shared by every service on it (the schedules' rows,
    /// as a database would be), one value per type.
    #[cfg_attr(not(feature = "service"), allow(dead_code))]
    shared: Mutex<Vec<Arc<dyn std::any::Any + Send + Sync>>>,
}

#[derive(Default)]
struct State {
    queues: BTreeMap<String, Queue>,
    /// Messages held by delay queues' timers.
    delayed: usize,
    /// `(binding key, queue)` pairs on `tchu_events`.
    bindings: Vec<(String, String)>,
}

#[derive(Default)]
struct Queue {
    /// Waiting messages, each with whether it was delivered before.
    messages: VecDeque<(WireMessage, bool)>,
    unacked: usize,
    consumers: usize,
    ready: Arc<Notify>,
    /// A delay queue: messages wait this long, then go to the named queue (RabbitMQ's message
    /// TTL with a dead-letter routing key).
    delay: Option<(std::time::Duration, String)>,
}

impl MemoryBroker {
    /// A new, empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// The broker's one value of type `T`, made on first use.
    #[cfg(feature = "service")]
    pub(crate) fn shared<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut all = self.inner.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = all.iter().find_map(|v| v.clone().downcast::<T>().ok()) {
            return found;
        }
        let made = Arc::new(T::default());
        all.push(made.clone());
        made
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn declare_queue(&self, name: &str) {
        self.lock().queues.entry(name.to_owned()).or_default();
    }

    #[cfg(feature = "service")]
    pub(crate) fn declare_delay_queue(&self, name: &str, ttl: std::time::Duration, target: &str) {
        self.lock().queues.entry(name.to_owned()).or_default().delay =
            Some((ttl, target.to_owned()));
    }

    #[cfg(feature = "service")]
    /// Declares the queues and bindings of a service's topology.
    #[cfg(feature = "service")]
    pub(crate) fn declare_topology(&self, topo: &super::Topology) {
        self.declare_queue(&topo.queue);
        self.declare_queue(&topo.dead_letter_queue);
        self.declare_queue(&topo.quarantine_queue);
        for (name, ttl) in &topo.delay_queues {
            self.declare_delay_queue(name, std::time::Duration::from_millis(*ttl), &topo.queue);
        }
        for key in &topo.bindings {
            self.bind(&topo.queue, key);
        }
        if let Some(o) = &topo.ordered {
            self.declare_queue(&o.name);
            for key in &o.bindings {
                self.bind(&o.name, key);
            }
        }
    }

    #[cfg(feature = "service")]
    pub(crate) fn bind(&self, queue: &str, key: &str) {
        let mut st = self.lock();
        let pair = (key.to_owned(), queue.to_owned());
        if !st.bindings.contains(&pair) {
            st.bindings.push(pair);
        }
    }

    #[cfg(feature = "service")]
    pub(crate) fn unbind(&self, queue: &str, key: &str) {
        self.lock()
            .bindings
            .retain(|(k, q)| !(k == key && q == queue));
    }

    pub(crate) fn publish(&self, exchange: &str, msg: &WireMessage, mandatory: bool) -> Result<()> {
        let mut st = self.lock();
        let targets: Vec<String> = if exchange.is_empty() {
            st.queues
                .contains_key(&msg.routing_key)
                .then(|| msg.routing_key.clone())
                .into_iter()
                .collect()
        } else if exchange == EXCHANGE {
            let mut t: Vec<String> = st
                .bindings
                .iter()
                .filter(|(key, _)| pattern_matches(key, &msg.routing_key))
                .map(|(_, q)| q.clone())
                .collect();
            t.sort();
            t.dedup();
            t
        } else {
            return Err(Error::NotDeclared {
                what: "exchange",
                name: exchange.to_owned(),
            });
        };
        if targets.is_empty() {
            return if mandatory {
                Err(Error::Unroutable {
                    topic: msg.routing_key.clone(),
                })
            } else {
                Ok(())
            };
        }
        for q in targets {
            let Some(queue) = st.queues.get_mut(&q) else {
                continue;
            };
            if let Some((ttl, target)) = queue.delay.clone() {
                // Held by a tokio timer, so tests on a paused clock see exact delays.
                st.delayed += 1;
                let broker = self.clone();
                let mut m = msg.clone().expanded();
                m.routing_key = target;
                tokio::spawn(async move {
                    tokio::time::sleep(ttl).await;
                    let _ = broker.publish("", &m, false);
                    broker.lock().delayed -= 1;
                    broker.inner.settled.notify_waiters();
                });
            } else {
                queue.messages.push_back((msg.clone().expanded(), false));
                queue.ready.notify_one();
            }
        }
        Ok(())
    }

    pub(crate) fn consume(&self, queue: &str) -> Result<MemConsumer> {
        let mut st = self.lock();
        let q = st.queues.get_mut(queue).ok_or_else(|| Error::NotDeclared {
            what: "queue",
            name: queue.to_owned(),
        })?;
        q.consumers += 1;
        Ok(MemConsumer {
            broker: self.clone(),
            queue: queue.to_owned(),
            ready: q.ready.clone(),
        })
    }

    /// Routes a raw message through `tchu_events`, as any producer could send it: for tests that
    /// feed a service foreign or malformed input.
    ///
    /// # Errors
    /// [`Error::Unroutable`] when no queue is bound to the routing key.
    pub fn send(&self, msg: &WireMessage) -> Result<()> {
        self.publish(EXCHANGE, msg, true)
    }

    /// The number of messages waiting in a queue (0 for an unknown queue).
    pub fn queue_len(&self, queue: &str) -> usize {
        self.lock()
            .queues
            .get(queue)
            .map_or(0, |q| q.messages.len())
    }

    /// Takes the first message of a queue, unacknowledged (`basic.get`).
    #[cfg(feature = "service")]
    pub(crate) fn take_one(&self, queue: &str) -> Option<Delivery> {
        let mut st = self.lock();
        let q = st.queues.get_mut(queue)?;
        let (msg, redelivered) = q.messages.pop_front()?;
        q.unacked += 1;
        Some(Delivery {
            msg: msg.clone(),
            redelivered,
            acker: Acker::Memory(Box::new(MemAck {
                broker: self.clone(),
                queue: queue.to_owned(),
                unsettled: Some(msg),
            })),
        })
    }

    /// Removes and returns every message waiting in a queue, such as a service's `<queue>.dlq`.
    pub fn take(&self, queue: &str) -> Vec<WireMessage> {
        self.lock()
            .queues
            .get_mut(queue)
            .map(|q| q.messages.drain(..).map(|(m, _)| m).collect())
            .unwrap_or_default()
    }

    /// Copies of the messages waiting in a queue, left in it.
    pub fn peek(&self, queue: &str) -> Vec<WireMessage> {
        self.lock()
            .queues
            .get(queue)
            .map(|q| q.messages.iter().map(|(m, _)| m.clone()).collect())
            .unwrap_or_default()
    }

    /// The names of all declared queues.
    pub fn queues(&self) -> Vec<String> {
        self.lock().queues.keys().cloned().collect()
    }

    /// The binding keys of a queue on `tchu_events`.
    pub fn bindings(&self, queue: &str) -> Vec<String> {
        self.lock()
            .bindings
            .iter()
            .filter(|(_, q)| q == queue)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Waits until every queue that has a consumer is empty and has no delivery in progress:
    /// after it returns, every event published before the call has been handled.
    pub async fn settled(&self) {
        loop {
            let notified = self.inner.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let busy = {
                let st = self.lock();
                st.delayed > 0
                    || st
                        .queues
                        .values()
                        .any(|q| q.consumers > 0 && (!q.messages.is_empty() || q.unacked > 0))
            };
            if !busy {
                return;
            }
            notified.await;
        }
    }
}

pub(crate) struct MemConsumer {
    broker: MemoryBroker,
    queue: String,
    ready: Arc<Notify>,
}

impl MemConsumer {
    pub(crate) async fn next(&mut self) -> Option<Delivery> {
        loop {
            let ready = self.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let mut st = self.broker.lock();
                let q = st.queues.get_mut(&self.queue)?;
                if let Some((msg, redelivered)) = q.messages.pop_front() {
                    q.unacked += 1;
                    // Several consumers may wait on one queue: pass the wake-up on.
                    if !q.messages.is_empty() {
                        q.ready.notify_one();
                    }
                    return Some(Delivery {
                        msg: msg.clone(),
                        redelivered,
                        acker: Acker::Memory(Box::new(MemAck {
                            broker: self.broker.clone(),
                            queue: self.queue.clone(),
                            unsettled: Some(msg),
                        })),
                    });
                }
            }
            ready.await;
        }
    }
}

impl Drop for MemConsumer {
    fn drop(&mut self) {
        if let Some(q) = self.broker.lock().queues.get_mut(&self.queue) {
            q.consumers = q.consumers.saturating_sub(1);
        }
        self.broker.inner.settled.notify_waiters();
    }
}

pub(crate) struct MemAck {
    broker: MemoryBroker,
    queue: String,
    /// The delivered message until it is settled: dropped unsettled (a task aborted or
    /// panicked), it goes back to the queue, as RabbitMQ does when a channel closes.
    unsettled: Option<WireMessage>,
}

impl MemAck {
    /// Acknowledges, or with `Some(msg)` puts the message back at the head of the queue.
    pub(crate) fn settle(mut self, requeue: Option<WireMessage>) {
        self.unsettled = None;
        self.finish(requeue);
    }

    fn finish(&self, requeue: Option<WireMessage>) {
        {
            let mut st = self.broker.lock();
            if let Some(q) = st.queues.get_mut(&self.queue) {
                q.unacked = q.unacked.saturating_sub(1);
                if let Some(m) = requeue {
                    q.messages.push_front((m, true));
                    q.ready.notify_one();
                }
            }
        }
        self.broker.inner.settled.notify_waiters();
    }
}

impl Drop for MemAck {
    fn drop(&mut self) {
        if let Some(m) = self.unsettled.take() {
            self.finish(Some(m));
        }
    }
}
