//! Seeded fault schedules: a pure function of (seed, nodes, bounds, what
//! the network allows), so a printed seed replays the same faults.
//!
//! Faults run one after another: apply, hold, undo, gap. Each step is short
//! (≤ [`HOLD_MS_MAX`]) and a run has at most `faults_max` steps, so a run's
//! fault phase is bounded in time.

use crate::rng::Rng;
use serde::Serialize;

/// Longest a fault is held.
pub const HOLD_MS_MAX: u64 = 1_500;
/// Shortest a fault is held.
pub const HOLD_MS_MIN: u64 = 400;
/// Pause between two faults.
pub const GAP_MS_MAX: u64 = 500;
/// Clock offsets stay within ± this, so two nodes differ by at most 400 ms,
/// inside the daemon's default `max_offset_ms` = 500 (beyond it a node
/// refuses writes and remote timestamps): we test skew, not refusal.
pub const CLOCK_OFFSET_MS_MAX: i64 = 200;

/// One fault. Node indices are 0-based.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    /// Two halves that cannot talk.
    PartitionHalves { a: Vec<usize>, b: Vec<usize> },
    /// One node cut from all others.
    Isolate { node: usize },
    /// Sides `a` and `b` cannot talk; `bridge` talks to both.
    Bridge { a: Vec<usize>, b: Vec<usize>, bridge: usize },
    /// Packets from `from` never reach `to`.
    OneWay { from: usize, to: usize },
    /// `ip link set down` on the node's veth (clients lose it too).
    LinkDown { node: usize },
    /// `pct` % of peer packets into `node` dropped at random.
    RandomLoss { node: usize, pct: u8 },
    /// `pct` % of `node`'s peer packets duplicated.
    Duplicate { node: usize, pct: u8 },
    /// netem delay/jitter/loss/duplication/reordering (or tbf rate limit).
    DegradeLink { node: usize, delay_ms: u32, jitter_ms: u32, loss_pct: u8, dup_pct: u8, reorder_pct: u8 },
    /// `kill -9`, then restart after the hold with a new clock offset.
    Kill { node: usize, restart_offset_ms: i64 },
    /// SIGSTOP, SIGCONT after the hold.
    Pause { node: usize },
}

impl Fault {
    /// Whether it needs the namespaces network (nft/ip/tc).
    pub fn needs_network(&self) -> bool {
        !matches!(self, Fault::Kill { .. } | Fault::Pause { .. })
    }
}

/// One step of a schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    pub fault: Fault,
    pub hold_ms: u64,
    pub gap_ms: u64,
}

/// A run's schedule: the clock offset each node starts with, then steps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Schedule {
    pub initial_offsets_ms: Vec<i64>,
    pub steps: Vec<Step>,
}

impl Schedule {
    /// Total time of the fault phase.
    pub fn duration_ms(&self) -> u64 {
        self.steps.iter().map(|s| s.hold_ms + s.gap_ms).sum()
    }
}

/// The schedule for `seed`. `network` = link faults are possible.
pub fn generate(seed: u64, nodes: usize, faults_max: usize, network: bool) -> Schedule {
    let mut rng = Rng::new(seed).fork(0x5c4e_d01e);
    let initial_offsets_ms = (0..nodes)
        .map(|_| if rng.chance(40) { rng.range_i64(-CLOCK_OFFSET_MS_MAX, CLOCK_OFFSET_MS_MAX) } else { 0 })
        .collect();
    let count = if faults_max == 0 { 0 } else { rng.range(1.min(faults_max as u64), faults_max as u64) as usize };
    let mut steps = Vec::with_capacity(count);
    for _ in 0..count {
        let node = rng.below(nodes as u64) as usize;
        let kinds: u64 = if network && nodes >= 2 { 10 } else { 2 };
        let fault = match rng.below(kinds) {
            0 => Fault::Kill { node, restart_offset_ms: rng.range_i64(-CLOCK_OFFSET_MS_MAX, CLOCK_OFFSET_MS_MAX) },
            1 => Fault::Pause { node },
            2 => {
                let order = rng.sample(nodes, nodes);
                let cut = nodes / 2;
                Fault::PartitionHalves { a: order[..cut].to_vec(), b: order[cut..].to_vec() }
            }
            3 => Fault::Isolate { node },
            4 if nodes >= 3 => {
                let order = rng.sample(nodes, nodes);
                let rest = &order[1..];
                let cut = rest.len() / 2;
                Fault::Bridge { a: rest[..cut].to_vec(), b: rest[cut..].to_vec(), bridge: order[0] }
            }
            5 => {
                let pair = rng.sample(nodes, 2);
                Fault::OneWay { from: pair[0], to: pair[1] }
            }
            6 => Fault::LinkDown { node },
            7 => Fault::RandomLoss { node, pct: rng.range(10, 60) as u8 },
            8 => Fault::Duplicate { node, pct: rng.range(10, 50) as u8 },
            _ => Fault::DegradeLink {
                node,
                delay_ms: rng.range(5, 80) as u32,
                jitter_ms: rng.range(0, 40) as u32,
                loss_pct: rng.range(0, 20) as u8,
                dup_pct: rng.range(0, 10) as u8,
                reorder_pct: rng.range(0, 25) as u8,
            },
        };
        steps.push(Step { fault, hold_ms: rng.range(HOLD_MS_MIN, HOLD_MS_MAX), gap_ms: rng.range(100, GAP_MS_MAX) });
    }
    Schedule { initial_offsets_ms, steps }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_gives_the_same_bounded_schedule() {
        for seed in 0..200 {
            let s = generate(seed, 5, 4, true);
            assert_eq!(s, generate(seed, 5, 4, true));
            assert!(!s.steps.is_empty() && s.steps.len() <= 4);
            assert!(s.duration_ms() <= 4 * (HOLD_MS_MAX + GAP_MS_MAX));
            assert!(s.initial_offsets_ms.iter().all(|o| o.abs() <= CLOCK_OFFSET_MS_MAX));
        }
    }

    #[test]
    fn without_a_network_only_process_faults_are_scheduled() {
        for seed in 0..200 {
            assert!(generate(seed, 5, 4, false).steps.iter().all(|s| !s.fault.needs_network()));
        }
    }
}
