//! The chorus clock service, as pure logic with no I/O. Its design, failure
//! cases and measurements are in `docs/design/clock.md`; the NTP specification
//! and the papers named below are listed in that page's "References".
//!
//! chorus never sets the OS clock. It measures it against its peers and keeps
//! the HLC's physical source honest:
//!
//! * **Sampling** ([`ClockService::handle_sample`]): every probe/ack carries
//!   the four NTP timestamps; each exchange yields an offset
//!   θ = ((t2−t1)+(t3−t4))/2 and a round-trip delay δ = (t4−t1)−(t3−t2),
//!   as in NTP's on-wire protocol. A small window per peer keeps the last
//!   [`FILTER_SAMPLES_MAX`] samples and the estimate uses the one with the
//!   smallest error bound δ/2 + φ·age (NTP's clock filter).
//! * **Drift**: the relative frequency error of each peer is a least-squares
//!   fit of offset against local time over low-delay points that span minutes
//!   ([`DRIFT_POINTS_MAX`] points, one per drift epoch).
//! * **Cluster time** ([`ClockService::poll_estimate`]): the peers' intervals
//!   [θ−λ, θ+λ] and our own are combined by Marzullo's interval intersection
//!   (as in NTP's selection algorithm), falling back to the fault-tolerant
//!   average of Lundelius Welch and Lynch when the correct clocks disagree by
//!   more than their error bounds. Either way, with at most f faulty clocks
//!   among 3f+1 the estimate stays inside the correct clocks' range. Clocks
//!   further than `offset_max_ms` from it are flagged as falsetickers.
//! * **Correction** ([`ClockService::corrected_now_us`]): the HLC's physical
//!   time is the OS clock plus a correction slewed toward cluster time at a
//!   bounded rate; the output never goes backwards.
//! * **Safety** ([`ClockService::status`]): a clock further than
//!   `offset_max_ms` from cluster time is unsafe; the status says why.
//!
//! # Call order for the driver (the daemon or the simulator)
//!
//! All times are integer microseconds of the **raw OS clock** (not the
//! corrected clock: slewing would pollute the drift regression).
//!
//! 1. `ClockService::new(config)` once.
//! 2. For every completed probe exchange, `handle_sample(peer, peer_tier,
//!    timestamps, local_now_us)`, where t1/t4 are our OS clock at send and
//!    receive and t2/t3 are the peer's clock at receive and reply.
//! 3. Periodically (every probe round, e.g. once a second) call
//!    `poll_estimate(local_now_us)`: it runs selection, records the
//!    falsetickers and hands the new target to the correction.
//! 4. Whenever the HLC needs physical time, `corrected_now_us(os_now_us)`.
//!    It may be called at any rate; it only slews toward the target set by the
//!    last `poll_estimate`.
//! 5. Before accepting writes or joining, `status(local_now_us)`; refuse when
//!    `safe` is false. A joining node must also require `peers_used > 0`.
//! 6. `peer_report`, `correction_report` and `counters` are read-only views
//!    for metrics; `forget_peer` when membership removes a node.

mod config;
mod correction;
mod peer;
mod select;
mod service;
pub mod sim;

pub use config::{ClockConfig, ConfigError};
pub use correction::{CorrectionReport, SlewedCorrection};
pub use select::{ClockInterval, Selection, SelectionRegime, select_cluster_time};
pub use service::{
    ClockCounters, ClockService, ClockStatus, ClusterTimeEstimate, PeerClockReport, PeerKey, ProbeTimestamps,
    SampleError, SampleOutcome,
};
pub use sim::{ClockScenarioParams, ClockScenarioReport, run_clock_scenario};

/// Highest valid tier. Tiers are 0..=8.
pub const TIER_MAX: u8 = 8;

/// Samples kept per peer for the clock filter (NTP's filter has 8 stages too;
/// see `docs/design/clock.md`, "References").
pub const FILTER_SAMPLES_MAX: usize = 8;

/// Filtered points kept per peer for the drift regression. With the default
/// 8 s epoch this spans about 8.5 minutes.
pub const DRIFT_POINTS_MAX: usize = 64;

/// Fewest low-delay points a drift fit needs before it is trusted; below this
/// the peer's frequency is treated as unknown.
pub const DRIFT_POINTS_MIN: usize = 4;

/// Consecutive samples that must disagree with the prediction by more than
/// the step threshold before a peer's history is discarded as a clock step
/// (as NTP's clock discipline treats spikes: one outlier is popcorn, several
/// are a step; see `docs/design/clock.md`, "References").
pub const STEP_CONFIRM_SAMPLES: u32 = 3;

/// Whether two nodes may exchange clock probes: tiers 0..=8 and adjacent
/// (|a−b| ≤ 1), so a clock hierarchy forms like NTP strata. Out-of-range
/// tiers never talk.
pub fn tiers_may_talk(a: u8, b: u8) -> bool {
    a <= TIER_MAX && b <= TIER_MAX && a.abs_diff(b) <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_tiers_talk_and_distant_ones_do_not() {
        assert!(tiers_may_talk(0, 0));
        assert!(tiers_may_talk(3, 4));
        assert!(tiers_may_talk(8, 7));
        assert!(!tiers_may_talk(0, 2));
        assert!(!tiers_may_talk(8, 6));
        assert!(!tiers_may_talk(9, 9));
        assert!(!tiers_may_talk(8, 9));
    }
}
