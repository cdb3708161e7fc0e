//! The watch hub: hands every durable change batch of an eventual
//! namespace to the streams watching it (`docs/design/watch.md`).
//!
//! The node task calls [`WatchHub::dispatch`] for each
//! [`chorus_core::Action::Changes`] in the order the core releases them,
//! and subscribes a stream from inside the release of its catch-up read, so
//! a stream receives exactly the batches after the state its catch-up saw.
//! Dispatch never waits: each stream has a bounded buffer
//! ([`STREAM_BATCHES_MAX`]); a stream whose buffer is full is dropped from
//! the hub and marked lagged, and closes itself with a `lagged` event
//! after the batches it already holds.

use chorus_core::watch::ChangeBatch;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{mpsc, watch};

/// Change batches one stream may hold unsent. A consumer further behind
/// is closed as lagged (its token resumes it without a gap).
pub const STREAM_BATCHES_MAX: usize = 256;

struct Sub {
    id: u64,
    tx: mpsc::Sender<(u64, Arc<ChangeBatch>)>,
    lagged: Arc<AtomicBool>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// Batches dispatched so far; each carries its number.
    seq: u64,
    subs: HashMap<String, Vec<Sub>>,
}

/// See the module documentation. Cheap to share (`Arc`).
pub struct WatchHub {
    inner: Mutex<Inner>,
    /// Bumped after every dispatched batch: waiters for "this node caught
    /// up" (resumes, session reads) look again when it moves.
    changed: watch::Sender<u64>,
    /// Buffer of each new stream, in batches (tests lower it).
    stream_batches_max: usize,
}

/// One stream's end of the hub; dropping it unsubscribes.
pub struct Subscription {
    pub rx: mpsc::Receiver<(u64, Arc<ChangeBatch>)>,
    /// Set when the hub dropped the stream because its buffer was full.
    pub lagged: Arc<AtomicBool>,
    hub: Arc<WatchHub>,
    ns: String,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.ns, self.id);
    }
}

impl WatchHub {
    pub fn new() -> Arc<Self> {
        Self::with_stream_buffer(STREAM_BATCHES_MAX)
    }

    pub fn with_stream_buffer(stream_batches_max: usize) -> Arc<Self> {
        let (changed, _) = watch::channel(0);
        Arc::new(WatchHub {
            inner: Mutex::new(Inner::default()),
            changed,
            stream_batches_max: stream_batches_max.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hand a durable batch to every stream of its namespace (never waits).
    pub fn dispatch(&self, batch: ChangeBatch) {
        {
            let mut inner = self.lock();
            inner.seq += 1;
            let seq = inner.seq;
            if let Some(subs) = inner.subs.get_mut(&batch.namespace) {
                let batch = Arc::new(batch);
                subs.retain(|s| match s.tx.try_send((seq, Arc::clone(&batch))) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        s.lagged.store(true, Ordering::Release);
                        crate::telemetry::watch_lagged();
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                });
            }
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A new stream of `ns`: it receives every batch dispatched after this
    /// call. Call it on the node task, inside the release of the read its
    /// starting position came from.
    pub fn subscribe(self: &Arc<Self>, ns: &str) -> Subscription {
        let (tx, rx) = mpsc::channel(self.stream_batches_max);
        let lagged = Arc::new(AtomicBool::new(false));
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.subs.entry(ns.to_string()).or_default().push(Sub { id, tx, lagged: Arc::clone(&lagged) });
        drop(inner);
        Subscription { rx, lagged, hub: Arc::clone(self), ns: ns.to_string(), id }
    }

    fn unsubscribe(&self, ns: &str, id: u64) {
        let mut inner = self.lock();
        if let Some(subs) = inner.subs.get_mut(ns) {
            subs.retain(|s| s.id != id);
            if subs.is_empty() {
                inner.subs.remove(ns);
            }
        }
    }

    /// The number of the last dispatched batch: read on the node task
    /// inside a read's release, it splits a stream's batches into those
    /// before that read and those after it.
    pub fn seq(&self) -> u64 {
        self.lock().seq
    }

    /// Moves after every dispatched batch.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Streams subscribed now.
    pub fn streams(&self) -> usize {
        self.lock().subs.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(ns: &str) -> ChangeBatch {
        ChangeBatch { namespace: ns.into(), items: Vec::new(), prefix: Default::default() }
    }

    #[tokio::test]
    async fn a_full_stream_is_dropped_and_marked_lagged_without_stopping_the_others() {
        let hub = WatchHub::with_stream_buffer(2);
        let slow = hub.subscribe("a");
        let mut fast = hub.subscribe("a");
        let mut other = hub.subscribe("b");
        for _ in 0..3 {
            hub.dispatch(batch("a"));
            assert!(fast.rx.recv().await.is_some());
        }
        assert!(slow.lagged.load(Ordering::Acquire), "the third batch overflowed the slow stream");
        assert!(!fast.lagged.load(Ordering::Acquire));
        assert_eq!(hub.streams(), 2);
        assert!(other.rx.try_recv().is_err(), "another namespace's stream got nothing");
        drop(slow);
        drop(fast);
        assert_eq!(hub.streams(), 1);
    }
}
