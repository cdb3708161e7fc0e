//! End-to-end reconciliation between two indices, checked against ground
//! truth computed directly from the two item maps.

use std::collections::{BTreeMap, BTreeSet};

use chorus_reconcile::{CELLS_PER_MESSAGE_MAX, Digest, ItemIndex, Key, MESSAGE_BYTES_MAX, Message, Reconciler};

/// SplitMix64: a seeded generator so every failure replays.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    fn key(&mut self) -> Key {
        let len = 16 + self.below(9) as usize;
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    fn digest(&mut self) -> Digest {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        d[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        d
    }
}

type Items = BTreeMap<Key, Digest>;

/// Two maps of `n` items that differ in `d` keys: a third only on A, a third
/// only on B, a third with a different digest on B.
fn diverged_pair(n: usize, d: usize, seed: u64) -> (Items, Items) {
    let mut rng = Rng(seed);
    let mut a = Items::new();
    while a.len() < n {
        let key = rng.key();
        let digest = rng.digest();
        a.insert(key, digest);
    }
    let mut b = a.clone();
    let keys: Vec<Key> = a.keys().cloned().collect();
    let mut picked = BTreeSet::new();
    while picked.len() < d {
        picked.insert(rng.below(n as u64) as usize);
    }
    for (i, pos) in picked.into_iter().enumerate() {
        let key = &keys[pos];
        match i % 3 {
            0 => {
                b.remove(key);
            }
            1 => {
                let mut fresh = rng.key();
                while a.contains_key(&fresh) {
                    fresh = rng.key();
                }
                b.insert(fresh, rng.digest());
            }
            _ => {
                b.insert(key.clone(), rng.digest());
            }
        }
    }
    (a, b)
}

/// Keys of `mine` that `theirs` lacks or holds with another digest.
fn ground_truth(mine: &Items, theirs: &Items) -> BTreeSet<Key> {
    mine.iter().filter(|(k, v)| theirs.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect()
}

struct Outcome {
    bytes: usize,
    messages: usize,
    a: Reconciler,
    b: Reconciler,
}

/// Runs a session A → B through the wire encoding; checks per-step results
/// against the running totals and the per-message limits.
fn reconcile(a_items: &Items, b_items: &Items) -> Outcome {
    let index_a = ItemIndex::from_items(a_items.clone()).unwrap();
    let index_b = ItemIndex::from_items(b_items.clone()).unwrap();
    let (mut a, first) = Reconciler::initiate(&index_a);
    let mut b = Reconciler::responder();
    let (mut bytes, mut messages) = (0, 0);
    let mut step_have = [BTreeSet::new(), BTreeSet::new()];
    let mut in_flight = Some(first);
    let mut to_b = true;
    while let Some(message) = in_flight.take() {
        assert!(message.cell_count() <= CELLS_PER_MESSAGE_MAX);
        let encoded = message.encode();
        assert!(encoded.len() <= MESSAGE_BYTES_MAX);
        bytes += encoded.len();
        messages += 1;
        assert!(messages < 1_000, "session does not terminate");
        let decoded = Message::decode(&encoded).unwrap();
        assert_eq!(decoded, message);
        let (session, index, side) = if to_b { (&mut b, &index_b, 1) } else { (&mut a, &index_a, 0) };
        let step = session.handle(index, decoded).unwrap();
        step_have[side].extend(step.have);
        in_flight = step.reply;
        to_b = !to_b;
    }
    assert!(a.is_done() && b.is_done());
    assert_eq!(&step_have[0], a.have());
    assert_eq!(&step_have[1], b.have());
    Outcome { bytes, messages, a, b }
}

/// Protocol bytes allowed for `d` differences: linear in `d`, independent of
/// `n` (tags are 64-bit positions in a hash space, not key ranks).
fn byte_bound(d: usize) -> usize {
    160 * d + 256
}

fn check_exact(n: usize, d: usize, seed: u64) -> Outcome {
    let (a_items, b_items) = diverged_pair(n, d, seed);
    let outcome = reconcile(&a_items, &b_items);
    let a_must_ship = ground_truth(&a_items, &b_items);
    let b_must_ship = ground_truth(&b_items, &a_items);
    assert_eq!(outcome.a.have(), &a_must_ship);
    assert_eq!(outcome.a.need(), &b_must_ship);
    assert_eq!(outcome.b.have(), &b_must_ship);
    assert_eq!(outcome.b.need(), &a_must_ship);
    assert!(outcome.bytes <= byte_bound(d), "{} bytes for d = {d} exceeds the bound {}", outcome.bytes, byte_bound(d));
    outcome
}

#[test]
fn equal_sets_of_100k_items_finish_in_one_round_trip_with_tiny_messages() {
    let outcome = check_exact(100_000, 0, 1);
    assert_eq!(outcome.messages, 2);
    assert!(outcome.bytes <= 32, "{} bytes", outcome.bytes);
    assert!(outcome.a.have().is_empty() && outcome.b.need().is_empty());
}

#[test]
fn one_difference_among_100k_items_is_found_exactly() {
    let outcome = check_exact(100_000, 1, 2);
    assert_eq!(outcome.a.have().len() + outcome.b.have().len(), 1);
}

#[test]
fn a_hundred_differences_among_100k_items_are_found_exactly() {
    check_exact(100_000, 100, 3);
}

#[test]
fn ten_thousand_differences_among_100k_items_are_found_over_bounded_messages() {
    let outcome = check_exact(100_000, 10_000, 4);
    // The per-message cell limit forces several messages per tree level.
    assert!(outcome.messages > 10, "{} messages", outcome.messages);
}

#[test]
fn a_full_state_transfer_would_blow_through_the_byte_bound() {
    let (a_items, _) = diverged_pair(100_000, 0, 5);
    let full_state: usize = a_items.keys().map(|k| k.len() + 16 + 2).sum();
    // Even key + digest alone (no values) for n = 100,000 exceeds the bound
    // for d = 10,000, the largest d tested.
    assert!(full_state > byte_bound(10_000), "{full_state}");
}

#[test]
fn silent_divergence_of_a_single_version_is_found() {
    let mut rng = Rng(6);
    let a: Items = (0..5_000).map(|_| (rng.key(), rng.digest())).collect();
    let mut b = a.clone();
    let victim = a.keys().nth(1234).unwrap().clone();
    b.insert(victim.clone(), rng.digest());
    let outcome = reconcile(&a, &b);
    let expected: BTreeSet<Key> = [victim].into();
    assert_eq!(outcome.a.have(), &expected);
    assert_eq!(outcome.a.need(), &expected);
    assert_eq!(outcome.b.have(), &expected);
    assert_eq!(outcome.b.need(), &expected);
}

#[test]
fn reconciling_against_an_empty_set_reports_every_key() {
    let mut rng = Rng(7);
    let a: Items = (0..300).map(|_| (rng.key(), rng.digest())).collect();
    let outcome = reconcile(&a, &Items::new());
    assert_eq!(outcome.a.have().len(), 300);
    assert_eq!(outcome.b.need().len(), 300);
    assert!(outcome.b.have().is_empty() && outcome.a.need().is_empty());
}

#[test]
fn applying_the_reported_differences_makes_the_fingerprints_equal() {
    let (a_items, b_items) = diverged_pair(20_000, 300, 8);
    let outcome = reconcile(&a_items, &b_items);
    // Ship A's differing entries to B and B's to A; a last-writer-wins merge
    // stands in for the CRDT join: A's version wins.
    let mut merged_b = b_items.clone();
    for key in outcome.a.have() {
        merged_b.insert(key.clone(), a_items[key]);
    }
    let mut merged_a = a_items.clone();
    for key in outcome.b.have() {
        if !a_items.contains_key(key) {
            merged_a.insert(key.clone(), b_items[key]);
        }
    }
    let index_a = ItemIndex::from_items(merged_a).unwrap();
    let index_b = ItemIndex::from_items(merged_b).unwrap();
    assert_eq!(index_a.fingerprint(), index_b.fingerprint());
}

#[test]
fn writes_during_a_session_do_not_stop_it_and_the_next_session_is_exact() {
    let (a_items, mut b_items) = diverged_pair(20_000, 200, 12);
    let index_a = ItemIndex::from_items(a_items.clone()).unwrap();
    let mut index_b = ItemIndex::from_items(b_items.clone()).unwrap();
    let (mut a, first) = Reconciler::initiate(&index_a);
    let mut b = Reconciler::responder();
    let mut rng = Rng(13);
    let mut in_flight = Some(first);
    let mut to_b = true;
    let mut messages = 0;
    while let Some(message) = in_flight.take() {
        messages += 1;
        assert!(messages < 1_000, "session does not terminate");
        let step = if to_b {
            // B keeps writing while the session runs.
            for _ in 0..20 {
                let (key, digest) = (rng.key(), rng.digest());
                index_b.insert(key.clone(), digest).unwrap();
                b_items.insert(key, digest);
            }
            b.handle(&index_b, message).unwrap()
        } else {
            a.handle(&index_a, message).unwrap()
        };
        in_flight = step.reply;
        to_b = !to_b;
    }
    assert!(a.is_done() && b.is_done());
    let outcome = reconcile(&a_items, &b_items);
    assert_eq!(outcome.a.have(), &ground_truth(&a_items, &b_items));
    assert_eq!(outcome.b.have(), &ground_truth(&b_items, &a_items));
}
