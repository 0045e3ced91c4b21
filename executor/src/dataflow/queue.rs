//! The queue between a deployment's dataflow (producer, on a worker thread that must never
//! block) and its consumers (sink connectors, tests, the CLI). Pushing never blocks; the queue's
//! capacity is enforced upstream: sources stop taking messages while it is over capacity, so
//! backpressure reaches the broker instead of memory.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// A multi-producer, multi-consumer queue with a soft capacity.
#[derive(Debug)]
pub struct OutputQueue<T> {
    capacity: usize,
    items: Mutex<VecDeque<T>>,
    ready: Condvar,
    /// Async consumers' wake-up: one permit kept when nobody waits, so a push between a
    /// consumer's empty `try_pop` and its wait is never missed.
    pushed: tokio::sync::Notify,
}

impl<T> OutputQueue<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            items: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            pushed: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn push(&self, item: T) {
        self.lock().push_back(item);
        self.ready.notify_one();
        self.pushed.notify_one();
    }

    /// Pushes every item of `items` in order, under one lock, with one wake-up.
    pub(crate) fn push_all(&self, items: Vec<T>) {
        let count = items.len();
        if count == 0 {
            return;
        }
        self.lock().extend(items);
        if count == 1 {
            self.ready.notify_one();
        } else {
            self.ready.notify_all();
        }
        self.pushed.notify_one();
    }

    /// Resolves once something was pushed since the last such wake-up (at once if a push came
    /// while nobody waited). For one async consumer per queue, e.g. a deployment's sink pump:
    /// it wakes when the dataflow emits instead of polling on a timer (a 1 ms poll added
    /// 1-2 ms to every message's latency, BENCHMARKS.md rows 3 and 5).
    pub async fn pushed(&self) {
        self.pushed.notified().await;
    }

    /// Whether consumers are behind: sources hold back while this is true.
    pub(crate) fn is_over_capacity(&self) -> bool {
        self.lock().len() >= self.capacity
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The next item, if one is waiting.
    pub fn try_pop(&self) -> Option<T> {
        self.lock().pop_front()
    }

    /// The next item, if one is waiting and `accept` takes it; else it stays first in line.
    pub fn try_pop_if(&self, accept: impl FnOnce(&T) -> bool) -> Option<T> {
        let mut items = self.lock();
        if accept(items.front()?) {
            items.pop_front()
        } else {
            None
        }
    }

    /// The next item, waiting up to `timeout` for one.
    pub fn pop_timeout(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut items = self.lock();
        loop {
            if let Some(item) = items.pop_front() {
                return Some(item);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            items = self
                .ready
                .wait_timeout(items, left)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    /// Everything waiting now.
    pub fn drain(&self) -> Vec<T> {
        self.lock().drain(..).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<T>> {
        self.items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
