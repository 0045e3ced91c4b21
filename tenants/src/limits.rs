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

/// Why messages were refused by [`MessageRates::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateRefusal {
    /// Over the rate now: retry after this long.
    Wait(Duration),
    /// The batch is larger than one second's worth: it can never be admitted whole.
    TooMany {
        /// The tenant's `messages_per_second_in`.
        per_second: u32,
    },
}

struct TenantRate {
    per_second: u32,
    limiter: DefaultDirectRateLimiter,
    limited: u64,
}

/// The `messages_per_second_in` limits of every tenant (GCRA via `governor`, burst = one
/// second's worth): a batch of messages is admitted whole or not at all.
#[derive(Default)]
pub struct MessageRates {
    tenants: Mutex<HashMap<TenantId, TenantRate>>,
}

impl std::fmt::Debug for MessageRates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageRates").finish_non_exhaustive()
    }
}

impl MessageRates {
    /// Admits `messages` messages into `tenant`'s deployments at `per_second`, or refuses all
    /// of them. A changed quota applies from this call on.
    pub fn admit(
        &self,
        tenant: &TenantId,
        per_second: u32,
        messages: u32,
    ) -> Result<(), RateRefusal> {
        let Some(cells) = NonZeroU32::new(messages) else {
            return Ok(());
        };
        let mut tenants = self
            .tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let entry = tenants.entry(tenant.clone()).or_insert_with(|| TenantRate {
            per_second,
            limiter: RateLimiter::direct(Quota::per_second(rate)),
            limited: 0,
        });
        if entry.per_second != per_second {
            entry.per_second = per_second;
            entry.limiter = RateLimiter::direct(Quota::per_second(rate));
        }
        let refusal = match entry.limiter.check_n(cells) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(not_until)) => {
                RateRefusal::Wait(not_until.wait_time_from(DefaultClock::default().now()))
            }
            Err(_insufficient) => RateRefusal::TooMany { per_second },
        };
        entry.limited += u64::from(messages);
        Err(refusal)
    }

    /// Messages of `tenant` refused by its rate.
    pub fn limited(&self, tenant: &TenantId) -> u64 {
        self.tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tenant)
            .map_or(0, |t| t.limited)
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

    #[test]
    fn message_batches_are_admitted_whole_or_not_at_all() {
        let rates = MessageRates::default();
        let tenant = TenantId::new("acme").unwrap();
        assert_eq!(rates.admit(&tenant, 5, 4), Ok(()));
        assert!(matches!(
            rates.admit(&tenant, 5, 2),
            Err(RateRefusal::Wait(wait)) if wait > Duration::ZERO
        ));
        assert_eq!(rates.admit(&tenant, 5, 1), Ok(()), "exactly the fifth");
        assert_eq!(
            rates.admit(&tenant, 5, 6),
            Err(RateRefusal::TooMany { per_second: 5 })
        );
        assert_eq!(rates.limited(&tenant), 8);
    }
}
