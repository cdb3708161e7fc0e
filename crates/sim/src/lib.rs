//! # chorus-sim
//!
//! Runs N copies of the real [`chorus_core::Node`] state machine in one
//! process, in virtual time, over a simulated network with per-link latency,
//! jitter (hence reordering), loss, duplication, partitions that come and
//! go, crashes with restarts from the durable image, and per-node clock
//! skew. Every run is a pure function of its [`SimConfig`] (seed included):
//! a failing run prints the command that replays it.
//!
//! A run has two phases (openraft's turmoil tests, TigerBeetle's VOPR):
//! *chaos* — faults on, client writes arriving — then *heal* — faults off,
//! every node up, no new writes — after which the checkers in [`check`] run.

pub mod check;
mod net;
mod world;

pub use world::{SimConfig, SimReport, run};

/// The clock-service scenario (issue 6): N nodes with true offsets and
/// drifts, asymmetric jittery delays and lying clocks, running the real
/// `chorus-clock` estimator. Lives in `chorus-clock`; re-exported here so
/// every simulation is reachable from one place.
pub mod clock {
    pub use chorus_clock::{ClockScenarioParams, ClockScenarioReport, run_clock_scenario};
}
