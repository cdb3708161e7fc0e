//! Lattice laws and reference-model semantics of every CRDT value type.
//!
//! The join of `Entry` is only a lattice join on *reachable* states (valid
//! causal contexts, dots issued densely per node, timestamps that grow per
//! node), so these properties never generate arbitrary structs. Instead they
//! simulate a few replicas that apply local operations — each with a fresh
//! dot from its own counter and a timestamp from its own [`Hlc`], exactly as
//! `Node::apply_local` does — and occasionally join another replica's state.
//! Every state seen along the way is a snapshot, and each snapshot carries
//! its causal history: the set of operations it reflects.
//!
//! For each value type a reference model computes, from a causal history
//! alone, what the state must be:
//!
//! * `lww`: the write with the greatest timestamp;
//! * `mv`: the writes not superseded by a later write (one that had seen
//!   them) whose context covers them (DVV semantics; see
//!   `docs/design/replication.md`, "References");
//! * `counter`: per node, the totals of its increments and decrements;
//! * `set`: per member, the dots of the additions not superseded by a later
//!   addition or an observed removal (add-wins ORSWOT, listed in the same
//!   "References").
//!
//! and every clock is the per-node maximum of the history's dots. Because
//! the history of a join is the union of the histories, "join equals the
//! reference of the union" is the strong form of "merging two states equals
//! applying all of their operations".

use chorus_core::crdt::{LwwRegister, MvRegister, OrSet, PnCounter, Sibling};
use chorus_core::{Dot, Entry, Hlc, NodeId, Op, ReadValue, Rng, Timestamp, ValueType, VersionVector};
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::{BTreeMap, BTreeSet};

const REPLICAS_MAX: usize = 4;
/// Steps per history. Kept well below `limits::SIBLINGS_MAX` so that the
/// writer-side sibling trimming (which is not part of the reference model)
/// never triggers.
const STEPS_MAX: usize = 40;

/// How a client chose the causal context it hands in with an `mv` write or
/// a `set` removal.
#[derive(Clone, Copy, Debug)]
enum Ctx {
    /// No context.
    Absent,
    /// The clock of the replica it writes to (read-your-writes).
    Own,
    /// The clock of another replica (read there, wrote here): may name dots
    /// the writing replica has never seen.
    Other(usize),
    /// An empty context (read before anything existed).
    Empty,
}

#[derive(Clone, Debug)]
enum Step {
    Local { replica: usize, a: u8, b: u8, physical_us: u64, gap: u64 },
    Merge { dst: usize, src: usize },
}

fn step(replicas: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        7 => (0..replicas, any::<u8>(), any::<u8>(), 0u64..64, 1u64..4)
            .prop_map(|(replica, a, b, physical_us, gap)| Step::Local { replica, a, b, physical_us, gap }),
        3 => (0..replicas, 0..replicas).prop_map(|(dst, src)| Step::Merge { dst, src }),
    ]
}

fn history() -> impl Strategy<Value = (usize, Vec<Step>)> {
    (2..=REPLICAS_MAX).prop_flat_map(|r| (Just(r), prop::collection::vec(step(r), 0..STEPS_MAX)))
}

/// One issued operation.
#[derive(Clone, Debug)]
struct OpRec {
    dot: Dot,
    ts: Timestamp,
    op: Op,
    /// The history of the issuing replica just before it applied the op.
    past: BTreeSet<usize>,
}

struct Replica {
    node: NodeId,
    entry: Entry,
    history: BTreeSet<usize>,
    hlc: Hlc,
    counter: u64,
}

/// A reachable state and the operations it reflects.
#[derive(Clone, Debug)]
struct Snapshot {
    entry: Entry,
    history: BTreeSet<usize>,
}

struct Run {
    ops: Vec<OpRec>,
    snapshots: Vec<Snapshot>,
}

fn context(ctx: Ctx, replicas: &[Replica], me: usize) -> Option<VersionVector> {
    match ctx {
        Ctx::Absent => None,
        Ctx::Own => Some(replicas[me].entry.clock().clone()),
        Ctx::Other(j) => Some(replicas[j % replicas.len()].entry.clock().clone()),
        Ctx::Empty => Some(VersionVector::new()),
    }
}

fn ctx_choice(b: u8) -> Ctx {
    match b % 4 {
        0 => Ctx::Absent,
        1 => Ctx::Own,
        2 => Ctx::Other(usize::from(b / 4)),
        _ => Ctx::Empty,
    }
}

fn make_op(ty: ValueType, a: u8, b: u8, replicas: &[Replica], me: usize) -> Op {
    match ty {
        ValueType::Lww => {
            if a.is_multiple_of(3) {
                Op::Delete { context: None }
            } else {
                Op::Put { value: vec![a % 8], context: None }
            }
        }
        ValueType::Mv => {
            let context = context(ctx_choice(b), replicas, me);
            if a.is_multiple_of(4) { Op::Delete { context } } else { Op::Put { value: vec![a % 8], context } }
        }
        ValueType::Counter => Op::Increment { amount: i64::from(a) - 128 },
        ValueType::Set => {
            let member = vec![a % 4];
            if b.is_multiple_of(3) {
                Op::Remove { member, context: context(ctx_choice(b / 3), replicas, me) }
            } else {
                Op::Add { member }
            }
        }
    }
}

/// Run a history, checking on the way that `join` reports change exactly.
fn run(ty: ValueType, replicas: usize, steps: &[Step]) -> Run {
    let mut rs: Vec<Replica> = (0..replicas)
        .map(|i| Replica {
            node: NodeId(10 + i as u64),
            entry: Entry::empty(ty),
            history: BTreeSet::new(),
            hlc: Hlc::new(NodeId(10 + i as u64), u64::MAX),
            counter: 0,
        })
        .collect();
    let mut ops = Vec::new();
    let mut snapshots = vec![Snapshot { entry: Entry::empty(ty), history: BTreeSet::new() }];
    for s in steps {
        let touched = match *s {
            Step::Local { replica, a, b, physical_us, gap } => {
                let op = make_op(ty, a, b, &rs, replica);
                let r = &mut rs[replica];
                // As Node::apply_local: a write's timestamp exceeds every one the key has seen.
                let key_max = r.entry.timestamp_max();
                if key_max > r.hlc.high_water() {
                    r.hlc.update(key_max, physical_us).expect("unbounded max offset");
                }
                let ts = r.hlc.now(physical_us).expect("few events per microsecond");
                r.counter += gap;
                let dot = Dot { node: r.node, counter: r.counter };
                r.entry.apply(&op, dot, ts).expect("generated ops fit their type");
                ops.push(OpRec { dot, ts, op, past: r.history.clone() });
                r.history.insert(ops.len() - 1);
                replica
            }
            Step::Merge { dst, src } => {
                let other = rs[src].entry.clone();
                let other_history = rs[src].history.clone();
                let r = &mut rs[dst];
                let before = r.entry.clone();
                let changed = r.entry.join(&other).expect("same type");
                assert_eq!(changed, before != r.entry, "join's change flag is exact");
                r.history.extend(other_history);
                dst
            }
        };
        let r = &rs[touched];
        snapshots.push(Snapshot { entry: r.entry.clone(), history: r.history.clone() });
    }
    Run { ops, snapshots }
}

fn reference_clock(ops: &[OpRec], history: &BTreeSet<usize>) -> VersionVector {
    VersionVector::from_entries(history.iter().map(|&i| (ops[i].dot.node, ops[i].dot.counter)))
}

fn reference_ts(ops: &[OpRec], history: &BTreeSet<usize>) -> Timestamp {
    history.iter().map(|&i| ops[i].ts).max().unwrap_or(Timestamp::ZERO)
}

/// Whether `later` supersedes the write `earlier` in an `mv` register.
fn mv_supersedes(ops: &[OpRec], later: usize, earlier: usize) -> bool {
    let l = &ops[later];
    if !l.past.contains(&earlier) {
        return false;
    }
    match &l.op {
        Op::Put { context: Some(c), .. } | Op::Delete { context: Some(c) } => c.contains(ops[earlier].dot),
        _ => false,
    }
}

/// Whether `later` removes the addition `earlier` from a `set`.
fn set_supersedes(ops: &[OpRec], later: usize, earlier: usize) -> bool {
    let l = &ops[later];
    let Op::Add { member } = &ops[earlier].op else { return false };
    if !l.past.contains(&earlier) {
        return false;
    }
    match &l.op {
        Op::Add { member: m } => m == member,
        Op::Remove { member: m, context: None } => m == member,
        Op::Remove { member: m, context: Some(c) } => m == member && c.contains(ops[earlier].dot),
        _ => false,
    }
}

/// The state a history must produce.
fn reference(ty: ValueType, ops: &[OpRec], history: &BTreeSet<usize>) -> Entry {
    let clock = reference_clock(ops, history);
    let ts = reference_ts(ops, history);
    match ty {
        ValueType::Lww => match history.iter().max_by_key(|&&i| ops[i].ts) {
            None => Entry::empty(ty),
            Some(&i) => {
                let value = match &ops[i].op {
                    Op::Put { value, .. } => Some(value.clone()),
                    _ => None,
                };
                Entry::Lww(LwwRegister { clock, ts: ops[i].ts, value })
            }
        },
        ValueType::Mv => {
            let mut siblings: Vec<Sibling> = history
                .iter()
                .filter(|&&w| !history.iter().any(|&r| mv_supersedes(ops, r, w)))
                .map(|&w| Sibling {
                    dot: ops[w].dot,
                    ts: ops[w].ts,
                    value: match &ops[w].op {
                        Op::Put { value, .. } => Some(value.clone()),
                        _ => None,
                    },
                })
                .collect();
            siblings.sort_by_key(|s| s.dot);
            Entry::Mv(MvRegister { clock, siblings })
        }
        ValueType::Counter => {
            let mut totals: BTreeMap<NodeId, (u64, u64)> = BTreeMap::new();
            for &i in history {
                let Op::Increment { amount } = ops[i].op else { unreachable!("counter history") };
                let e = totals.entry(ops[i].dot.node).or_insert((0, 0));
                if amount >= 0 {
                    e.0 += amount.unsigned_abs();
                } else {
                    e.1 += amount.unsigned_abs();
                }
            }
            Entry::Counter(PnCounter { clock, totals, ts })
        }
        ValueType::Set => {
            let mut members: BTreeMap<Vec<u8>, BTreeSet<Dot>> = BTreeMap::new();
            for &a in history {
                if let Op::Add { member } = &ops[a].op
                    && !history.iter().any(|&r| set_supersedes(ops, r, a))
                {
                    members.entry(member.clone()).or_default().insert(ops[a].dot);
                }
            }
            Entry::Set(OrSet { clock, members, ts })
        }
    }
}

fn joined(a: &Entry, b: &Entry) -> Entry {
    let mut out = a.clone();
    out.join(b).expect("same type");
    out
}

fn union(a: &BTreeSet<usize>, b: &BTreeSet<usize>) -> BTreeSet<usize> {
    a.union(b).copied().collect()
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, ..ProptestConfig::default() }
}

/// Every law, for one value type.
fn check_laws(ty: ValueType, replicas: usize, steps: &[Step], picks: &[(Index, Index, Index)]) {
    let Run { ops, snapshots } = run(ty, replicas, steps);
    for s in &snapshots {
        assert_eq!(s.entry, reference(ty, &ops, &s.history), "a reachable state matches its history's reference");
        assert_eq!(s.entry.validate(usize::MAX), Ok(()), "validate accepts every reachable state");
    }
    for (i, j, k) in picks {
        let (a, b, c) = (
            &snapshots[i.index(snapshots.len())],
            &snapshots[j.index(snapshots.len())],
            &snapshots[k.index(snapshots.len())],
        );
        let ab = joined(&a.entry, &b.entry);
        let ba = joined(&b.entry, &a.entry);
        assert_eq!(ab, ba, "join is commutative");
        assert_eq!(joined(&ab, &c.entry), joined(&a.entry, &joined(&b.entry, &c.entry)), "join is associative");
        let mut aa = a.entry.clone();
        assert_eq!(aa.join(&a.entry), Ok(false), "joining a state with itself changes nothing");
        assert_eq!(aa, a.entry, "join is idempotent");
        assert_eq!(joined(&ab, &a.entry), ab, "a join is an upper bound of its left side");
        assert_eq!(joined(&ab, &b.entry), ab, "a join is an upper bound of its right side");
        assert_eq!(ab, reference(ty, &ops, &union(&a.history, &b.history)), "join equals the reference of the union");
        assert_eq!(ab.validate(usize::MAX), Ok(()), "validate accepts every join of reachable states");
        for (x, y) in [(&a.entry, &b.entry), (&ab, &ba), (&ab, &a.entry)] {
            assert_eq!(x.canonical_bytes() == y.canonical_bytes(), x == y, "canonical bytes are equal iff states are");
            // The digest deliberately ignores clocks (see `Entry::semantic_bytes`).
            assert_eq!(x.digest() == y.digest(), x.semantic_bytes() == y.semantic_bytes(), "digests follow semantics");
            assert!(x != y || x.digest() == y.digest(), "equal states have equal digests");
        }
    }
}

fn picks() -> impl Strategy<Value = Vec<(Index, Index, Index)>> {
    prop::collection::vec((any::<Index>(), any::<Index>(), any::<Index>()), 1..8)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lww_joins_are_lattice_joins_and_keep_the_greatest_timestamp((r, steps) in history(), picks in picks()) {
        check_laws(ValueType::Lww, r, &steps, &picks);
    }

    #[test]
    fn mv_joins_are_lattice_joins_and_keep_exactly_the_unsuperseded_writes((r, steps) in history(), picks in picks()) {
        check_laws(ValueType::Mv, r, &steps, &picks);
    }

    #[test]
    fn counter_joins_are_lattice_joins_and_sum_every_increment((r, steps) in history(), picks in picks()) {
        check_laws(ValueType::Counter, r, &steps, &picks);
    }

    #[test]
    fn set_joins_are_lattice_joins_with_add_wins_semantics((r, steps) in history(), picks in picks()) {
        check_laws(ValueType::Set, r, &steps, &picks);
    }

    /// Counter increments commute: applying the ops of both histories to an
    /// empty counter in any order gives exactly the join of the two states.
    #[test]
    fn counter_join_equals_applying_all_ops_in_any_order(
        (r, steps) in history(),
        picks in picks(),
        seed in any::<u64>(),
    ) {
        let Run { ops, snapshots } = run(ValueType::Counter, r, &steps);
        let mut rng = Rng::new(seed);
        for (i, j, _) in &picks {
            let a = &snapshots[i.index(snapshots.len())];
            let b = &snapshots[j.index(snapshots.len())];
            let all: Vec<usize> = union(&a.history, &b.history).into_iter().collect();
            let order = rng.choose_distinct(&all, all.len());
            let mut replayed = Entry::empty(ValueType::Counter);
            for o in order {
                replayed.apply(&ops[o].op, ops[o].dot, ops[o].ts).expect("counter op");
            }
            let ab = joined(&a.entry, &b.entry);
            prop_assert_eq!(&replayed, &ab);
            let sum: i64 = all
                .iter()
                .map(|&o| match ops[o].op { Op::Increment { amount } => amount, _ => 0 })
                .sum();
            prop_assert_eq!(ab.read(), ReadValue::Counter(sum));
        }
    }

    /// The client-visible set is the set of members with a live addition.
    #[test]
    fn set_reads_list_exactly_the_members_with_an_unremoved_addition((r, steps) in history()) {
        let Run { ops, snapshots } = run(ValueType::Set, r, &steps);
        for s in &snapshots {
            let mut expected: BTreeSet<Vec<u8>> = BTreeSet::new();
            for &a in &s.history {
                if let Op::Add { member } = &ops[a].op
                    && !s.history.iter().any(|&x| set_supersedes(&ops, x, a))
                {
                    expected.insert(member.clone());
                }
            }
            prop_assert_eq!(s.entry.read(), ReadValue::Set(expected.into_iter().collect()));
        }
    }
}

/// An add concurrent with a remove of the same member survives the join
/// (add wins), while an add the remover had observed does not.
#[test]
fn a_concurrent_add_survives_a_remove_but_an_observed_add_does_not() {
    let (a, b) = (NodeId(1), NodeId(2));
    let t = |p: u64, n: NodeId| Timestamp { physical_us: p, logical: 0, node: n };
    let mut ra = Entry::empty(ValueType::Set);
    ra.apply(&Op::Add { member: b"x".to_vec() }, Dot { node: a, counter: 1 }, t(1, a)).unwrap();
    let mut rb = ra.clone();
    rb.apply(&Op::Remove { member: b"x".to_vec(), context: None }, Dot { node: b, counter: 1 }, t(2, b)).unwrap();
    assert_eq!(joined(&ra, &rb).read(), ReadValue::Set(vec![]), "the observed add is removed");
    ra.apply(&Op::Add { member: b"x".to_vec() }, Dot { node: a, counter: 2 }, t(3, a)).unwrap();
    assert_eq!(joined(&ra, &rb).read(), ReadValue::Set(vec![b"x".to_vec()]), "the concurrent add wins");
    assert_eq!(joined(&rb, &ra).read(), ReadValue::Set(vec![b"x".to_vec()]), "in either join order");
}

/// An `mv` register keeps concurrent writes as siblings, and the
/// writer side caps them at `SIBLINGS_MAX`. But the join must not trim (it
/// would stop being a join), so concurrent writes from more than
/// `SIBLINGS_MAX` distinct nodes produce a reachable state with more
/// siblings — which `Entry::validate` (and so `wire::decode` and
/// `Node::recover`) must still accept, or such a key can never be synced
/// or recovered again.
#[test]
fn validate_accepts_an_mv_join_of_more_concurrent_writers_than_the_sibling_cap() {
    let writers = chorus_core::limits::SIBLINGS_MAX as u64 + 1;
    let mut acc = Entry::empty(ValueType::Mv);
    for n in 1..=writers {
        let node = NodeId(n);
        let mut e = Entry::empty(ValueType::Mv);
        e.apply(
            &Op::Put { value: vec![n as u8], context: None },
            Dot { node, counter: 1 },
            Timestamp { physical_us: 1, logical: 0, node },
        )
        .unwrap();
        acc.join(&e).unwrap();
    }
    let ReadValue::Mv(values) = acc.read() else { unreachable!("mv entry") };
    assert_eq!(values.len() as u64, writers, "every concurrent write is a sibling");
    assert_eq!(acc.validate(chorus_core::limits::VALUE_BYTES_DEFAULT), Ok(()));
}
