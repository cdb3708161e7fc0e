//! Per-peer state: the clock filter window and the drift regression.

use std::collections::VecDeque;

use crate::{DRIFT_POINTS_MAX, DRIFT_POINTS_MIN, FILTER_SAMPLES_MAX};

/// One exchange, reduced to what the estimators need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sample {
    /// Our OS clock at the middle of the exchange, (t1+t4)/2: the instant the
    /// offset θ describes.
    pub local_us: i64,
    /// θ = ((t2−t1)+(t3−t4))/2: peer clock − our clock.
    pub offset_us: i64,
    /// δ = (t4−t1)−(t3−t2) ≥ 0.
    pub delay_us: i64,
}

/// A peer's offset estimate at some local instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Estimate {
    pub offset_us: i64,
    pub error_us: u64,
    pub delay_us: i64,
    pub sample_age_us: i64,
}

#[derive(Clone, Debug)]
pub(crate) struct PeerState {
    pub tier: u8,
    /// Newest last; at most [`FILTER_SAMPLES_MAX`].
    filter: VecDeque<Sample>,
    /// One lowest-delay sample per closed drift epoch; at most
    /// [`DRIFT_POINTS_MAX`].
    drift_points: VecDeque<Sample>,
    /// Lowest-delay sample of the epoch in progress.
    epoch_best: Option<Sample>,
    epoch_start_us: i64,
    /// Relative frequency (peer − us), ppm, once enough points exist.
    pub drift_ppm: Option<f64>,
    pub last_local_us: i64,
    pub consecutive_spikes: u32,
}

impl PeerState {
    pub fn new(tier: u8) -> Self {
        PeerState {
            tier,
            filter: VecDeque::with_capacity(FILTER_SAMPLES_MAX),
            drift_points: VecDeque::with_capacity(DRIFT_POINTS_MAX),
            epoch_best: None,
            epoch_start_us: 0,
            drift_ppm: None,
            last_local_us: i64::MIN,
            consecutive_spikes: 0,
        }
    }

    pub fn window_len(&self) -> usize {
        self.filter.len()
    }

    pub fn drift_points_len(&self) -> usize {
        self.drift_points.len()
    }

    /// Adds a sample to the filter and to the drift epochs.
    pub fn push(&mut self, sample: Sample, drift_epoch_us: i64) {
        if self.filter.len() == FILTER_SAMPLES_MAX {
            self.filter.pop_front();
        }
        self.filter.push_back(sample);
        self.last_local_us = self.last_local_us.max(sample.local_us);
        match self.epoch_best {
            None => {
                self.epoch_best = Some(sample);
                self.epoch_start_us = sample.local_us;
            }
            Some(best) => {
                if sample.local_us.saturating_sub(self.epoch_start_us) >= drift_epoch_us {
                    if self.drift_points.len() == DRIFT_POINTS_MAX {
                        self.drift_points.pop_front();
                    }
                    self.drift_points.push_back(best);
                    self.drift_ppm = fit_drift_ppm(&self.drift_points);
                    self.epoch_best = Some(sample);
                    self.epoch_start_us = sample.local_us;
                } else if sample.delay_us < best.delay_us {
                    self.epoch_best = Some(sample);
                }
            }
        }
    }

    /// Offset predicted at `local_now_us` from the filter's best sample.
    ///
    /// The best sample minimises the error bound δ/2 + rate·age, as NTP's
    /// clock filter does (`docs/design/clock.md`, "Sampling and the clock
    /// filter"); it is extrapolated with the drift estimate, and its bound
    /// grows at `frequency_error_max_ppm` once drift is known, at
    /// `uncompensated_drift_max_ppm` before.
    pub fn estimate(
        &self,
        local_now_us: i64,
        frequency_error_max_ppm: f64,
        uncompensated_drift_max_ppm: f64,
    ) -> Option<Estimate> {
        let rate_ppm = if self.drift_ppm.is_some() { frequency_error_max_ppm } else { uncompensated_drift_max_ppm };
        let bound = |sample: &Sample| -> f64 {
            let age_us = local_now_us.saturating_sub(sample.local_us).unsigned_abs() as f64;
            sample.delay_us as f64 / 2.0 + rate_ppm * age_us / 1e6
        };
        let best = self.filter.iter().min_by(|a, b| bound(a).total_cmp(&bound(b))).copied()?;
        let age_us = local_now_us.saturating_sub(best.local_us);
        let drift = self.drift_ppm.unwrap_or(0.0);
        let offset_us = best.offset_us.saturating_add((drift * age_us as f64 / 1e6).round() as i64);
        Some(Estimate {
            offset_us,
            error_us: bound(&best).ceil() as u64,
            delay_us: best.delay_us,
            sample_age_us: age_us,
        })
    }
}

/// Least-squares slope of offset against local time over the lower-delay
/// half of the points (at least [`DRIFT_POINTS_MIN`]), in ppm. High-delay
/// points carry most of the asymmetric queueing error, so they are left out
/// as in the NTP clock filter.
fn fit_drift_ppm(points: &VecDeque<Sample>) -> Option<f64> {
    if points.len() < DRIFT_POINTS_MIN {
        return None;
    }
    let mut delays: Vec<i64> = points.iter().map(|p| p.delay_us).collect();
    delays.sort_unstable();
    let keep = points.len().div_ceil(2).max(DRIFT_POINTS_MIN);
    let delay_cutoff = delays[keep - 1];
    // Centre on the first point so the f64 values stay small and exact.
    let origin = points.front()?;
    let mut used = 0usize;
    let (mut sum_t, mut sum_y) = (0.0f64, 0.0f64);
    for point in points.iter().filter(|p| p.delay_us <= delay_cutoff) {
        sum_t += point.local_us.saturating_sub(origin.local_us) as f64;
        sum_y += point.offset_us.saturating_sub(origin.offset_us) as f64;
        used += 1;
    }
    let mean_t = sum_t / used as f64;
    let mean_y = sum_y / used as f64;
    let (mut sxx, mut sxy) = (0.0f64, 0.0f64);
    for point in points.iter().filter(|p| p.delay_us <= delay_cutoff) {
        let t = point.local_us.saturating_sub(origin.local_us) as f64 - mean_t;
        let y = point.offset_us.saturating_sub(origin.offset_us) as f64 - mean_y;
        sxx += t * t;
        sxy += t * y;
    }
    if used < DRIFT_POINTS_MIN || sxx <= 0.0 {
        return None;
    }
    Some(sxy / sxx * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(local_us: i64, offset_us: i64, delay_us: i64) -> Sample {
        Sample { local_us, offset_us, delay_us }
    }

    #[test]
    fn drift_fit_recovers_an_exact_linear_offset() {
        let mut points = VecDeque::new();
        for k in 0..10i64 {
            // 50 ppm: 50 µs per second.
            points.push_back(sample(k * 1_000_000, 7_000 + k * 50, 100));
        }
        let drift = fit_drift_ppm(&points).unwrap();
        assert!((drift - 50.0).abs() < 1e-6, "{drift}");
    }

    #[test]
    fn drift_fit_ignores_high_delay_points() {
        let mut points = VecDeque::new();
        for k in 0..10i64 {
            let (offset, delay) = if k % 3 == 1 { (5_000, 90_000) } else { (-k * 20, 200) };
            points.push_back(sample(k * 1_000_000, offset, delay));
        }
        let drift = fit_drift_ppm(&points).unwrap();
        assert!((drift + 20.0).abs() < 1e-6, "{drift}");
    }

    #[test]
    fn filter_prefers_the_lowest_delay_sample() {
        let mut peer = PeerState::new(0);
        peer.push(sample(0, 1_000, 10_000), 8_000_000);
        peer.push(sample(1_000_000, 400, 200), 8_000_000);
        peer.push(sample(2_000_000, -3_000, 9_000), 8_000_000);
        let estimate = peer.estimate(2_000_000, 15.0, 200.0).unwrap();
        assert_eq!(estimate.offset_us, 400);
        assert_eq!(estimate.delay_us, 200);
        // δ/2 = 100 plus 200 ppm over 1 s = 200.
        assert_eq!(estimate.error_us, 300);
    }

    #[test]
    fn filter_window_is_bounded() {
        let mut peer = PeerState::new(0);
        for k in 0..100 {
            peer.push(sample(k * 1_000_000, 0, 100), 8_000_000);
        }
        assert_eq!(peer.window_len(), FILTER_SAMPLES_MAX);
        assert!(peer.drift_points_len() <= DRIFT_POINTS_MAX);
    }
}
