//! Exponential backoff for reconnecting to services (PostgreSQL at start, the Redis bus).
//!
//! Deterministic (no jitter): one node has one connection per service, so there is no herd to
//! spread, and a predictable schedule is easier to read in the logs.

use std::time::Duration;

/// A bounded exponential schedule: `initial`, doubling up to `max` per wait, and at most
/// `give_up_after` of waiting in total (`None`: never give up, for background reconnects).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub give_up_after: Option<Duration>,
}

impl Backoff {
    /// The database at start: 0.5 s doubling to 8 s, giving up after 60 s of waiting. Long
    /// enough for a PostgreSQL container started at the same time to come up, short enough
    /// that a wrong host fails within a minute.
    pub const DATABASE_AT_START: Backoff = Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(8),
        give_up_after: Some(Duration::from_secs(60)),
    };

    /// Background reconnects (the Redis subscriber): 250 ms doubling to 10 s, forever (until
    /// the node shuts down).
    pub const RECONNECT: Backoff = Backoff {
        initial: Duration::from_millis(250),
        max: Duration::from_secs(10),
        give_up_after: None,
    };

    /// The waits of this schedule, in order; ends when the budget is spent.
    pub fn delays(self) -> Delays {
        Delays {
            spec: self,
            next: self.initial,
            waited: Duration::ZERO,
        }
    }
}

/// Iterator over the waits of a [`Backoff`].
#[derive(Clone, Debug)]
pub struct Delays {
    spec: Backoff,
    next: Duration,
    waited: Duration,
}

impl Delays {
    /// Total waiting handed out so far.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let mut d = self.next.min(self.spec.max);
        if let Some(budget) = self.spec.give_up_after {
            let left = budget.saturating_sub(self.waited);
            if left.is_zero() {
                return None;
            }
            d = d.min(left);
        }
        self.waited += d;
        self.next = self.next.saturating_mul(2).min(self.spec.max);
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max_and_stops_at_the_budget() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
            give_up_after: Some(Duration::from_millis(1500)),
        };
        let d: Vec<u64> = b.delays().map(|d| d.as_millis() as u64).collect();
        assert_eq!(d, vec![100, 200, 400, 500, 300]);
        assert_eq!(d.iter().sum::<u64>(), 1500);
    }

    #[test]
    fn unbounded_schedule_keeps_going_at_max() {
        let mut d = Backoff::RECONNECT.delays();
        let first: Vec<Duration> = d.by_ref().take(8).collect();
        assert_eq!(first[0], Duration::from_millis(250));
        assert_eq!(first[1], Duration::from_millis(500));
        assert_eq!(first[7], Duration::from_secs(10));
        assert_eq!(d.next(), Some(Duration::from_secs(10)));
    }
}
