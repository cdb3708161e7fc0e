//! The slewed, monotone correction that turns the OS clock into the HLC's
//! physical time.

/// OS clock plus a correction that moves toward a target at a bounded rate.
///
/// Invariants:
/// * the output of [`SlewedCorrection::corrected_now_us`] never decreases,
///   whatever the OS clock does: after a backward OS step the output holds
///   until the OS clock catches up;
/// * the correction changes by at most `slew_rate_max_ppm` of the OS time
///   that elapsed since the largest OS reading seen so far (so a backward OS
///   step earns no slew budget).
#[derive(Clone, Debug)]
pub struct SlewedCorrection {
    slew_rate_max_ppm: u32,
    correction_us: i64,
    target_us: i64,
    /// Largest OS reading seen; slew budget accrues only past it.
    os_high_water_us: Option<u64>,
    /// Sub-microsecond slew budget carried between calls, in µs·ppm units.
    budget_carry: u128,
    last_output_us: u64,
    rate_ppm: f64,
    held_outputs: u64,
}

/// Read-only view of the correction for metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CorrectionReport {
    /// Current correction added to the OS clock, µs.
    pub correction_us: i64,
    /// Where the correction is heading (last cluster-time estimate), µs.
    pub target_us: i64,
    /// Rate the correction moved at over the last interval, ppm (signed).
    pub rate_ppm: f64,
    /// Configured bound on `|rate_ppm|`.
    pub slew_rate_max_ppm: u32,
    /// Calls that returned a held value because the OS clock plus correction
    /// was behind an earlier output.
    pub held_outputs: u64,
}

impl SlewedCorrection {
    pub fn new(slew_rate_max_ppm: u32) -> Self {
        SlewedCorrection {
            slew_rate_max_ppm,
            correction_us: 0,
            target_us: 0,
            os_high_water_us: None,
            budget_carry: 0,
            last_output_us: 0,
            rate_ppm: 0.0,
            held_outputs: 0,
        }
    }

    /// Sets where the correction should go. Takes effect gradually.
    pub fn set_target_us(&mut self, target_us: i64) {
        self.target_us = target_us;
    }

    /// Resumes above a persisted high-water mark so the output stays
    /// monotone across restarts.
    pub fn set_output_floor_us(&mut self, floor_us: u64) {
        self.last_output_us = self.last_output_us.max(floor_us);
    }

    /// Corrected time for the OS reading `os_now_us`; never below any earlier
    /// return value.
    pub fn corrected_now_us(&mut self, os_now_us: u64) -> u64 {
        match self.os_high_water_us {
            None => self.os_high_water_us = Some(os_now_us),
            Some(high_water) if os_now_us > high_water => {
                let elapsed_us = os_now_us - high_water;
                self.os_high_water_us = Some(os_now_us);
                self.slew(elapsed_us);
            }
            Some(_) => self.rate_ppm = 0.0,
        }
        let candidate = i128::from(os_now_us) + i128::from(self.correction_us);
        let candidate = candidate.clamp(0, i128::from(u64::MAX)) as u64;
        if candidate < self.last_output_us {
            self.held_outputs += 1;
        }
        self.last_output_us = self.last_output_us.max(candidate);
        self.last_output_us
    }

    fn slew(&mut self, elapsed_us: u64) {
        let gap = i128::from(self.target_us) - i128::from(self.correction_us);
        if gap == 0 {
            self.budget_carry = 0;
            self.rate_ppm = 0.0;
            return;
        }
        let budget_scaled = u128::from(elapsed_us) * u128::from(self.slew_rate_max_ppm) + self.budget_carry;
        let budget_us = budget_scaled / 1_000_000;
        self.budget_carry = budget_scaled % 1_000_000;
        // budget_us < 2^96 (u64 × u32 / 10^6), so it fits in i128.
        let budget = budget_us as i128;
        let step = gap.clamp(-budget, budget);
        if step.unsigned_abs() == gap.unsigned_abs() {
            self.budget_carry = 0;
        }
        self.correction_us = (i128::from(self.correction_us) + step) as i64;
        self.rate_ppm = step as f64 * 1e6 / elapsed_us as f64;
    }

    pub fn report(&self) -> CorrectionReport {
        CorrectionReport {
            correction_us: self.correction_us,
            target_us: self.target_us,
            rate_ppm: self.rate_ppm,
            slew_rate_max_ppm: self.slew_rate_max_ppm,
            held_outputs: self.held_outputs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correction_slews_at_the_configured_rate() {
        let mut correction = SlewedCorrection::new(500);
        correction.set_target_us(10_000);
        assert_eq!(correction.corrected_now_us(1_000_000), 1_000_000);
        // One second at 500 ppm moves 500 µs.
        assert_eq!(correction.corrected_now_us(2_000_000), 2_000_500);
        assert_eq!(correction.report().correction_us, 500);
        assert!((correction.report().rate_ppm - 500.0).abs() < 1e-9);
        // Twenty more seconds reach the target and stop there.
        assert_eq!(correction.corrected_now_us(22_000_000), 22_010_000);
        assert_eq!(correction.report().correction_us, 10_000);
    }

    #[test]
    fn negative_target_slews_down_without_output_going_backwards() {
        let mut correction = SlewedCorrection::new(500);
        correction.set_target_us(-1_000_000);
        let mut previous = 0;
        for step in 0..1_000u64 {
            let now = correction.corrected_now_us(1_000_000 + step * 1_000);
            assert!(now >= previous);
            previous = now;
        }
        // 999 ms elapsed at 500 ppm: −499 µs (rounding down the budget).
        assert_eq!(correction.report().correction_us, -499);
    }

    #[test]
    fn tiny_intervals_accumulate_slew_budget() {
        let mut correction = SlewedCorrection::new(500);
        correction.set_target_us(100);
        correction.corrected_now_us(0);
        for os in 1..=10_000u64 {
            correction.corrected_now_us(os);
        }
        // 10 ms at 500 ppm = 5 µs, even though each call earns 0.0005 µs.
        assert_eq!(correction.report().correction_us, 5);
    }

    #[test]
    fn backward_os_step_holds_output_until_caught_up() {
        let mut correction = SlewedCorrection::new(500);
        assert_eq!(correction.corrected_now_us(5_000_000), 5_000_000);
        assert_eq!(correction.corrected_now_us(3_000_000), 5_000_000);
        assert_eq!(correction.corrected_now_us(4_000_000), 5_000_000);
        assert_eq!(correction.corrected_now_us(5_000_001), 5_000_001);
        assert_eq!(correction.report().held_outputs, 2);
    }
}
