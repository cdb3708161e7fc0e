//! Anti-entropy whose cost grows with the differences, not with the data
//! (issue 4). Two nodes hold the same n = 100,000 entries; then their stored
//! images are damaged so that d entries silently differ — missing on one
//! side, corrupt on disk (checksum), or stale older versions — while both
//! seen sets still claim everything. Version vectors cannot tell; range-based
//! reconciliation must find exactly those entries, and the bytes exchanged
//! must be bounded by a multiple of d plus a logarithmic term.

use chorus_core::crdt::{Op, ValueType};
use chorus_core::node::{Action, LocalWrite, Node, NodeConfig};
use chorus_core::persist::{RecoveryImage, entries_space};
use chorus_core::{NodeId, RequestId, wire};
use std::collections::BTreeMap;
use std::sync::OnceLock;

const NS: &str = "data";
const N: usize = 100_000;
const T0: u64 = 1_000_000_000;

struct Pair {
    a: Node,
    b: Node,
    image_a: RecoveryImage,
    image_b: RecoveryImage,
    bytes: u64,
    messages: u64,
}

fn apply(image: &mut RecoveryImage, node: &mut Node) -> Vec<(NodeId, wire::Message)> {
    let mut sends = Vec::new();
    while let Some(action) = node.poll_action() {
        match action {
            Action::Persist { id, batch } => {
                node.handle_persisted(id);
                for op in batch.ops {
                    let space = image.entry(op.space).or_default();
                    match op.value {
                        Some(v) => space.insert(op.key, v),
                        None => space.remove(&op.key),
                    };
                }
            }
            Action::Send { to, message } => sends.push((to, message)),
            Action::WriteDone { result, .. } => {
                result.expect("write accepted");
            }
            other => panic!("unexpected action {other:?}"),
        }
    }
    sends
}

impl Pair {
    /// Deliver every queued message (through the real codec) until quiet.
    fn pump(&mut self, now: u64) {
        for _ in 0..10_000 {
            let from_a = apply(&mut self.image_a, &mut self.a);
            let from_b = apply(&mut self.image_b, &mut self.b);
            if from_a.is_empty() && from_b.is_empty() {
                return;
            }
            for (to, message) in from_a {
                assert_eq!(to, self.b.id());
                let bytes = wire::encode(&message);
                self.bytes += bytes.len() as u64;
                self.messages += 1;
                let decoded = wire::decode(&bytes, 1 << 20).expect("valid frame");
                self.b.handle_message(now, self.a.id(), decoded);
            }
            for (to, message) in from_b {
                assert_eq!(to, self.a.id());
                let bytes = wire::encode(&message);
                self.bytes += bytes.len() as u64;
                self.messages += 1;
                let decoded = wire::decode(&bytes, 1 << 20).expect("valid frame");
                self.a.handle_message(now, self.b.id(), decoded);
            }
        }
        panic!("message exchange did not quiesce");
    }

    fn sync_until_equal(&mut self, mut now: u64, rounds_max: usize) -> usize {
        for round in 1..=rounds_max {
            self.a.start_sync(now, self.b.id());
            self.pump(now);
            now += 1000;
            if self.equal() {
                return round;
            }
        }
        panic!("not equal after {rounds_max} anti-entropy rounds");
    }

    fn equal(&self) -> bool {
        let (na, nb) = (self.a.namespace(NS).unwrap(), self.b.namespace(NS).unwrap());
        na.live_digest() == nb.live_digest() && na.seen() == nb.seen()
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:08}").into_bytes()
}

fn put(i: usize, version: u32) -> LocalWrite {
    LocalWrite::new(
        NS,
        key(i),
        Op::Put { value: format!("value-{i}-v{version}-{}", "x".repeat(40)).into_bytes(), context: None },
    )
}

/// Two converged nodes with N entries; `rewritten` keys were written twice,
/// and the first version of each is returned (as stored on node A) so a test
/// can plant it as a stale version.
fn converged_pair(rewritten: usize) -> Base {
    let config = NodeConfig::default();
    let mut a = Node::new(NodeId(1), config.clone(), 1);
    let mut b = Node::new(NodeId(2), config, 2);
    a.create_namespace(NS, ValueType::Lww).unwrap();
    b.create_namespace(NS, ValueType::Lww).unwrap();
    let mut pair = Pair { a, b, image_a: RecoveryImage::new(), image_b: RecoveryImage::new(), bytes: 0, messages: 0 };
    for chunk in (0..N).collect::<Vec<_>>().chunks(5000) {
        let writes: Vec<(RequestId, LocalWrite)> = chunk.iter().map(|&i| (RequestId(i as u64), put(i, 1))).collect();
        pair.a.handle_local_writes(T0, writes);
    }
    apply(&mut pair.image_a, &mut pair.a);
    let space = entries_space(NS);
    let old: BTreeMap<Vec<u8>, Vec<u8>> =
        (0..rewritten).map(|i| (key(i), pair.image_a[&space][&key(i)].clone())).collect();
    let writes: Vec<(RequestId, LocalWrite)> = (0..rewritten).map(|i| (RequestId(i as u64), put(i, 2))).collect();
    pair.a.handle_local_writes(T0 + 1, writes);
    apply(&mut pair.image_a, &mut pair.a);
    pair.sync_until_equal(T0 + 2, 100);
    (pair.image_a, pair.image_b, old)
}

fn recover(id: u64, image: &RecoveryImage) -> Node {
    Node::recover(NodeId(id), NodeConfig::default(), id, image).expect("recoverable image")
}

/// Damage `d` entries: a third missing on B, a third corrupt on A's disk,
/// a third stale (an older version) on B. Returns the damaged keys' own
/// encoded size as the reference for "bytes of the differences".
fn damage(image_a: &mut RecoveryImage, image_b: &mut RecoveryImage, old: &BTreeMap<Vec<u8>, Vec<u8>>, d: usize) -> u64 {
    let space = entries_space(NS);
    let mut diff_bytes = 0u64;
    for j in 0..d {
        // Spread the damaged keys over the keyspace.
        let i = (j * 7919 + 13) % N;
        let k = match j % 3 {
            2 => key(j / 3), // stale versions use the rewritten keys 0..
            _ => key(i),
        };
        let record = image_a[&space][&k].clone();
        diff_bytes += (k.len() + record.len()) as u64;
        match j % 3 {
            0 => {
                image_b.get_mut(&space).unwrap().remove(&k);
            }
            1 => {
                let r = image_a.get_mut(&space).unwrap().get_mut(&k).unwrap();
                let last = r.len() - 1;
                r[last] ^= 0x40;
            }
            _ => {
                image_b.get_mut(&space).unwrap().insert(k.clone(), old[&k].clone());
            }
        }
    }
    diff_bytes
}

/// Keys written twice in the shared base state (enough stale versions for
/// the largest d).
const REWRITTEN: usize = 3400;

/// Building two converged 100,000-entry replicas is the expensive part;
/// every case starts from copies of the same images.
/// Two converged replicas' images and the first versions of rewritten keys.
type Base = (RecoveryImage, RecoveryImage, BTreeMap<Vec<u8>, Vec<u8>>);

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| converged_pair(REWRITTEN))
}

fn run(d: usize) -> (u64, u64, u64, usize, u64) {
    assert!(d / 3 < REWRITTEN);
    let (image_a, image_b, old) = base();
    let (mut image_a, mut image_b) = (image_a.clone(), image_b.clone());
    let diff_bytes = damage(&mut image_a, &mut image_b, old, d);
    let a = recover(1, &image_a);
    let b = recover(2, &image_b);
    let corrupt = a.stats().corrupt_entries_dropped;
    assert_eq!(corrupt as usize, d / 3 + usize::from(d % 3 >= 2), "corrupt records are detected and dropped");
    let mut pair = Pair { a, b, image_a, image_b, bytes: 0, messages: 0 };
    assert_eq!(pair.a.namespace(NS).unwrap().seen(), pair.b.namespace(NS).unwrap().seen(), "seen sets cannot tell");
    let rounds = pair.sync_until_equal(T0 + 10_000, 20);
    // Every key is back, with its newest value, on both nodes.
    for i in (0..N).step_by(997).chain(0..(d / 3 + 1).min(N)) {
        let va = pair.a.get(NS, &key(i)).expect("present on A").value;
        let vb = pair.b.get(NS, &key(i)).expect("present on B").value;
        assert_eq!(va, vb);
    }
    (pair.bytes, pair.messages, diff_bytes, rounds, corrupt)
}

/// Bytes allowed for d differences: a constant per difference (the
/// reconciliation traffic, ~70 bytes, plus both sides' versions of the
/// entry, ~2 × 80 bytes) and a logarithmic term for summaries and the
/// first fingerprint levels.
fn bound(d: usize) -> u64 {
    320 * d as u64 + 2048 * (N as f64).log2().ceil() as u64
}

#[test]
fn equal_replicas_finish_in_one_round_trip() {
    let (bytes, messages, _, rounds, _) = run(0);
    assert_eq!(rounds, 1);
    assert_eq!(messages, 2, "request and an in-sync reply, nothing else");
    assert!(bytes < 256, "{bytes} bytes for two equal replicas");
}

#[test]
fn silent_divergence_is_found_and_repaired_at_a_cost_proportional_to_the_differences() {
    let full_state_bytes = 100_000u64 * 80;
    for d in [1usize, 100, 10_000] {
        let (bytes, messages, diff_bytes, rounds, corrupt) = run(d);
        println!(
            "d={d}: {bytes} bytes in {messages} messages over {rounds} rounds; differing entries {diff_bytes} bytes; {corrupt} corrupt records repaired; bound {}",
            bound(d)
        );
        assert!(bytes <= bound(d), "d={d}: {bytes} bytes exceeds the bound {}", bound(d));
        assert!(full_state_bytes > bound(d), "the bound must exclude a full-state transfer");
    }
}
