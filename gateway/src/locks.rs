//! One lock per tenant for changes that touch both the control store and the runtime
//! (deployment create, update, pause, resume, delete; tenant suspend and delete), so the runtime
//! always follows the stored record: two requests never interleave their store write and their
//! runtime start or stop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::OwnedMutexGuard;
use weir_api::TenantId;

/// The per-tenant locks; an entry lives only while someone holds or waits for it.
#[derive(Debug, Default)]
pub struct TenantLocks {
    locks: Mutex<HashMap<TenantId, Weak<tokio::sync::Mutex<()>>>>,
}

/// Held while a tenant's deployments change.
pub type TenantGuard = OwnedMutexGuard<()>;

impl TenantLocks {
    /// Waits for `tenant`'s lock.
    pub async fn lock(&self, tenant: &TenantId) -> TenantGuard {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
            // Forget locks nobody holds or waits for: the map stays as small as the tenants
            // changing something right now.
            locks.retain(|_, lock| lock.strong_count() > 0);
            match locks.get(tenant).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(tenant.clone(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_per_tenant_and_no_lock_outlives_its_holders() {
        let locks = TenantLocks::default();
        let (a, b) = (TenantId::new("a").unwrap(), TenantId::new("b").unwrap());
        let held = locks.lock(&a).await;
        let other = locks.lock(&b).await;
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), locks.lock(&a));
        assert!(waiting.await.is_err(), "a second holder of a's lock");
        drop(held);
        drop(locks.lock(&a).await);
        drop(other);
        drop(locks.lock(&a).await);
        assert_eq!(
            locks.locks.lock().unwrap().len(),
            1,
            "only the last one, now unheld"
        );
    }
}
