//! Per-peer rate limit of the sync requests this node answers: a burst of [`SYNC_BURST`],
//! then [`SYNC_RATE_PER_SEC`] per second (GCRA, from `governor`).
//!
//! The limiter's clock is driven by the caller: every check passes `now`, which advances a
//! [`FakeRelativeClock`] shared with the limiter, so the core never reads the time itself and
//! tests move time by hand. Keys are bounded: peers whose state is indistinguishable from a
//! fresh one (their bucket refilled) are dropped on [`SyncRateLimit::housekeep`] and whenever
//! more than [`MAX_RATE_KEYS`] peers are tracked.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::FakeRelativeClock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use kos_klp::NodeId;

use super::limits::{MAX_RATE_KEYS, SYNC_BURST, SYNC_RATE_PER_SEC};

/// A clock for `governor` that shows the time it was last told (relative to its epoch).
/// Time never goes back: an earlier `now` leaves it where it is.
#[derive(Debug, Clone)]
pub struct InjectedClock {
    epoch: Instant,
    clock: FakeRelativeClock,
    at: Duration,
}

impl InjectedClock {
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            clock: FakeRelativeClock::default(),
            at: Duration::ZERO,
        }
    }

    /// Moves the clock to `now`.
    pub fn set(&mut self, now: Instant) {
        let t = now.saturating_duration_since(self.epoch);
        if t > self.at {
            self.clock.advance(t - self.at);
            self.at = t;
        }
    }

    /// The `governor` clock (a handle to the same time).
    pub fn handle(&self) -> FakeRelativeClock {
        self.clock.clone()
    }
}

type Limiter =
    RateLimiter<NodeId, DefaultKeyedStateStore<NodeId>, FakeRelativeClock, NoOpMiddleware<Nanos>>;

/// The per-peer limiter of answered sync requests.
#[derive(Debug)]
pub struct SyncRateLimit {
    clock: InjectedClock,
    limiter: Limiter,
    max_keys: usize,
}

impl SyncRateLimit {
    pub fn new(epoch: Instant) -> Self {
        Self::with_quota(epoch, sync_quota(), MAX_RATE_KEYS)
    }

    fn with_quota(epoch: Instant, quota: Quota, max_keys: usize) -> Self {
        let clock = InjectedClock::new(epoch);
        let limiter = RateLimiter::hashmap_with_clock(quota, clock.handle());
        Self {
            clock,
            limiter,
            max_keys,
        }
    }

    /// Whether a request of `peer` at `now` is answered (and counts it if so).
    pub fn allow(&mut self, peer: NodeId, now: Instant) -> bool {
        self.clock.set(now);
        let allowed = self.limiter.check_key(&peer).is_ok();
        if self.limiter.len() > self.max_keys {
            self.housekeep(now);
        }
        allowed
    }

    /// Forgets the peers whose budget is full again (they would start afresh anyway).
    pub fn housekeep(&mut self, now: Instant) {
        self.clock.set(now);
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Peers with a state kept.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

fn sync_quota() -> Quota {
    let rate = NonZeroU32::new(SYNC_RATE_PER_SEC).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(SYNC_BURST).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fedsync::pending::tests::id;
    use governor::clock::Clock;

    #[test]
    fn a_burst_is_allowed_then_refused_then_refilled_over_fake_time() {
        let t0 = Instant::now();
        let mut rl = SyncRateLimit::new(t0);
        for i in 0..SYNC_BURST {
            assert!(rl.allow(id(1), t0), "request {i} of the burst");
        }
        assert!(!rl.allow(id(1), t0), "over the burst");
        // Another peer has its own budget.
        assert!(rl.allow(id(2), t0));
        // Half a period later: still nothing.
        assert!(!rl.allow(id(1), t0 + Duration::from_millis(500)));
        // One period later: exactly one more.
        let t1 = t0 + Duration::from_secs(1);
        assert!(rl.allow(id(1), t1));
        assert!(!rl.allow(id(1), t1));
        // After the whole burst has refilled, the whole burst again, not more.
        let t2 = t1 + Duration::from_secs(u64::from(SYNC_BURST));
        for _ in 0..SYNC_BURST {
            assert!(rl.allow(id(1), t2));
        }
        assert!(!rl.allow(id(1), t2));
    }

    #[test]
    fn time_going_back_does_not_refill() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut rl = SyncRateLimit::new(t0);
        for _ in 0..SYNC_BURST {
            assert!(rl.allow(id(1), t0));
        }
        assert!(!rl.allow(id(1), t0 - Duration::from_secs(5)));
        assert!(!rl.allow(id(1), t0));
    }

    #[test]
    fn idle_peers_are_forgotten_and_busy_ones_kept() {
        let t0 = Instant::now();
        let mut rl = SyncRateLimit::new(t0);
        for n in 1..=20 {
            assert!(rl.allow(id(n), t0));
        }
        for _ in 1..SYNC_BURST {
            rl.allow(id(1), t0);
        }
        assert_eq!(rl.tracked(), 20);
        // Three seconds on: everyone who asked once is full again; peer 1 is not.
        let t1 = t0 + Duration::from_secs(3);
        rl.housekeep(t1);
        assert_eq!(rl.tracked(), 1);
        rl.housekeep(t1 + Duration::from_secs(u64::from(SYNC_BURST) + 1));
        assert_eq!(rl.tracked(), 0);
    }

    #[test]
    fn the_key_count_is_bounded() {
        let t0 = Instant::now();
        let mut rl = SyncRateLimit::with_quota(t0, sync_quota(), 8);
        for n in 1..=8 {
            rl.allow(id(n), t0);
        }
        assert_eq!(rl.tracked(), 8);
        // Past the bound, the idle ones go.
        rl.allow(id(9), t0 + Duration::from_secs(5));
        assert_eq!(rl.tracked(), 1);
    }

    #[test]
    fn the_injected_clock_follows_the_given_time() {
        let t0 = Instant::now();
        let mut c = InjectedClock::new(t0);
        let h = c.handle();
        c.set(t0 + Duration::from_millis(1500));
        assert_eq!(
            Duration::from(h.now()),
            Duration::from_millis(1500),
            "the limiter sees the time it was given"
        );
        c.set(t0);
        assert_eq!(Duration::from(h.now()), Duration::from_millis(1500));
    }
}
