//! A tenant's CPU share on shared workers: its `fuel_per_second` quota as a token bucket
//! (ARCHITECTURE decision 4). Every call into the tenant's modules, `init` included, is charged
//! the fuel it actually used; while the bucket is in debt the tenant's operators start no new
//! call and its sources take no new message, so the worker serves other tenants meanwhile.
//! The bucket holds at most one second's worth, so an idle tenant cannot save up a burst
//! larger than that.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest a throttled operator waits before it looks again.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// One tenant's fuel rate budget, shared by all of its deployments on an executor.
#[derive(Debug)]
pub struct FuelBudget {
    /// The `fuel_per_second` quota; changes apply to the next charge or check.
    rate: AtomicU64,
    /// Fuel available (negative: debt) and when it was last refilled.
    bucket: Mutex<(i128, Instant)>,
    /// Fuel charged in total, calls and inits alike.
    charged: AtomicU64,
    /// Of which `init` calls used.
    init_charged: AtomicU64,
}

impl FuelBudget {
    /// A full bucket for `fuel_per_second`.
    pub fn new(fuel_per_second: u64) -> Self {
        Self {
            rate: AtomicU64::new(fuel_per_second),
            bucket: Mutex::new((i128::from(fuel_per_second), Instant::now())),
            charged: AtomicU64::new(0),
            init_charged: AtomicU64::new(0),
        }
    }

    /// Applies a changed `fuel_per_second` quota from now on.
    pub fn set_rate(&self, fuel_per_second: u64) {
        self.rate.store(fuel_per_second, Ordering::Relaxed);
    }

    /// The `fuel_per_second` quota in force.
    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Fuel charged so far.
    pub fn charged(&self) -> u64 {
        self.charged.load(Ordering::Relaxed)
    }

    /// Of the fuel charged, what `init` calls used.
    pub fn init_charged(&self) -> u64 {
        self.init_charged.load(Ordering::Relaxed)
    }

    /// Charges `fuel` the tenant's calls used, of which `init` calls used `init_fuel`.
    pub fn charge_with_init(&self, fuel: u64, init_fuel: u64) {
        self.init_charged.fetch_add(init_fuel, Ordering::Relaxed);
        self.charge(fuel);
    }

    /// Charges `fuel` the tenant's calls used.
    pub fn charge(&self, fuel: u64) {
        if fuel == 0 {
            return;
        }
        self.charged.fetch_add(fuel, Ordering::Relaxed);
        let mut bucket = self.lock();
        self.refill(&mut bucket, Instant::now());
        bucket.0 -= i128::from(fuel);
    }

    /// Gives back `fuel` reserved with [`charge`](Self::charge) before a call: the call's own
    /// use is charged when it ends.
    pub fn refund(&self, fuel: u64) {
        if fuel == 0 {
            return;
        }
        self.charged.fetch_sub(fuel, Ordering::Relaxed);
        let mut bucket = self.lock();
        bucket.0 = bucket
            .0
            .saturating_add(i128::from(fuel))
            .min(i128::from(self.rate()));
    }

    /// `None` when the tenant may run; else how long until its debt is paid (at most
    /// 100 ms: the caller looks again then).
    pub fn throttled(&self) -> Option<Duration> {
        let mut bucket = self.lock();
        self.refill(&mut bucket, Instant::now());
        self.wait(&bucket)
    }

    /// Under one lock: when the tenant may run, charges `fuel` (a call's reservation) and
    /// returns `None`; else charges nothing and returns how long until its debt is paid, as
    /// [`throttled`](Self::throttled) does. What a call does before it starts, per item.
    pub fn reserve(&self, fuel: u64) -> Option<Duration> {
        let mut bucket = self.lock();
        self.refill(&mut bucket, Instant::now());
        if let Some(wait) = self.wait(&bucket) {
            return Some(wait);
        }
        if fuel > 0 {
            self.charged.fetch_add(fuel, Ordering::Relaxed);
            bucket.0 -= i128::from(fuel);
        }
        None
    }

    /// Under one lock, what a call does when it ends: gives back the `reserved` fuel (as
    /// [`refund`](Self::refund)) and charges the `used` fuel, of which `init` calls used
    /// `init_fuel` (as [`charge_with_init`](Self::charge_with_init)).
    pub fn settle(&self, reserved: u64, used: u64, init_fuel: u64) {
        self.init_charged.fetch_add(init_fuel, Ordering::Relaxed);
        if reserved == 0 && used == 0 {
            return;
        }
        self.charged.fetch_sub(reserved, Ordering::Relaxed);
        self.charged.fetch_add(used, Ordering::Relaxed);
        let mut bucket = self.lock();
        if reserved > 0 {
            bucket.0 = bucket
                .0
                .saturating_add(i128::from(reserved))
                .min(i128::from(self.rate()));
        }
        if used > 0 {
            self.refill(&mut bucket, Instant::now());
            bucket.0 -= i128::from(used);
        }
    }

    /// How long until the debt in `bucket` is paid; `None` without debt.
    fn wait(&self, bucket: &(i128, Instant)) -> Option<Duration> {
        if bucket.0 >= 0 {
            return None;
        }
        let rate = self.rate().max(1);
        let debt = u128::try_from(-bucket.0).unwrap_or(u128::MAX);
        let nanos = debt.saturating_mul(1_000_000_000) / u128::from(rate);
        let wait = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        Some(wait.clamp(Duration::from_millis(1), MAX_WAIT))
    }

    fn refill(&self, bucket: &mut (i128, Instant), now: Instant) {
        let rate = i128::from(self.rate());
        let elapsed = now.saturating_duration_since(bucket.1);
        let earned = i128::try_from(elapsed.as_nanos())
            .unwrap_or(i128::MAX)
            .saturating_mul(rate)
            / 1_000_000_000;
        // Refill only whole units, so slow trickles are not lost to rounding.
        if earned > 0 {
            bucket.0 = bucket.0.saturating_add(earned).min(rate);
            bucket.1 = now;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (i128, Instant)> {
        self.bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A byte budget shared by one tenant's deployments (e.g. its `max_inflight_bytes` quota):
/// bytes are reserved all at once or not at all, and released when what held them is done.
#[derive(Debug)]
pub struct ByteBudget {
    limit: AtomicU64,
    used: AtomicU64,
}

impl ByteBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
        }
    }

    /// Applies a changed quota: reservations from now on are checked against `limit`.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// The limit in force, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserves `bytes`, or nothing if that would pass the limit.
    pub fn try_reserve(&self, bytes: u64) -> bool {
        let limit = self.limit();
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= limit)
            })
            .is_ok()
    }

    /// Counts `bytes` whatever the limit: for what exists already and must be accounted.
    pub fn hold(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Whether the budget is spent: nothing more fits.
    pub fn is_spent(&self) -> bool {
        self.used() >= self.limit()
    }

    /// Gives back `bytes` reserved earlier.
    pub fn release(&self, bytes: u64) {
        let _previous = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_in_debt_waits_until_the_rate_pays_it() {
        let budget = FuelBudget::new(1_000_000);
        assert_eq!(budget.throttled(), None);
        budget.charge(1_500_000);
        let wait = budget.throttled().expect("in debt");
        // Half a second of debt at 1M/s, capped at the look-again interval.
        assert_eq!(wait, MAX_WAIT);
        budget.set_rate(1_000_000_000);
        let wait = budget.throttled();
        assert!(
            wait.is_none_or(|w| w <= Duration::from_millis(1)),
            "{wait:?}"
        );
        assert_eq!(budget.charged(), 1_500_000);
    }

    #[test]
    fn reserve_and_settle_do_what_throttled_charge_and_refund_do() {
        let rate = 1_000_000;
        let a = FuelBudget::new(rate);
        let b = FuelBudget::new(rate);
        // A reservation, then the call used less: the bucket holds the same either way.
        assert_eq!(a.reserve(400_000), None);
        assert_eq!(b.throttled(), None);
        b.charge(400_000);
        a.settle(400_000, 150_000, 0);
        b.refund(400_000);
        b.charge_with_init(150_000, 0);
        assert_eq!(a.charged(), b.charged());
        assert_eq!(a.charged(), 150_000);
        // Deep in debt: no reservation is taken, and the wait is the same.
        a.settle(0, 2 * rate, 7);
        b.charge_with_init(2 * rate, 7);
        let wait = a.reserve(400_000).expect("in debt");
        assert_eq!(Some(wait), b.throttled());
        assert_eq!(
            a.charged(),
            b.charged(),
            "a refused reservation charges nothing"
        );
        assert_eq!(a.init_charged(), 7);
    }

    #[test]
    fn byte_budgets_reserve_all_or_nothing() {
        let budget = ByteBudget::new(100);
        assert!(budget.try_reserve(60));
        assert!(!budget.try_reserve(41), "60 + 41 passes 100");
        assert_eq!(budget.used(), 60);
        assert!(budget.try_reserve(40), "exactly at the limit");
        budget.release(100);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn an_idle_tenant_saves_at_most_one_second() {
        let budget = FuelBudget::new(1_000);
        {
            let mut bucket = budget.lock();
            bucket.1 = Instant::now().checked_sub(Duration::from_secs(60)).unwrap();
        }
        assert_eq!(budget.throttled(), None);
        budget.charge(1_001);
        assert!(budget.throttled().is_some());
    }
}
