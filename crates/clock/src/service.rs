//! [`ClockService`]: the sans-IO clock service of one node.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{ClockConfig, ConfigError};
use crate::correction::{CorrectionReport, SlewedCorrection};
use crate::peer::{PeerState, Sample};
use crate::select::{ClockInterval, SelectionRegime, select_cluster_time};
use crate::{STEP_CONFIRM_SAMPLES, tiers_may_talk};

/// Identity of a peer as the daemon knows it (e.g. its node id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerKey(pub u64);

/// The four timestamps of one probe exchange (as in NTP's on-wire protocol),
/// µs.
///
/// `t1_us`/`t4_us` are our OS clock when the probe left and the ack arrived;
/// `t2_us`/`t3_us` are the peer's OS clock when the probe arrived and the
/// ack left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTimestamps {
    pub t1_us: u64,
    pub t2_us: u64,
    pub t3_us: u64,
    pub t4_us: u64,
}

/// What [`ClockService::handle_sample`] did with an accepted sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SampleOutcome {
    /// Added to the peer's filter window.
    Accepted,
    /// Further than `step_threshold_ms` from the prediction: held back as a
    /// possible spike (the `consecutive`-th in a row); state unchanged apart
    /// from the spike counter.
    HeldAsSpike { consecutive: u32 },
    /// [`STEP_CONFIRM_SAMPLES`] spikes in a row: the peer's clock stepped;
    /// its history was discarded and restarted from this sample.
    PeerHistoryReset,
}

/// Why [`ClockService::handle_sample`] rejected a sample. On every variant
/// the only state change is the matching rejection counter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SampleError {
    /// The peer's tier is not adjacent to ours (or is above [`crate::TIER_MAX`]).
    #[error("peer tier {peer_tier} may not exchange clock samples with local tier {local_tier}")]
    TierNotAllowed { local_tier: u8, peer_tier: u8 },
    /// A timestamp does not fit in i64 microseconds.
    #[error("timestamp {value_us} µs is out of range")]
    TimestampOutOfRange { value_us: u64 },
    /// t4 < t1: our own clock went backwards during the exchange.
    #[error("ack received at {t4_us} µs before the probe was sent at {t1_us} µs")]
    ReplyBeforeRequest { t1_us: u64, t4_us: u64 },
    /// t3 < t2: the peer claims to have replied before receiving.
    #[error("peer replied at {t3_us} µs before receiving at {t2_us} µs")]
    PeerRepliedBeforeReceiving { t2_us: u64, t3_us: u64 },
    /// δ < 0: the peer's processing time exceeds our round trip.
    #[error("round-trip delay {delay_us} µs is negative")]
    NegativeDelay { delay_us: i64 },
    /// δ > `delay_max_us`: the error bound would be useless.
    #[error("round-trip delay {delay_us} µs exceeds the maximum {delay_max_us} µs")]
    DelayTooLarge { delay_us: i64, delay_max_us: u64 },
    /// t4 is later than `local_now_us`: the OS clock stepped back since.
    #[error("ack time {t4_us} µs is after local now {local_now_us} µs")]
    ReceivedAfterNow { t4_us: u64, local_now_us: u64 },
    /// Tracking another peer would exceed `peers_max`.
    #[error("already tracking the maximum of {peers_max} peers")]
    PeerLimitReached { peers_max: usize },
}

/// Counters for metrics. Monotone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockCounters {
    pub samples_accepted: u64,
    pub samples_rejected_tier: u64,
    pub samples_rejected_invalid: u64,
    pub samples_rejected_peer_limit: u64,
    pub samples_held_as_spike: u64,
    pub peer_history_resets: u64,
}

/// Result of one cluster-time selection.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterTimeEstimate {
    /// Estimated (cluster time − local OS clock), µs.
    pub offset_us: i64,
    /// Half-width of the region the estimate was confined to, µs.
    pub error_us: u64,
    pub low_us: i64,
    pub high_us: i64,
    pub regime: SelectionRegime,
    /// Clocks that took part, including our own.
    pub clocks_considered: usize,
    /// ⌊(clocks_considered − 1)/3⌋.
    pub faults_tolerated: usize,
    /// Peers flagged as falsetickers (further than `offset_max_ms` from
    /// cluster time), ascending.
    pub falsetickers: Vec<PeerKey>,
    /// Peers left out of the combine step (superset of `falsetickers`):
    /// their intervals miss the intersection region.
    pub excluded: Vec<PeerKey>,
    /// Our own clock is further than `offset_max_ms` from cluster time.
    pub local_clock_falseticker: bool,
    /// Our own interval missed the intersection region.
    pub local_clock_excluded: bool,
    /// Our frequency error relative to the cluster, ppm: minus the median of
    /// the truechimers' relative drifts and our own zero. `None` until some
    /// peer's drift is known.
    pub drift_ppm: Option<f64>,
    /// `|drift_ppm| > drift_tolerance_ppm`.
    pub drift_alarm: bool,
    pub computed_at_local_us: u64,
}

/// Whether this node's clock is fit for writes and joins (see
/// `docs/design/clock.md`, "Safety").
#[derive(Clone, Debug, PartialEq)]
pub struct ClockStatus {
    pub safe: bool,
    /// Measured (cluster time − local OS clock), µs.
    pub offset_us: i64,
    /// (cluster time − corrected clock), µs: what the HLC still lags by.
    pub corrected_offset_us: i64,
    pub offset_max_us: u64,
    /// Peers whose samples contributed.
    pub peers_used: usize,
    pub drift_alarm: bool,
    /// Human-readable explanation, naming the measured offset when unsafe.
    pub reason: String,
}

/// Metrics view of one peer.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerClockReport {
    pub peer: PeerKey,
    pub tier: u8,
    /// Estimated (peer clock − our OS clock) now, µs.
    pub offset_us: i64,
    /// Same, predicted 60 s ahead with the drift estimate.
    pub offset_predicted_60s_us: i64,
    /// Round-trip delay of the sample the estimate is based on, µs.
    pub delay_us: i64,
    /// Error bound λ of `offset_us`, µs.
    pub error_bound_us: u64,
    /// Peer frequency relative to ours, ppm.
    pub drift_ppm: Option<f64>,
    pub drift_exceeds_tolerance: bool,
    /// Flagged a falseticker by the last `poll_estimate`.
    pub falseticker: bool,
    /// Left out of the last combine step.
    pub excluded: bool,
    /// No sample within `peer_stale_after_ms`; left out of selection.
    pub stale: bool,
    pub samples_in_window: usize,
    /// Points in the drift regression (one per drift epoch).
    pub drift_points: usize,
    pub sample_age_us: i64,
}

/// The clock service of one node. See the crate docs for the call order.
#[derive(Clone, Debug)]
pub struct ClockService {
    config: ClockConfig,
    peers: BTreeMap<PeerKey, PeerState>,
    correction: SlewedCorrection,
    counters: ClockCounters,
    falsetickers: BTreeSet<PeerKey>,
    excluded: BTreeSet<PeerKey>,
    last_estimate: Option<ClusterTimeEstimate>,
}

impl ClockService {
    pub fn new(config: ClockConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(ClockService {
            correction: SlewedCorrection::new(config.slew_rate_max_ppm),
            config,
            peers: BTreeMap::new(),
            counters: ClockCounters::default(),
            falsetickers: BTreeSet::new(),
            excluded: BTreeSet::new(),
            last_estimate: None,
        })
    }

    pub fn config(&self) -> &ClockConfig {
        &self.config
    }

    /// Feeds one completed probe exchange with `peer`.
    pub fn handle_sample(
        &mut self,
        peer: PeerKey,
        peer_tier: u8,
        timestamps: ProbeTimestamps,
        local_now_us: u64,
    ) -> Result<SampleOutcome, SampleError> {
        if !tiers_may_talk(self.config.tier, peer_tier) {
            self.counters.samples_rejected_tier += 1;
            return Err(SampleError::TierNotAllowed { local_tier: self.config.tier, peer_tier });
        }
        let sample = match self.validate(timestamps, local_now_us) {
            Ok(sample) => sample,
            Err(error) => {
                self.counters.samples_rejected_invalid += 1;
                return Err(error);
            }
        };
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.config.peers_max {
            self.counters.samples_rejected_peer_limit += 1;
            return Err(SampleError::PeerLimitReached { peers_max: self.config.peers_max });
        }
        let drift_epoch_us = (self.config.drift_epoch_ms as i64).saturating_mul(1000);
        let step_threshold_us = (self.config.step_threshold_ms as i64).saturating_mul(1000);
        let (frequency, uncompensated) = (self.config.frequency_error_max_ppm, self.config.uncompensated_drift_max_ppm);
        let state = self.peers.entry(peer).or_insert_with(|| PeerState::new(peer_tier));
        state.tier = peer_tier;
        if let Some(predicted) = state.estimate(sample.local_us, frequency, uncompensated) {
            let deviation = sample.offset_us.saturating_sub(predicted.offset_us).saturating_abs();
            let allowed =
                step_threshold_us.saturating_add(sample.delay_us / 2).saturating_add(predicted.error_us as i64);
            if deviation > allowed {
                state.consecutive_spikes += 1;
                if state.consecutive_spikes < STEP_CONFIRM_SAMPLES {
                    self.counters.samples_held_as_spike += 1;
                    return Ok(SampleOutcome::HeldAsSpike { consecutive: state.consecutive_spikes });
                }
                *state = PeerState::new(peer_tier);
                state.push(sample, drift_epoch_us);
                self.counters.peer_history_resets += 1;
                self.counters.samples_accepted += 1;
                return Ok(SampleOutcome::PeerHistoryReset);
            }
        }
        state.consecutive_spikes = 0;
        state.push(sample, drift_epoch_us);
        self.counters.samples_accepted += 1;
        Ok(SampleOutcome::Accepted)
    }

    fn validate(&self, ts: ProbeTimestamps, local_now_us: u64) -> Result<Sample, SampleError> {
        let as_i64 = |value_us: u64| i64::try_from(value_us).map_err(|_| SampleError::TimestampOutOfRange { value_us });
        let (t1, t2, t3, t4) = (as_i64(ts.t1_us)?, as_i64(ts.t2_us)?, as_i64(ts.t3_us)?, as_i64(ts.t4_us)?);
        if t4 < t1 {
            return Err(SampleError::ReplyBeforeRequest { t1_us: ts.t1_us, t4_us: ts.t4_us });
        }
        if t3 < t2 {
            return Err(SampleError::PeerRepliedBeforeReceiving { t2_us: ts.t2_us, t3_us: ts.t3_us });
        }
        if ts.t4_us > local_now_us {
            return Err(SampleError::ReceivedAfterNow { t4_us: ts.t4_us, local_now_us });
        }
        // Differences of same-clock readings cannot overflow (both ≥ 0);
        // cross-clock differences use i128.
        let delay_us = (t4 - t1) - (t3 - t2);
        if delay_us < 0 {
            return Err(SampleError::NegativeDelay { delay_us });
        }
        if delay_us as u64 > self.config.delay_max_us {
            return Err(SampleError::DelayTooLarge { delay_us, delay_max_us: self.config.delay_max_us });
        }
        let offset = ((i128::from(t2) - i128::from(t1)) + (i128::from(t3) - i128::from(t4))) / 2;
        let offset_us = i64::try_from(offset).map_err(|_| SampleError::TimestampOutOfRange { value_us: ts.t2_us })?;
        Ok(Sample { local_us: t1 + (t4 - t1) / 2, offset_us, delay_us })
    }

    /// Drops a peer's state (membership removed it).
    pub fn forget_peer(&mut self, peer: PeerKey) {
        self.peers.remove(&peer);
        self.falsetickers.remove(&peer);
        self.excluded.remove(&peer);
    }

    /// Runs cluster-time selection at `local_now_us`, records the
    /// falsetickers and hands the estimate to the correction as its target.
    pub fn poll_estimate(&mut self, local_now_us: u64) -> ClusterTimeEstimate {
        let estimate = self.compute_estimate(local_now_us);
        self.falsetickers = estimate.falsetickers.iter().copied().collect();
        self.excluded = estimate.excluded.iter().copied().collect();
        self.correction.set_target_us(estimate.offset_us);
        self.last_estimate = Some(estimate.clone());
        estimate
    }

    /// The last estimate from [`ClockService::poll_estimate`].
    pub fn last_estimate(&self) -> Option<&ClusterTimeEstimate> {
        self.last_estimate.as_ref()
    }

    fn local_i64(local_now_us: u64) -> i64 {
        i64::try_from(local_now_us).unwrap_or(i64::MAX)
    }

    fn is_stale(&self, state: &PeerState, local_now: i64) -> bool {
        let stale_us = (self.config.peer_stale_after_ms as i64).saturating_mul(1000);
        local_now.saturating_sub(state.last_local_us) > stale_us
    }

    fn compute_estimate(&self, local_now_us: u64) -> ClusterTimeEstimate {
        let now = Self::local_i64(local_now_us);
        let mut keys = Vec::with_capacity(self.peers.len());
        let mut intervals = vec![ClockInterval { offset_us: 0, error_us: self.config.local_error_us }];
        let mut drifts = Vec::with_capacity(self.peers.len());
        for (&key, state) in &self.peers {
            if self.is_stale(state, now) || !tiers_may_talk(self.config.tier, state.tier) {
                continue;
            }
            let Some(estimate) =
                state.estimate(now, self.config.frequency_error_max_ppm, self.config.uncompensated_drift_max_ppm)
            else {
                continue;
            };
            keys.push(key);
            drifts.push(state.drift_ppm);
            intervals.push(ClockInterval { offset_us: estimate.offset_us, error_us: estimate.error_us });
        }
        let selection = select_cluster_time(&intervals, self.config.offset_max_us())
            .unwrap_or_else(|| unreachable!("the local interval is always present"));
        let pick = |flags: &[bool]| -> Vec<PeerKey> {
            keys.iter().zip(flags).filter(|&(_, &flag)| flag).map(|(&key, _)| key).collect()
        };
        let falsetickers = pick(&selection.falseticker[1..]);
        let excluded = pick(&selection.excluded[1..]);
        let mut truechimer_drifts: Vec<f64> = drifts
            .iter()
            .zip(&selection.excluded[1..])
            .filter_map(|(drift, &is_false)| if is_false { None } else { *drift })
            .collect();
        let drift_ppm = if truechimer_drifts.is_empty() {
            None
        } else {
            truechimer_drifts.push(0.0);
            truechimer_drifts.sort_by(f64::total_cmp);
            let len = truechimer_drifts.len();
            let median = if len % 2 == 1 {
                truechimer_drifts[len / 2]
            } else {
                (truechimer_drifts[len / 2 - 1] + truechimer_drifts[len / 2]) / 2.0
            };
            Some(-median)
        };
        let error_us = selection
            .offset_us
            .saturating_sub(selection.low_us)
            .max(selection.high_us.saturating_sub(selection.offset_us))
            .max(0) as u64;
        ClusterTimeEstimate {
            offset_us: selection.offset_us,
            error_us,
            low_us: selection.low_us,
            high_us: selection.high_us,
            regime: selection.regime,
            clocks_considered: intervals.len(),
            faults_tolerated: selection.faults_tolerated,
            falsetickers,
            excluded,
            local_clock_falseticker: selection.falseticker[0],
            local_clock_excluded: selection.excluded[0],
            drift_alarm: drift_ppm.is_some_and(|d: f64| d.abs() > self.config.drift_tolerance_ppm),
            drift_ppm,
            computed_at_local_us: local_now_us,
        }
    }

    /// Physical time for the HLC: OS clock plus the slewed correction.
    /// Monotone across calls even when `os_now_us` steps back.
    pub fn corrected_now_us(&mut self, os_now_us: u64) -> u64 {
        self.correction.corrected_now_us(os_now_us)
    }

    /// Restores the corrected clock's floor after a restart (the HLC's
    /// persisted high-water mark), keeping the output monotone.
    pub fn set_corrected_floor_us(&mut self, floor_us: u64) {
        self.correction.set_output_floor_us(floor_us);
    }

    /// Whether the local clock is safe, from a fresh selection at
    /// `local_now_us` (does not change state).
    pub fn status(&self, local_now_us: u64) -> ClockStatus {
        let estimate = self.compute_estimate(local_now_us);
        let offset_max_us = self.config.offset_max_us();
        let correction = self.correction.report();
        let peers_used = estimate.clocks_considered - 1;
        let corrected_offset_us = estimate.offset_us.saturating_sub(correction.correction_us);
        let offset_ms = estimate.offset_us as f64 / 1000.0;
        let (safe, reason) = if peers_used == 0 {
            (true, "no fresh peer clock samples; the local clock is unchecked".to_string())
        } else if estimate.offset_us.saturating_abs() > offset_max_us {
            (
                false,
                format!(
                    "local clock is {offset_ms:.3} ms ({} µs) from cluster time, beyond max_offset_ms = {}; \
                     fix the OS clock (NTP/chrony) — writes and joins are refused",
                    estimate.offset_us, self.config.offset_max_ms
                ),
            )
        } else {
            (
                true,
                format!(
                    "local clock is {offset_ms:.3} ms from cluster time (limit {} ms, {} peers, {} falsetickers)",
                    self.config.offset_max_ms,
                    peers_used,
                    estimate.falsetickers.len()
                ),
            )
        };
        ClockStatus {
            safe,
            offset_us: estimate.offset_us,
            corrected_offset_us,
            offset_max_us: offset_max_us as u64,
            peers_used,
            drift_alarm: estimate.drift_alarm,
            reason,
        }
    }

    /// Per-peer metrics at `local_now_us`, ascending by peer. The falseticker
    /// flag is from the last [`ClockService::poll_estimate`].
    pub fn peer_report(&self, local_now_us: u64) -> Vec<PeerClockReport> {
        let now = Self::local_i64(local_now_us);
        self.peers
            .iter()
            .filter_map(|(&peer, state)| {
                let estimate = state.estimate(
                    now,
                    self.config.frequency_error_max_ppm,
                    self.config.uncompensated_drift_max_ppm,
                )?;
                let drift = state.drift_ppm.unwrap_or(0.0);
                Some(PeerClockReport {
                    peer,
                    tier: state.tier,
                    offset_us: estimate.offset_us,
                    offset_predicted_60s_us: estimate.offset_us.saturating_add((drift * 60.0).round() as i64),
                    delay_us: estimate.delay_us,
                    error_bound_us: estimate.error_us,
                    drift_ppm: state.drift_ppm,
                    drift_exceeds_tolerance: state.drift_ppm.is_some_and(|d| d.abs() > self.config.drift_tolerance_ppm),
                    falseticker: self.falsetickers.contains(&peer),
                    excluded: self.excluded.contains(&peer),
                    stale: self.is_stale(state, now),
                    samples_in_window: state.window_len(),
                    drift_points: state.drift_points_len(),
                    sample_age_us: estimate.sample_age_us,
                })
            })
            .collect()
    }

    pub fn correction_report(&self) -> CorrectionReport {
        self.correction.report()
    }

    pub fn counters(&self) -> ClockCounters {
        self.counters
    }
}
