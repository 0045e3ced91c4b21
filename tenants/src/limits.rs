//! Per-tenant API rate limits (`api_requests_per_second`, GCRA via `governor`, burst = one
//! second's worth) and the request counters `/v1/usage` reports.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use weir_api::TenantId;

struct TenantLimit {
    per_second: u32,
    limiter: DefaultDirectRateLimiter,
    requests: u64,
    limited: u64,
}

/// The API rate limits and request counters of every tenant.
#[derive(Default)]
pub struct ApiLimits {
    tenants: Mutex<HashMap<TenantId, TenantLimit>>,
}

impl std::fmt::Debug for ApiLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiLimits").finish_non_exhaustive()
    }
}

impl ApiLimits {
    /// Counts a request of `tenant` and admits it, or says how long to wait. A change of the
    /// tenant's quota takes effect on its next request.
    pub fn admit(&self, tenant: &TenantId, per_second: u32) -> Result<(), Duration> {
        let mut tenants = self
            .tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let entry = tenants
            .entry(tenant.clone())
            .or_insert_with(|| TenantLimit {
                per_second,
                limiter: RateLimiter::direct(Quota::per_second(rate)),
                requests: 0,
                limited: 0,
            });
        if entry.per_second != per_second {
            entry.per_second = per_second;
            entry.limiter = RateLimiter::direct(Quota::per_second(rate));
        }
        entry.requests += 1;
        match entry.limiter.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                entry.limited += 1;
                Err(not_until.wait_time_from(DefaultClock::default().now()))
            }
        }
    }

    /// Requests made and requests refused, of `tenant`.
    pub fn counts(&self, tenant: &TenantId) -> (u64, u64) {
        self.tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tenant)
            .map_or((0, 0), |t| (t.requests, t.limited))
    }

    /// Forgets a deleted tenant.
    pub fn forget(&self, tenant: &TenantId) {
        self.tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_over_the_rate_is_refused_and_counted() {
        let limits = ApiLimits::default();
        let tenant = TenantId::new("acme").unwrap();
        let admitted = (0..10).filter(|_| limits.admit(&tenant, 3).is_ok()).count();
        assert_eq!(admitted, 3);
        assert_eq!(limits.counts(&tenant), (10, 7));
        let other = TenantId::new("other").unwrap();
        assert!(
            limits.admit(&other, 3).is_ok(),
            "tenants have their own budget"
        );
    }
}
