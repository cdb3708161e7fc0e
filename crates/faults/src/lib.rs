//! Fault injection against real `chorus agent` processes (issue 7).
//!
//! Each run builds its own network namespaces and veth links (or falls back
//! to loopback without root), starts one agent per node, drives client
//! workers while a seeded schedule injects partitions, link faults, crashes,
//! pauses and clock skew, heals, waits for quiescence and checks the history
//! against the final state. See docs/design/fault-injection.md.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod net;
pub mod rng;
pub mod run;
pub mod schedule;
pub mod strong;
pub mod strong_checker;
pub mod watch_checker;
pub mod workers;
