//! [`MeteredStateStore`]: counts every state operation per tenant (the usage the platform
//! reports), whatever backend is underneath.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use weir_api::{Hlc, TenantId};

use crate::{
    DelResponse, GetResponse, SetOptions, SetResponse, StateError, StateScope, StateStore,
    StateUsage,
};

/// A state store that counts each tenant's operations, then delegates.
#[derive(Debug)]
pub struct MeteredStateStore {
    inner: Arc<dyn StateStore>,
    operations: Mutex<HashMap<TenantId, u64>>,
}

impl MeteredStateStore {
    /// Counts the operations made on `inner`.
    pub fn new(inner: Arc<dyn StateStore>) -> Self {
        Self {
            inner,
            operations: Mutex::new(HashMap::new()),
        }
    }

    /// Operations `tenant` has made (failed ones included: they cost the backend too).
    pub fn operations(&self, tenant: &TenantId) -> u64 {
        self.operations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }

    fn forget(&self, tenant: &TenantId) {
        self.operations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(tenant);
    }

    fn count(&self, scope: &StateScope) {
        *self
            .operations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(scope.tenant().clone())
            .or_default() += 1;
    }
}

#[async_trait]
impl StateStore for MeteredStateStore {
    async fn get(&self, scope: &StateScope, key: &[u8]) -> Result<GetResponse, StateError> {
        self.count(scope);
        self.inner.get(scope, key).await
    }

    async fn set(
        &self,
        scope: &StateScope,
        key: &[u8],
        value: &[u8],
        options: SetOptions,
    ) -> Result<SetResponse, StateError> {
        self.count(scope);
        self.inner.set(scope, key, value, options).await
    }

    async fn del(
        &self,
        scope: &StateScope,
        key: &[u8],
        fencing_token: Option<&Hlc>,
    ) -> Result<DelResponse, StateError> {
        self.count(scope);
        self.inner.del(scope, key, fencing_token).await
    }

    async fn vdel(
        &self,
        scope: &StateScope,
        key: &[u8],
        value: &[u8],
        fencing_token: Option<&Hlc>,
    ) -> Result<DelResponse, StateError> {
        self.count(scope);
        self.inner.vdel(scope, key, value, fencing_token).await
    }

    async fn keys(&self, scope: &StateScope, limit: usize) -> Result<Vec<Vec<u8>>, StateError> {
        self.count(scope);
        self.inner.keys(scope, limit).await
    }

    /// Not metered: the platform reads it to report usage (the dashboard every few seconds),
    /// not the tenant's modules or API calls.
    async fn usage(&self, scope: &StateScope) -> Result<StateUsage, StateError> {
        self.inner.usage(scope).await
    }

    /// Not metered: the tenant is going, and its count goes with it.
    async fn clear(&self, scope: &StateScope) -> Result<(), StateError> {
        self.inner.clear(scope).await?;
        self.forget(scope.tenant());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryStateStore, StateLimits};

    #[tokio::test]
    async fn counts_each_tenants_operations_and_still_passes_the_conformance_suite() {
        let metered = MeteredStateStore::new(Arc::new(MemoryStateStore::default()));
        crate::testing::conformance(&metered).await;
        let scope = |t: &str| {
            StateScope::new(
                TenantId::new(t).unwrap(),
                StateLimits {
                    max_keys: 10,
                    max_bytes: 1000,
                    max_key_bytes: 100,
                },
            )
        };
        let before = metered.operations(&TenantId::new("metered-a").unwrap());
        metered
            .set(&scope("metered-a"), b"k", b"v", SetOptions::default())
            .await
            .unwrap();
        metered.get(&scope("metered-a"), b"k").await.unwrap();
        assert_eq!(
            metered.usage(&scope("metered-a")).await.unwrap(),
            crate::StateUsage { keys: 1, bytes: 2 }
        );
        assert_eq!(
            metered.operations(&TenantId::new("metered-a").unwrap()),
            before + 2,
            "reading the usage is not an operation of the tenant's"
        );
        assert_eq!(metered.operations(&TenantId::new("metered-b").unwrap()), 0);
        metered.clear(&scope("metered-a")).await.unwrap();
        assert_eq!(metered.operations(&TenantId::new("metered-a").unwrap()), 0);
        assert!(
            metered
                .keys(&scope("metered-a"), 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
