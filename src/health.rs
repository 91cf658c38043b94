//! Health as a small pure state machine: consecutive results move a backend between up and
//! down. `observe` reports only the flips, so callers log transitions, never each probe.

/// Up or down, with the streak of results that disagree with the current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Health {
    up: bool,
    /// Consecutive results contradicting `up` (failures while up, passes while down).
    streak: u32,
    rise: u32,
    fall: u32,
}

impl Health {
    /// A backend starts up, as in nginx and HAProxy: traffic flows at once, and the first
    /// `fall` failures take it out.
    pub(crate) fn new(rise: u32, fall: u32) -> Health {
        Health {
            up: true,
            streak: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// Marks the backend down at once, as when carrying a down backend into a new
    /// configuration.
    pub(crate) fn observe_down(&mut self) {
        self.up = false;
        self.streak = 0;
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up
    }

    /// Records one check result; returns true when it flipped the state.
    pub(crate) fn observe(&mut self, ok: bool) -> bool {
        if ok == self.up {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak >= needed {
            self.up = !self.up;
            self.streak = 0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(h: &mut Health, results: &[bool]) -> Vec<(bool, bool)> {
        results
            .iter()
            .map(|&ok| {
                let flipped = h.observe(ok);
                (flipped, h.is_up())
            })
            .collect()
    }

    #[test]
    fn goes_down_after_fall_consecutive_failures() {
        let mut h = Health::new(2, 3);
        assert!(h.is_up());
        assert_eq!(
            run(&mut h, &[false, false, false, false]),
            [(false, true), (false, true), (true, false), (false, false)]
        );
    }

    #[test]
    fn a_pass_resets_the_failure_streak() {
        let mut h = Health::new(2, 3);
        let seq = run(&mut h, &[false, false, true, false, false, true]);
        assert!(seq.iter().all(|&(flipped, up)| !flipped && up), "{seq:?}");
    }

    #[test]
    fn comes_back_after_rise_consecutive_passes() {
        let mut h = Health::new(2, 1);
        assert_eq!(run(&mut h, &[false]), [(true, false)]);
        assert_eq!(
            run(&mut h, &[true, false, true, true, true]),
            [
                (false, false),
                (false, false),
                (false, false),
                (true, true),
                (false, true)
            ]
        );
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let mut h = Health::new(0, 0);
        assert_eq!(run(&mut h, &[false, true]), [(true, false), (true, true)]);
    }
}
