//! Change streams over the core's feed, exactly as the daemon runs them
//! (`docs/design/watch.md`): a stream follows node A's durable change
//! batches, then resumes on node B from the token of its last event while
//! writes go on everywhere under reordered and lost gossip. In the union
//! of both streams every acknowledged write is covered by exactly one
//! event, each key's events only move forward, and the last event of each
//! key equals B's state. The checker is shown to fire when one event is
//! dropped.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use chorus_core::watch::{ChangeBatch, DotRange, StreamPosition};
use chorus_core::{
    Action, Dot, LocalWrite, Member, MemberState, Node, NodeConfig, NodeId, Op, RequestId, Rng, ValueType,
    VersionVector,
};
use std::collections::{BTreeMap, VecDeque};

const NS: &str = "w";
const KEYS: u64 = 12;

/// One delivered event, as a watcher sees it.
#[derive(Clone, Debug)]
struct Event {
    key: Vec<u8>,
    dots: Vec<DotRange>,
    clock: VersionVector,
    position: StreamPosition,
}

/// Why a union of streams is not exact.
#[derive(Debug, PartialEq, Eq)]
enum Violation {
    Gap { key: Vec<u8>, dot: Dot },
    Duplicate { key: Vec<u8>, dot: Dot },
    Backwards { key: Vec<u8> },
}

/// The checker: every acknowledged (key, dot) covered by exactly one event;
/// per key, each event's ranges start above what earlier events covered.
fn check(acked: &[(Vec<u8>, Dot)], events: &[Event]) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut reached: BTreeMap<(Vec<u8>, NodeId), u64> = BTreeMap::new();
    for e in events {
        for r in &e.dots {
            let at = reached.entry((e.key.clone(), r.node)).or_default();
            if r.first <= *at {
                out.push(Violation::Backwards { key: e.key.clone() });
            }
            *at = (*at).max(r.last);
        }
    }
    for (key, dot) in acked {
        let n = events
            .iter()
            .filter(|e| e.key == *key)
            .flat_map(|e| e.dots.iter())
            .filter(|r| r.node == dot.node && r.first <= dot.counter && dot.counter <= r.last)
            .count();
        match n {
            0 => out.push(Violation::Gap { key: key.clone(), dot: *dot }),
            1 => {}
            _ => out.push(Violation::Duplicate { key: key.clone(), dot: *dot }),
        }
    }
    out
}

struct World {
    nodes: Vec<Node>,
    rng: Rng,
    now: u64,
    /// Messages in flight: (due, to, from, message).
    wire: Vec<(u64, usize, usize, chorus_core::wire::Message)>,
    /// Durable change batches per node, in release order.
    feeds: Vec<VecDeque<ChangeBatch>>,
    acked: Vec<(Vec<u8>, Dot)>,
    /// The key of the write being handed in (one write per call).
    writing: Vec<u8>,
    next_request: u64,
}

impl World {
    fn new(seed: u64) -> World {
        let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let mut nodes: Vec<Node> = ids
            .iter()
            .map(|&id| {
                let config = NodeConfig { fanout: 1, anti_entropy_interval_us: 200_000, ..NodeConfig::default() };
                let mut n = Node::new(id, config, seed ^ id.0);
                n.enable_change_feed();
                n.create_namespace(NS, ValueType::Mv).expect("namespace");
                n
            })
            .collect();
        let members: Vec<Member> = ids.iter().map(|&id| Member { id, tier: 0, state: MemberState::Alive }).collect();
        for n in &mut nodes {
            n.set_members(0, &members);
        }
        let mut w = World {
            nodes,
            rng: Rng::new(seed),
            now: 1_000_000,
            wire: Vec::new(),
            feeds: vec![VecDeque::new(); 3],
            acked: Vec::new(),
            writing: Vec::new(),
            next_request: 0,
        };
        for i in 0..3 {
            w.pump(i);
        }
        w
    }

    /// Execute node `i`'s actions: Persists durable at once, Sends onto the
    /// wire (20 % lost, delayed 0–30 ms so they reorder), Changes kept.
    fn pump(&mut self, i: usize) {
        while let Some(action) = self.nodes[i].poll_action() {
            match action {
                Action::Persist { id, .. } => self.nodes[i].handle_persisted(id),
                Action::Send { to, message } => {
                    if self.rng.chance(0.2) {
                        continue;
                    }
                    let j = (to.0 - 1) as usize;
                    let due = self.now + self.rng.below(30_000);
                    self.wire.push((due, j, i, message));
                }
                Action::WriteDone { result, .. } => {
                    let r = result.expect("write accepted");
                    self.acked.push((self.writing.clone(), r.dot));
                }
                Action::Changes(batch) => self.feeds[i].push_back(batch),
                _ => {}
            }
        }
    }

    fn write(&mut self, i: usize, key: u64) {
        self.next_request += 1;
        let k = format!("k{key}").into_bytes();
        let op = if self.rng.chance(0.15) {
            Op::Delete { context: None }
        } else {
            Op::Put { value: format!("v{}", self.next_request).into_bytes(), context: None }
        };
        self.writing = k.clone();
        self.nodes[i].handle_local_writes(self.now, vec![(RequestId(self.next_request), LocalWrite::new(NS, k, op))]);
        self.pump(i);
    }

    /// Advance 5 ms: deliver due messages, run due timers.
    fn step(&mut self) {
        self.now += 5_000;
        let now = self.now;
        let mut due: Vec<(u64, usize, usize, chorus_core::wire::Message)> = Vec::new();
        let mut i = 0;
        while i < self.wire.len() {
            if self.wire[i].0 <= now {
                due.push(self.wire.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|d| d.0);
        for (_, to, from, message) in due {
            self.nodes[to].handle_message(now, NodeId(from as u64 + 1), message);
            self.pump(to);
        }
        for i in 0..3 {
            if self.nodes[i].poll_timeout().is_some_and(|t| t <= now) {
                self.nodes[i].handle_timeout(now);
                self.pump(i);
            }
        }
    }
}

/// A stream's events for one batch, through the code the daemon runs.
fn follow(pos: &mut StreamPosition, batch: &ChangeBatch) -> Vec<Event> {
    let deliveries = pos.apply_batch(b"", batch).expect("the position stays within its bounds");
    deliveries
        .into_iter()
        .map(|d| {
            let it = &batch.items[d.index];
            Event { key: it.key.clone(), dots: d.dots, clock: it.entry.clock().clone(), position: d.position }
        })
        .collect()
}

/// Run the scenario; `drop_event` skips that event of the first stream (the
/// injected bug). Returns the union of the streams and the acknowledged
/// writes, after writes stopped and the nodes converged.
/// What a scenario leaves: acknowledged writes, the union of the streams,
/// the world, and the resumed stream's final position.
type Outcome = (Vec<(Vec<u8>, Dot)>, Vec<Event>, World, StreamPosition);

fn scenario(seed: u64, drop_event: Option<usize>) -> Outcome {
    let mut w = World::new(seed);
    // Stream 1 on node A (index 0) from its state now.
    let mut pos = w.nodes[0].namespace(NS).expect("ns").position_now(b"").expect("position");
    w.feeds[0].clear();
    let mut union: Vec<Event> = Vec::new();
    let mut last_token = pos.clone();
    let mut delivered = 0usize;
    for round in 0..400u64 {
        let node = w.rng.below(3) as usize;
        let key = w.rng.below(KEYS);
        w.write(node, key);
        w.step();
        while let Some(batch) = w.feeds[0].pop_front() {
            for e in follow(&mut pos, &batch) {
                delivered += 1;
                last_token = e.position.clone();
                if Some(delivered) != drop_event {
                    union.push(e);
                }
            }
        }
        if round == 250 {
            break;
        }
    }
    // Stream 1 dies; the client resumes on node B (index 1) from the token
    // of the last event it received, once B has caught up with it.
    let catch_up = loop {
        match w.nodes[1].namespace(NS).expect("ns").catch_up(b"", &last_token) {
            Ok(c) => break c,
            Err(chorus_core::watch::CatchUpError::Behind { .. }) => w.step(),
            Err(e) => panic!("catch-up refused: {e}"),
        }
    };
    w.feeds[1].clear();
    let mut pos = last_token;
    for d in pos.apply_catch_up(&catch_up).expect("catch-up fits") {
        let (key, entry) = &catch_up.items[d.index];
        union.push(Event { key: key.clone(), dots: d.dots, clock: entry.clock().clone(), position: d.position });
    }
    for _ in 0..150u64 {
        let node = w.rng.below(3) as usize;
        let key = w.rng.below(KEYS);
        w.write(node, key);
        w.step();
        while let Some(batch) = w.feeds[1].pop_front() {
            union.extend(follow(&mut pos, &batch));
        }
    }
    // Writes stop; gossip and anti-entropy bring B everything.
    for _ in 0..2_000 {
        w.step();
        while let Some(batch) = w.feeds[1].pop_front() {
            union.extend(follow(&mut pos, &batch));
        }
        let digests: Vec<[u8; 32]> = w.nodes.iter().map(|n| n.namespace(NS).expect("ns").live_digest()).collect();
        if w.wire.is_empty() && digests.windows(2).all(|p| p[0] == p[1]) {
            break;
        }
    }
    let acked = w.acked.clone();
    (acked, union, w, pos)
}

#[test]
fn a_stream_resumed_on_another_node_covers_every_acknowledged_write_exactly_once() {
    for seed in [1u64, 7, 42, 1234] {
        let (acked, union, w, pos) = scenario(seed, None);
        assert!(acked.len() > 300, "seed {seed}: only {} writes", acked.len());
        assert_eq!(check(&acked, &union), vec![], "seed {seed}");
        // The last event of each key is B's state for it.
        let ns = w.nodes[1].namespace(NS).expect("ns");
        let mut last: BTreeMap<Vec<u8>, VersionVector> = BTreeMap::new();
        for e in &union {
            last.insert(e.key.clone(), e.clock.clone());
        }
        for (key, entry) in ns.entries() {
            assert_eq!(last.get(key), Some(entry.clock()), "seed {seed}: last event of {key:?}");
        }
        assert!(pos.above.len() <= 4, "seed {seed}: the converged position lists {} keys", pos.above.len());
    }
}

#[test]
fn the_checker_reports_the_gap_of_one_dropped_event() {
    let (acked, union, _, _) = scenario(7, Some(40));
    let violations = check(&acked, &union);
    assert!(!violations.is_empty(), "dropping an event must be caught");
    assert!(
        violations.iter().all(|v| matches!(v, Violation::Gap { .. })),
        "a dropped event is a gap, nothing else: {violations:?}"
    );
}

#[test]
fn the_checker_reports_a_duplicate_and_a_backwards_event() {
    let (acked, mut union, _, _) = scenario(42, None);
    let again = union[union.len() / 2].clone();
    union.push(again);
    let violations = check(&acked, &union);
    assert!(violations.iter().any(|v| matches!(v, Violation::Duplicate { .. })), "{violations:?}");
    assert!(violations.iter().any(|v| matches!(v, Violation::Backwards { .. })), "{violations:?}");
}
