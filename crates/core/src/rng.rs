//! Deterministic pseudo-random numbers handed to the core by its driver.
//!
//! The core never touches a global RNG: the caller injects all entropy
//! (`docs/ARCHITECTURE.md`, "Architecture invariants"). The daemon seeds this
//! from the OS, the simulator from its run seed, so every simulated run
//! replays bit for bit.

/// SplitMix64 (see `docs/design/replication.md`, "References"). Small, fast,
/// and good enough for peer selection and fault schedules; not for
/// cryptography.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound`; `bound == 0` yields 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        // Lemire's multiply-shift; the tiny bias is irrelevant here.
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// A float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Up to `k` distinct elements of `items`, in random order (partial
    /// Fisher–Yates on a copy).
    pub fn choose_distinct<T: Clone>(&mut self, items: &[T], k: usize) -> Vec<T> {
        let mut pool: Vec<T> = items.to_vec();
        let take = k.min(pool.len());
        for i in 0..take {
            let j = i + self.below((pool.len() - i) as u64) as usize;
            pool.swap(i, j);
        }
        pool.truncate(take);
        pool
    }

    /// Up to `k` distinct elements of `items` that `allowed` accepts, by
    /// rejection sampling: O(k) expected when k is small relative to the
    /// accepted items (gossip fanout among thousands of peers), falling
    /// back to a filtered partial shuffle when rejections pile up.
    pub fn sample_where<T: Copy + PartialEq>(&mut self, items: &[T], k: usize, allowed: impl Fn(&T) -> bool) -> Vec<T> {
        let mut out: Vec<T> = Vec::with_capacity(k);
        if items.is_empty() || k == 0 {
            return out;
        }
        let mut attempts = 0usize;
        let attempts_max = 4 * k + 16;
        while out.len() < k && attempts < attempts_max {
            attempts += 1;
            let candidate = items[self.below(items.len() as u64) as usize];
            if allowed(&candidate) && !out.contains(&candidate) {
                out.push(candidate);
            }
        }
        if out.len() < k {
            let rest: Vec<T> = items.iter().copied().filter(|x| allowed(x) && !out.contains(x)).collect();
            let more = self.choose_distinct(&rest, k - out.len());
            out.extend(more);
        }
        out
    }

    /// A fresh generator whose stream is independent of this one's.
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64() ^ 0xD1B5_4A32_D192_ED03)
    }
}
