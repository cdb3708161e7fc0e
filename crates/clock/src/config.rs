//! Configuration of the clock service.

/// Tunables of one node's clock service. The defaults are explained in
/// `docs/design/clock.md`; where NTP has the same constant, they follow it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClockConfig {
    /// Our tier (0..=8). Samples from peers whose tier is not adjacent are
    /// rejected (see [`crate::tiers_may_talk`]).
    pub tier: u8,
    /// A clock further than this from cluster time is unsafe (see
    /// `docs/design/clock.md`, "Safety").
    pub offset_max_ms: u64,
    /// Frequency error (ppm) beyond which a drift alarm is raised. The
    /// default 0.28 ppm is about 1 ms per hour. An alarm only: drift is
    /// measured and compensated, it does not break correctness.
    pub drift_tolerance_ppm: f64,
    /// Largest rate at which the correction may move, in ppm of elapsed OS
    /// time (500 ppm matches the NTP kernel discipline limit).
    pub slew_rate_max_ppm: u32,
    /// Residual frequency error (ppm) assumed after drift compensation; the
    /// error bound of a sample grows at this rate with its age (NTP's
    /// frequency tolerance PHI is 15 ppm; see `docs/design/clock.md`,
    /// "References").
    pub frequency_error_max_ppm: f64,
    /// Largest relative frequency error (ppm) two working clocks can have;
    /// used for the error bound while a peer's drift is not yet estimated.
    /// Two crystals of ±100 ppm give 200.
    pub uncompensated_drift_max_ppm: f64,
    /// Error bound (µs) of our own clock's interval in the selection; 0 makes
    /// our interval the point [0, 0].
    pub local_error_us: u64,
    /// Samples with a larger round-trip delay are rejected: their error
    /// bound δ/2 would be useless.
    pub delay_max_us: u64,
    /// A peer whose newest sample is older than this (local time) is left
    /// out of the cluster-time selection.
    pub peer_stale_after_ms: u64,
    /// Most peers tracked at once; samples from further peers are rejected.
    pub peers_max: usize,
    /// Length of a drift epoch: the lowest-delay sample of each epoch becomes
    /// one point of the drift regression.
    pub drift_epoch_ms: u64,
    /// A sample further than this from the predicted offset is held as a
    /// possible spike; [`crate::STEP_CONFIRM_SAMPLES`] in a row reset the
    /// peer (NTP's step threshold STEPT is 125 ms in its specification and
    /// 128 ms in the reference implementation; see `docs/design/clock.md`,
    /// "References").
    pub step_threshold_ms: u64,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            tier: 0,
            offset_max_ms: 500,
            drift_tolerance_ppm: 0.28,
            slew_rate_max_ppm: 500,
            frequency_error_max_ppm: 15.0,
            uncompensated_drift_max_ppm: 200.0,
            local_error_us: 0,
            delay_max_us: 2_000_000,
            peer_stale_after_ms: 60_000,
            peers_max: 256,
            drift_epoch_ms: 8_000,
            step_threshold_ms: 128,
        }
    }
}

/// Why a [`ClockConfig`] was refused by [`crate::ClockService::new`]. No
/// service is created on error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The tier is above [`crate::TIER_MAX`].
    #[error("tier {tier} is above the maximum tier {max}")]
    TierOutOfRange { tier: u8, max: u8 },
    /// A rate or tolerance is negative, zero where it must be positive, or
    /// not finite.
    #[error("config field {field} has invalid value {value}")]
    InvalidValue { field: &'static str, value: f64 },
}

impl ClockConfig {
    /// Checks every field; [`crate::ClockService::new`] calls this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tier > crate::TIER_MAX {
            return Err(ConfigError::TierOutOfRange { tier: self.tier, max: crate::TIER_MAX });
        }
        let positive_floats = [
            ("drift_tolerance_ppm", self.drift_tolerance_ppm),
            ("frequency_error_max_ppm", self.frequency_error_max_ppm),
            ("uncompensated_drift_max_ppm", self.uncompensated_drift_max_ppm),
        ];
        for (field, value) in positive_floats {
            if !value.is_finite() || value <= 0.0 || value > 1_000_000.0 {
                return Err(ConfigError::InvalidValue { field, value });
            }
        }
        let positive_ints = [
            ("max_offset_ms", self.offset_max_ms),
            ("slew_rate_max_ppm", u64::from(self.slew_rate_max_ppm)),
            ("delay_max_us", self.delay_max_us),
            ("peer_stale_after_ms", self.peer_stale_after_ms),
            ("peers_max", self.peers_max as u64),
            ("drift_epoch_ms", self.drift_epoch_ms),
            ("step_threshold_ms", self.step_threshold_ms),
        ];
        for (field, value) in positive_ints {
            // One hour (in the field's unit) is far beyond any sane setting
            // and keeps every later multiplication inside i64.
            if value == 0 || value > 3_600_000_000 {
                return Err(ConfigError::InvalidValue { field, value: value as f64 });
            }
        }
        if self.slew_rate_max_ppm > 1_000_000 {
            return Err(ConfigError::InvalidValue {
                field: "slew_rate_max_ppm",
                value: f64::from(self.slew_rate_max_ppm),
            });
        }
        if self.local_error_us > 3_600_000_000 {
            return Err(ConfigError::InvalidValue { field: "local_error_us", value: self.local_error_us as f64 });
        }
        Ok(())
    }

    pub(crate) fn offset_max_us(&self) -> i64 {
        (self.offset_max_ms as i64).saturating_mul(1000)
    }
}
