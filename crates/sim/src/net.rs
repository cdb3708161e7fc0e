//! The simulated network: latency per link, jitter, loss, duplication,
//! partitions. Pure functions of the seed and virtual time.

use chorus_core::Rng;

/// Faults in force on the network.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub loss: f64,
    pub duplicate: f64,
    /// Node index → side of the current partition (`None`: no partition).
    pub partition: Option<Vec<u8>>,
}

impl Faults {
    pub fn connected(&self, a: usize, b: usize) -> bool {
        match &self.partition {
            Some(side) => side.get(a) == side.get(b),
            None => true,
        }
    }
}

/// Per-link base latency, derived from the seed so it needs no table
/// (a 2,000-node cluster has four million links).
pub fn base_latency_us(seed: u64, a: usize, b: usize, min_us: u64, max_us: u64) -> u64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let mut r = Rng::new(seed ^ ((lo as u64) << 32) ^ (hi as u64).wrapping_mul(0x9E37_79B9));
    min_us + r.below(max_us.saturating_sub(min_us) + 1)
}
