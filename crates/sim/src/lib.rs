//! # chorus-sim
//!
//! Runs N copies of the real [`chorus_core::Node`] state machine in one
//! process, in virtual time, over a simulated network with per-link latency,
//! jitter (hence reordering), loss, duplication, partitions that come and
//! go, crashes with restarts from the durable image, and per-node clock
//! skew. Every run is a pure function of its [`SimConfig`] (seed included):
//! a failing run prints the command that replays it.
//!
//! A run has two phases (as in the simulation testers listed in
//! `docs/design/replication.md`, "References"): *chaos* — faults on, client
//! writes arriving — then *heal* — faults off, every node up, no new writes —
//! after which the checkers in [`check`] run.

pub mod check;
mod config;
mod net;
mod world;

pub use config::{SimConfig, SimReport};
pub use world::run;

/// The test-only bugs by their command-line names (`chorus sim --inject-bug`).
#[cfg(feature = "test-knobs")]
pub const BUGS: [(&str, chorus_core::InjectedBug); 5] = [
    ("skip-merge-on-push", chorus_core::InjectedBug::SkipMergeOnPush),
    ("release-sends-before-durable", chorus_core::InjectedBug::ReleaseSendsBeforeDurable),
    ("release-receipts-before-durable", chorus_core::InjectedBug::ReleaseReceiptsBeforeDurable),
    ("forget-own-dots-on-recovery", chorus_core::InjectedBug::ForgetOwnDotsOnRecovery),
    ("accuse-honest-peers", chorus_core::InjectedBug::AccuseHonestPeers),
];

/// The command-line name of a test-only bug.
#[cfg(feature = "test-knobs")]
pub fn bug_name(bug: chorus_core::InjectedBug) -> &'static str {
    BUGS.iter().find(|(_, b)| *b == bug).map(|(n, _)| *n).unwrap_or("unknown")
}

/// The bug a command-line name stands for.
#[cfg(feature = "test-knobs")]
pub fn bug_by_name(name: &str) -> Option<chorus_core::InjectedBug> {
    BUGS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// The clock-service scenario (issue 6): N nodes with true offsets and
/// drifts, asymmetric jittery delays and lying clocks, running the real
/// `chorus-clock` estimator. Lives in `chorus-clock`; re-exported here so
/// every simulation is reachable from one place.
pub mod clock {
    pub use chorus_clock::{ClockScenarioParams, ClockScenarioReport, run_clock_scenario};
}
