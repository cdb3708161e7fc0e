//! A tiny seeded generator (SplitMix64; see `docs/design/fault-injection.md`,
//! "References") so every schedule and every client's choices are a pure
//! function of the run's seed: the printed seed replays the same faults and
//! the same ops.

/// The core's SplitMix64 generator with the helpers schedules need. `fork`
/// derives a stream from the seed this generator was made with, so forks
/// taken right after `new` (the only use) are independent of draw order.
#[derive(Clone, Debug)]
pub struct Rng {
    seed: u64,
    inner: chorus_core::Rng,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { seed, inner: chorus_core::Rng::new(seed) }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// Uniform in `0..n` (`0` when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.inner.below(n)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// Uniform in `lo..=hi` for signed bounds.
    pub fn range_i64(&mut self, lo: i64, hi: i64) -> i64 {
        let span = hi.saturating_sub(lo).max(0) as u64;
        lo + self.below(span + 1) as i64
    }

    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    /// An independent stream for sub-task `stream` (a worker, the schedule).
    pub fn fork(&self, stream: u64) -> Rng {
        let mut r = Rng::new(self.seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        r.next_u64();
        r
    }

    /// `n` distinct indices out of `0..len`, in random order.
    pub fn sample(&mut self, len: usize, n: usize) -> Vec<usize> {
        let all: Vec<usize> = (0..len).collect();
        self.inner.choose_distinct(&all, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_stream_and_forks_differ() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        assert_eq!(
            (0..10).map(|_| a.next_u64()).collect::<Vec<_>>(),
            (0..10).map(|_| b.next_u64()).collect::<Vec<_>>()
        );
        assert_ne!(a.fork(1).next_u64(), a.fork(2).next_u64());
        let s = Rng::new(3).sample(5, 3);
        assert_eq!(s.len(), 3);
        assert!(s.iter().all(|&i| i < 5));
    }
}
