//! The anti-entropy benchmark: `chorus-reconcile` against the `negentropy`
//! crate and a naive full-state transfer, on the same sets (method and
//! results: `docs/design/anti-entropy.md`, "7. Measured numbers").
//!
//! This is a benchmark harness, not protocol logic: it reads the monotonic
//! clock to report CPU time and uses its own seeded generator. It lives in
//! the binary, not in `chorus-reconcile`, so the protocol crate keeps no I/O
//! and does not depend on negentropy (docs/ARCHITECTURE.md, "Architecture
//! invariants").

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use chorus_reconcile::{Digest, ItemIndex, Key, Message, Reconciler};
use negentropy::{Id, Negentropy, NegentropyStorageVector};

/// Bytes of the value of each benchmark entry.
const VALUE_BYTES: usize = 80;

/// Result of [`bench_compare`]. `chorus bench anti-entropy` turns it into
/// its JSON rows (`super::Row`), whose field names are the stable interface.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    /// Items per side before the differences were applied.
    pub n: u64,
    /// Differing keys.
    pub d: u64,
    /// Reconciliation protocol bytes, both directions (fingerprints, tags and
    /// keys; not the entries themselves).
    pub bytes: u64,
    /// Encoded size of the differing entries both sides must ship (a key
    /// with two versions counts both).
    pub diff_bytes: u64,
    /// Round trips (messages / 2, rounded up).
    pub round_trips: u64,
    /// Time spent in the protocol on both sides (encode, decode, handle), ms.
    pub cpu_ms: f64,
    /// negentropy 0.5.3 bytes on the same sets, both directions.
    pub negentropy_bytes: u64,
    /// Bytes of sending all of one side's entries.
    pub full_state_bytes: u64,
}

/// SplitMix64 (see `docs/design/anti-entropy.md`, "References"): a seeded
/// generator for reproducible sets.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        // Multiply-shift range reduction (Lemire); the bias is below 2^-40
        // for the bounds used here.
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

fn varint_len(mut x: usize) -> u64 {
    let mut len = 1;
    while x >= 0x80 {
        x >>= 7;
        len += 1;
    }
    len
}

/// Encoded size of one entry: length-prefixed key and value.
fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    varint_len(key.len()) + key.len() as u64 + varint_len(value.len()) + value.len() as u64
}

fn digest_of(key: &[u8], value: &[u8]) -> Digest {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(value);
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    digest
}

fn random_key(rng: &mut SplitMix64) -> Key {
    let len = 16 + rng.below(9) as usize;
    rng.bytes(len)
}

/// Builds two sets of `n` ~100-byte entries (16–24-byte key, 80-byte value,
/// digest over both) that differ in `d` keys — a third only on A, a third
/// only on B, a third with a different value on B — runs this protocol and
/// negentropy on them, and checks that both find exactly the differences.
///
/// # Panics
///
/// If either protocol reports a wrong set of differences (a bug), or if
/// `d > n`.
pub fn bench_compare(n: u64, d: u64, seed: u64) -> BenchReport {
    assert!(d <= n, "cannot have more differences ({d}) than items ({n})");
    let mut rng = SplitMix64(seed);
    let mut side_a: BTreeMap<Key, Vec<u8>> = BTreeMap::new();
    while (side_a.len() as u64) < n {
        let key = random_key(&mut rng);
        let value = rng.bytes(VALUE_BYTES);
        side_a.insert(key, value);
    }
    let mut side_b = side_a.clone();
    let full_state_bytes = side_a.iter().map(|(k, v)| entry_bytes(k, v)).sum();

    // Choose d distinct keys of A by a partial Fisher–Yates shuffle.
    let keys: Vec<&Key> = side_a.keys().collect();
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut chosen = Vec::with_capacity(d as usize);
    for i in 0..d as usize {
        let j = i + rng.below(n - i as u64) as usize;
        order.swap(i, j);
        chosen.push(keys[order[i] as usize].clone());
    }
    let mut expected_a = BTreeSet::new(); // keys A must ship
    let mut expected_b = BTreeSet::new(); // keys B must ship
    let mut diff_bytes = 0u64;
    for (i, key) in chosen.into_iter().enumerate() {
        match i % 3 {
            0 => {
                // Only on A.
                if let Some(value) = side_b.remove(&key) {
                    diff_bytes += entry_bytes(&key, &value);
                }
                expected_a.insert(key);
            }
            1 => {
                // Only on B: a fresh key; the chosen key of A stays equal.
                let mut fresh = random_key(&mut rng);
                while side_a.contains_key(&fresh) || side_b.contains_key(&fresh) {
                    fresh = random_key(&mut rng);
                }
                let value = rng.bytes(VALUE_BYTES);
                diff_bytes += entry_bytes(&fresh, &value);
                side_b.insert(fresh.clone(), value);
                expected_b.insert(fresh);
            }
            _ => {
                // Same key, different version.
                let value = rng.bytes(VALUE_BYTES);
                if let Some(old) = side_a.get(&key) {
                    diff_bytes += entry_bytes(&key, old);
                }
                diff_bytes += entry_bytes(&key, &value);
                side_b.insert(key.clone(), value);
                expected_a.insert(key.clone());
                expected_b.insert(key);
            }
        }
    }

    let digests_a: Vec<(Key, Digest)> = side_a.iter().map(|(k, v)| (k.clone(), digest_of(k, v))).collect();
    let digests_b: Vec<(Key, Digest)> = side_b.iter().map(|(k, v)| (k.clone(), digest_of(k, v))).collect();
    drop(side_a);
    drop(side_b);

    let index_a = ItemIndex::from_items(digests_a.iter().cloned()).expect("benchmark keys are short");
    let index_b = ItemIndex::from_items(digests_b.iter().cloned()).expect("benchmark keys are short");

    let started = Instant::now();
    let outcome = run_session(&index_a, &index_b);
    let cpu_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(outcome.have_a, expected_a, "initiator's have set is wrong");
    assert_eq!(outcome.have_b, expected_b, "responder's have set is wrong");
    assert_eq!(outcome.need_a, expected_b, "initiator's need set is wrong");
    assert_eq!(outcome.need_b, expected_a, "responder's need set is wrong");

    let negentropy_bytes = run_negentropy(&digests_a, &digests_b, expected_a.len() + expected_b.len());

    BenchReport {
        n,
        d,
        bytes: outcome.bytes,
        diff_bytes,
        round_trips: outcome.messages.div_ceil(2),
        cpu_ms,
        negentropy_bytes,
        full_state_bytes,
    }
}

/// What one full session between two in-memory indices produced.
struct SessionOutcome {
    bytes: u64,
    messages: u64,
    have_a: BTreeSet<Key>,
    need_a: BTreeSet<Key>,
    have_b: BTreeSet<Key>,
    need_b: BTreeSet<Key>,
}

/// Runs one session, with every message encoded and decoded, A initiating.
fn run_session(index_a: &ItemIndex, index_b: &ItemIndex) -> SessionOutcome {
    let (mut a, first) = Reconciler::initiate(index_a);
    let mut b = Reconciler::responder();
    let mut bytes = 0u64;
    let mut messages = 0u64;
    let mut in_flight = Some(first);
    let mut to_b = true;
    while let Some(message) = in_flight.take() {
        let encoded = message.encode();
        bytes += encoded.len() as u64;
        messages += 1;
        let decoded = Message::decode(&encoded).expect("own messages decode");
        let (session, index) = if to_b { (&mut b, index_b) } else { (&mut a, index_a) };
        let step = session.handle(index, decoded).expect("session within limits");
        in_flight = step.reply;
        to_b = !to_b;
    }
    assert!(a.is_done() && b.is_done(), "both sides finish together");
    SessionOutcome {
        bytes,
        messages,
        have_a: a.have().clone(),
        need_a: a.need().clone(),
        have_b: b.have().clone(),
        need_b: b.need().clone(),
    }
}

/// Runs negentropy 0.5.3 on the same items (id = BLAKE3 of key and digest,
/// timestamp 0, no frame limit) and returns its bytes, both directions.
fn run_negentropy(items_a: &[(Key, Digest)], items_b: &[(Key, Digest)], differences: usize) -> u64 {
    fn storage(items: &[(Key, Digest)]) -> NegentropyStorageVector {
        let mut storage = NegentropyStorageVector::with_capacity(items.len());
        for (key, digest) in items {
            let mut hasher = blake3::Hasher::new();
            hasher.update(&(key.len() as u64).to_le_bytes());
            hasher.update(key);
            hasher.update(digest);
            let id = Id::from_byte_array(*hasher.finalize().as_bytes());
            storage.insert(0, id).expect("unsealed storage accepts items");
        }
        storage.seal().expect("storage seals once");
        storage
    }
    let storage_a = storage(items_a);
    let storage_b = storage(items_b);
    let mut client = Negentropy::borrowed(&storage_a, 0).expect("no frame limit");
    let mut relay = Negentropy::borrowed(&storage_b, 0).expect("no frame limit");
    let mut have = Vec::new();
    let mut need = Vec::new();
    let mut message = client.initiate().expect("fresh client initiates");
    let mut bytes = message.len() as u64;
    loop {
        let response = relay.reconcile(&message).expect("relay accepts client messages");
        bytes += response.len() as u64;
        match client.reconcile_with_ids(&response, &mut have, &mut need).expect("client accepts relay messages") {
            Some(next) => {
                bytes += next.len() as u64;
                message = next;
            }
            None => break,
        }
    }
    assert_eq!(have.len() + need.len(), differences, "negentropy found every difference");
    bytes
}

#[cfg(test)]
mod tests {
    use super::bench_compare;

    #[test]
    fn the_protocol_beats_negentropy_and_full_state_on_the_same_sets() {
        let report = bench_compare(5_000, 50, 10);
        assert_eq!((report.n, report.d), (5_000, 50));
        assert!(report.bytes < report.negentropy_bytes, "{report:?}");
        assert!(report.bytes < report.diff_bytes, "{report:?}");
        assert!(report.diff_bytes < report.full_state_bytes / 10, "{report:?}");
        // Total anti-entropy traffic within the target 1.5 × diff_bytes + 64 KiB.
        assert!(report.bytes + report.diff_bytes <= report.diff_bytes * 3 / 2 + 64 * 1024);
        assert!(report.round_trips >= 2);
    }

    #[test]
    fn a_benchmark_without_differences_finishes_in_one_round_trip() {
        let report = bench_compare(1_000, 0, 11);
        assert_eq!((report.round_trips, report.diff_bytes), (1, 0));
        assert!(report.bytes < 64, "{report:?}");
    }

    #[test]
    fn the_same_seed_builds_the_same_sets() {
        let first = bench_compare(2_000, 30, 9);
        let second = bench_compare(2_000, 30, 9);
        let without_time = |r: &super::BenchReport| {
            (r.n, r.d, r.bytes, r.diff_bytes, r.round_trips, r.negentropy_bytes, r.full_state_bytes)
        };
        assert_eq!(without_time(&first), without_time(&second));
    }
}
