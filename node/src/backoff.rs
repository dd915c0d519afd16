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
/// the schedule ends before the wait that would pass it.
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
            waited: Duration::ZERO,
        }
    }
}

/// Iterator over the waits of a [`Backoff`].
#[derive(Debug)]
pub struct Delays {
    schedule: backon::ExponentialBackoff,
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
        let d = self.schedule.next()?;
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
        let d: Vec<u64> = delays.by_ref().map(|d| d.as_millis() as u64).collect();
        // The next 500 ms would pass the 1.5 s budget.
        assert_eq!(d, vec![100, 200, 400, 500]);
        // backon multiplies by an f32 factor: nanoseconds off, not milliseconds.
        assert_eq!(delays.waited().as_millis(), 1200);
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
        assert_eq!(d.last(), Some(&Duration::from_secs(8)));
        assert!(
            total <= Duration::from_secs(60) && total > Duration::from_secs(50),
            "{total:?}"
        );
    }
}
