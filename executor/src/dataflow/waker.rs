//! A `Waker` that re-schedules a timely operator: a wasm call that yields (epoch tick, host
//! future) wakes its operator, which polls the call again on its next activation.

use std::sync::Arc;
use std::task::{Wake, Waker};

use timely::scheduling::SyncActivator;

struct ActivatorWaker(SyncActivator);

impl Wake for ActivatorWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // The dataflow may be gone (undeployed); a late wake has nothing to do then.
        let _gone = self.0.activate();
    }
}

/// A waker for the operator `activator` activates. Must be made on the worker thread.
pub(crate) fn operator_waker(activator: SyncActivator) -> Waker {
    Waker::from(Arc::new(ActivatorWaker(activator)))
}
