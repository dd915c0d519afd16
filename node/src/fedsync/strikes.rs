//! Strikes against peers that send invalid ops: [`STRIKES`] within [`STRIKE_WINDOW`] and
//! the peer is penalized. Time is a parameter.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use kos_klp::NodeId;

use super::limits::{STRIKE_WINDOW, STRIKES};

#[derive(Debug, Default)]
pub struct Strikes {
    by_peer: HashMap<NodeId, VecDeque<Instant>>,
}

impl Strikes {
    /// Counts a strike against `peer` at `now`; `true` when it is time to penalize it (its
    /// count starts again from zero then).
    pub fn strike(&mut self, peer: NodeId, now: Instant) -> bool {
        let q = self.by_peer.entry(peer).or_default();
        q.push_back(now);
        while q
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > STRIKE_WINDOW)
        {
            q.pop_front();
        }
        if q.len() as u32 >= STRIKES {
            q.clear();
            return true;
        }
        false
    }

    /// Forgets peers whose strikes are all out of the window at `now` (they would be
    /// dropped at their next strike anyway).
    pub fn forget_old(&mut self, now: Instant) {
        self.by_peer.retain(|_, q| {
            q.back()
                .is_some_and(|t| now.saturating_duration_since(*t) <= STRIKE_WINDOW)
        });
    }

    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.by_peer.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fedsync::pending::tests::id;
    use std::time::Duration;

    #[test]
    fn the_third_strike_within_the_window_penalizes() {
        let t0 = Instant::now();
        let mut s = Strikes::default();
        assert!(!s.strike(id(1), t0));
        assert!(!s.strike(id(1), t0 + Duration::from_secs(1)));
        // Another peer's strikes are its own.
        assert!(!s.strike(id(2), t0 + Duration::from_secs(2)));
        assert!(s.strike(id(1), t0 + STRIKE_WINDOW));
        // Counted from zero again.
        assert!(!s.strike(id(1), t0 + STRIKE_WINDOW));
    }

    #[test]
    fn strikes_outside_the_window_do_not_count() {
        let t0 = Instant::now();
        let mut s = Strikes::default();
        let step = STRIKE_WINDOW / 2 + Duration::from_secs(1);
        for i in 0..10 {
            assert!(
                !s.strike(id(1), t0 + step * i),
                "strike {i}: only two fall in one window"
            );
        }
        // A third one inside the window of the last two does.
        assert!(s.strike(id(1), t0 + step * 9 + Duration::from_secs(1)));
    }

    #[test]
    fn old_strikes_are_forgotten() {
        let t0 = Instant::now();
        let mut s = Strikes::default();
        s.strike(id(1), t0);
        s.strike(id(2), t0 + STRIKE_WINDOW);
        s.forget_old(t0 + STRIKE_WINDOW + Duration::from_secs(1));
        assert_eq!(s.tracked(), 1);
    }
}
