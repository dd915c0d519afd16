//! Exponential backoff for reconnecting to services (PostgreSQL at start, the Redis bus).
//! The schedule is `backon`'s exponential backoff, driven as a plain iterator of waits (the
//! callers sleep themselves, so they can stop on shutdown while waiting).
//!
//! Deterministic (no jitter): one node has one connection per service, so there is no herd to
//! spread, and a predictable schedule is easier to read in the logs.

use std::time::Duration;

use backon::BackoffBuilder;

/// A bounded exponential schedule: `initial`, doubling up to `max` per wait, and at most
/// `give_up_after` of waiting in total (`None`: never give up, for background reconnects):
/// the wait that would pass the budget is cut to what is left of it.
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
        let schedule = backon::ExponentialBuilder::default()
            .with_min_delay(self.initial)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .without_max_times()
            .with_total_delay(self.give_up_after)
            .build();
        Delays {
            schedule,
            budget: self.give_up_after,
            waited: Duration::ZERO,
            spent: false,
        }
    }
}

/// Iterator over the waits of a [`Backoff`].
#[derive(Debug)]
pub struct Delays {
    schedule: backon::ExponentialBackoff,
    budget: Option<Duration>,
    waited: Duration,
    /// The budget is used up (backon stops before the wait that would pass it; the rest of
    /// the budget is handed out once).
    spent: bool,
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
        if self.spent {
            return None;
        }
        let d = match self.schedule.next() {
            Some(d) => d,
            None => {
                self.spent = true;
                let left = self.budget?.saturating_sub(self.waited);
                // backon's f32 factor leaves nanoseconds, not a wait.
                if left < Duration::from_millis(1) {
                    return None;
                }
                left
            }
        };
        self.waited += d;
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
        let mut delays = b.delays();
        // backon multiplies by an f32 factor: nanoseconds off, so compare rounded.
        let d: Vec<u64> = delays
            .by_ref()
            .map(|d| (d.as_secs_f64() * 1000.0).round() as u64)
            .collect();
        // The next 500 ms would pass the 1.5 s budget: what is left of it, 300 ms, instead.
        assert_eq!(d, vec![100, 200, 400, 500, 300]);
        assert_eq!(delays.waited(), Duration::from_millis(1500));
        assert_eq!(delays.next(), None);
    }

    #[test]
    fn unbounded_schedule_keeps_going_at_max() {
        let mut d = Backoff::RECONNECT.delays();
        let first: Vec<Duration> = d.by_ref().take(200).collect();
        assert_eq!(first.len(), 200);
        assert_eq!(first[0], Duration::from_millis(250));
        assert_eq!(first[1], Duration::from_millis(500));
        assert_eq!(first[7], Duration::from_secs(10));
        assert_eq!(d.next(), Some(Duration::from_secs(10)));
    }

    #[test]
    fn the_database_at_start_gives_up_within_a_minute() {
        let d: Vec<Duration> = Backoff::DATABASE_AT_START.delays().collect();
        let total: Duration = d.iter().sum();
        assert_eq!(d[0], Duration::from_millis(500));
        // 0.5, 1, 2, 4, then 8 s six times, then the 4.5 s left of the minute.
        assert_eq!(d.len(), 11, "{d:?}");
        assert_eq!(total, Duration::from_secs(60));
    }
}
