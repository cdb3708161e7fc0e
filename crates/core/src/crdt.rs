//! CRDT value types of eventual namespaces (`docs/design/replication.md`,
//! "State"). The papers that define these types, and the implementations they
//! follow, are listed in that page's "References".
//!
//! Every entry is a *state-based* CRDT that carries its own causal context: a
//! version vector `clock` in which `clock[n] = c` means "this state reflects
//! every write node `n` made to this key up to its namespace counter `c`". A
//! node's writes to one key are sequential on that node, so the per-key clock
//! is a faithful summary of which of the key's dots a state has observed. That
//! makes each entry self-contained: joining two entries never needs
//! namespace-wide context, which is what lets the replication protocol ship
//! whole key states in any order, any number of times (delta-state shipping,
//! at key granularity).
//!
//! * `lww` — last-writer-wins register: greatest HLC timestamp wins; the node
//!   id inside the timestamp breaks ties. Deletes are tombstones.
//! * `mv` — multi-value register as a DVV set: concurrent writes are kept as
//!   siblings; a write with a context replaces the siblings that context
//!   covers.
//! * `counter` — PN-counter: per node a monotone increment and decrement
//!   total.
//! * `set` — add-wins observed-remove set in its optimized form with a causal
//!   context (the optimized OR-set, ORSWOT).
//!
//! Join rule shared by `mv` and `set` (the dot-kernel join): an element dot
//! survives iff both sides have it, or the other side's clock has not seen
//! it. States are valid when every element dot is covered by the clock;
//! decoding checks that, because the join is only a lattice join on valid
//! states.

use crate::causal::{Dot, VersionVector};
use crate::hlc::Timestamp;
use crate::types::{NodeId, limits};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The value type of a namespace (the four types of
/// `docs/design/replication.md`, "State").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ValueType {
    Lww,
    Mv,
    Counter,
    Set,
}

impl ValueType {
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::Lww => "lww",
            ValueType::Mv => "mv",
            ValueType::Counter => "counter",
            ValueType::Set => "set",
        }
    }

    pub fn parse(s: &str) -> Option<ValueType> {
        match s {
            "lww" => Some(ValueType::Lww),
            "mv" => Some(ValueType::Mv),
            "counter" => Some(ValueType::Counter),
            "set" => Some(ValueType::Set),
            _ => None,
        }
    }
}

/// A client operation on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `lww`, `mv`. For `mv`, `context` is the clock the client read: the
    /// siblings it covers are replaced. Without one the value becomes a new
    /// sibling, as in DVV sets (see `docs/design/replication.md`,
    /// "References"). `lww` ignores the context.
    Put { value: Vec<u8>, context: Option<VersionVector> },
    /// `lww`, `mv`: a tombstone. For `mv` the context says what is deleted.
    Delete { context: Option<VersionVector> },
    /// `counter`: add a signed amount.
    Increment { amount: i64 },
    /// `set`: add a member.
    Add { member: Vec<u8> },
    /// `set`: remove a member as observed under `context` (all observed
    /// additions of it when `None`). A concurrent unobserved add wins.
    Remove { member: Vec<u8>, context: Option<VersionVector> },
}

impl Op {
    pub fn applies_to(&self, ty: ValueType) -> bool {
        matches!(
            (self, ty),
            (Op::Put { .. } | Op::Delete { .. }, ValueType::Lww | ValueType::Mv)
                | (Op::Increment { .. }, ValueType::Counter)
                | (Op::Add { .. } | Op::Remove { .. }, ValueType::Set)
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            Op::Put { .. } => "put",
            Op::Delete { .. } => "delete",
            Op::Increment { .. } => "increment",
            Op::Add { .. } => "add",
            Op::Remove { .. } => "remove",
        }
    }
}

/// Why an operation could not be applied. The entry is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    #[error("operation {op} does not apply to a {ty} value")]
    WrongType { op: &'static str, ty: &'static str },
    #[error("counter overflow")]
    CounterOverflow,
    #[error("set has {members} members, the limit is {max}")]
    TooManyMembers { members: usize, max: usize },
}

/// Why two entries could not be joined. Neither entry is changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    #[error("cannot join a {ours} entry with a {theirs} entry")]
    TypeMismatch { ours: &'static str, theirs: &'static str },
}

/// A structural defect found in a decoded entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidEntry {
    #[error("clock has a zero entry")]
    ZeroClockEntry,
    #[error("clock has {0} entries, over the limit")]
    ClockTooLarge(usize),
    #[error("element dot {0} is not covered by the entry's clock")]
    DotNotInClock(Dot),
    #[error("{what} is {len} bytes, over the limit of {max}")]
    TooLarge { what: &'static str, len: usize, max: usize },
    #[error("siblings are not sorted by dot or repeat a dot")]
    UnsortedSiblings,
    #[error("set member has no dots")]
    EmptyMember,
    #[error("write timestamp's node does not match its dot")]
    TimestampNodeMismatch,
}

/// Last-writer-wins register. `value == None` is a tombstone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwRegister {
    pub clock: VersionVector,
    pub ts: Timestamp,
    pub value: Option<Vec<u8>>,
}

/// One value of a multi-value register. `value == None` is a tombstone
/// sibling (a delete concurrent with other writes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    pub dot: Dot,
    pub ts: Timestamp,
    pub value: Option<Vec<u8>>,
}

/// Multi-value register (DVV set). Siblings are sorted by dot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MvRegister {
    pub clock: VersionVector,
    pub siblings: Vec<Sibling>,
}

/// PN-counter: per node, the monotone totals of its increments and decrements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PnCounter {
    pub clock: VersionVector,
    pub totals: BTreeMap<NodeId, (u64, u64)>,
    /// Greatest write timestamp seen, kept so receivers can check clocks.
    pub ts: Timestamp,
}

/// Add-wins observed-remove set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrSet {
    pub clock: VersionVector,
    pub members: BTreeMap<Vec<u8>, BTreeSet<Dot>>,
    /// Greatest write timestamp seen, kept so receivers can check clocks.
    pub ts: Timestamp,
}

/// The state of one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    Lww(LwwRegister),
    Mv(MvRegister),
    Counter(PnCounter),
    Set(OrSet),
}

/// What a read returns (before the edge turns it into JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadValue {
    /// `None`: deleted.
    Lww(Option<Vec<u8>>),
    /// The live siblings' values (tombstone siblings are omitted).
    Mv(Vec<Vec<u8>>),
    Counter(i64),
    Set(Vec<Vec<u8>>),
}

impl Entry {
    /// An upper estimate of the entry's encoded size, without encoding it:
    /// values and members plus a fixed allowance per clock entry, dot and
    /// timestamp. Bounds messages and batches cheaply.
    pub fn size_estimate(&self) -> usize {
        const PER_DOT: usize = 24;
        let clock = self.clock().len() * PER_DOT;
        clock
            + match self {
                Entry::Lww(r) => r.value.as_ref().map_or(0, Vec::len) + PER_DOT,
                Entry::Mv(r) => r.siblings.iter().map(|s| s.value.as_ref().map_or(0, Vec::len) + 2 * PER_DOT).sum(),
                Entry::Counter(c) => c.totals.len() * PER_DOT + PER_DOT,
                Entry::Set(set) => {
                    set.members.iter().map(|(m, dots)| m.len() + dots.len() * PER_DOT).sum::<usize>() + PER_DOT
                }
            }
    }

    /// The bottom element of a type's lattice.
    pub fn empty(ty: ValueType) -> Entry {
        match ty {
            ValueType::Lww => Entry::Lww(LwwRegister { clock: VersionVector::new(), ts: Timestamp::ZERO, value: None }),
            ValueType::Mv => Entry::Mv(MvRegister { clock: VersionVector::new(), siblings: Vec::new() }),
            ValueType::Counter => {
                Entry::Counter(PnCounter { clock: VersionVector::new(), totals: BTreeMap::new(), ts: Timestamp::ZERO })
            }
            ValueType::Set => {
                Entry::Set(OrSet { clock: VersionVector::new(), members: BTreeMap::new(), ts: Timestamp::ZERO })
            }
        }
    }

    pub fn value_type(&self) -> ValueType {
        match self {
            Entry::Lww(_) => ValueType::Lww,
            Entry::Mv(_) => ValueType::Mv,
            Entry::Counter(_) => ValueType::Counter,
            Entry::Set(_) => ValueType::Set,
        }
    }

    pub fn clock(&self) -> &VersionVector {
        match self {
            Entry::Lww(r) => &r.clock,
            Entry::Mv(r) => &r.clock,
            Entry::Counter(c) => &c.clock,
            Entry::Set(s) => &s.clock,
        }
    }

    /// The greatest write timestamp in this state (receivers check it
    /// against their clock before accepting the entry).
    pub fn timestamp_max(&self) -> Timestamp {
        match self {
            Entry::Lww(r) => r.ts,
            Entry::Mv(r) => r.siblings.iter().map(|s| s.ts).max().unwrap_or(Timestamp::ZERO),
            Entry::Counter(c) => c.ts,
            Entry::Set(s) => s.ts,
        }
    }

    /// A state that reads as absent and may be collected once causally
    /// stable. Counters are never tombstones: they have no delete.
    pub fn is_tombstone(&self) -> bool {
        match self {
            Entry::Lww(r) => r.value.is_none(),
            Entry::Mv(r) => r.siblings.iter().all(|s| s.value.is_none()),
            Entry::Counter(_) => false,
            Entry::Set(s) => s.members.is_empty(),
        }
    }

    /// Whether the state holds anything that stability-based collection
    /// may remove: it is a tombstone, or an MV register with tombstone
    /// siblings.
    pub fn has_tombstone_parts(&self) -> bool {
        match self {
            Entry::Mv(r) => r.siblings.iter().any(|s| s.value.is_none()),
            other => other.is_tombstone(),
        }
    }

    /// Drop tombstone siblings whose dot `stable` covers (MV only). Returns
    /// whether anything was dropped. Valid only under the causal-stability
    /// conditions of [`crate::namespace`]'s GC epoch: every node has seen
    /// the dot and we have seen every write concurrent with it, so no state
    /// anywhere can still need the sibling to win a join.
    pub fn prune_stable_tombstone_siblings(&mut self, stable: &VersionVector) -> bool {
        let Entry::Mv(r) = self else { return false };
        let before = r.siblings.len();
        r.siblings.retain(|s| s.value.is_some() || !stable.contains(s.dot));
        r.siblings.len() != before
    }

    /// Apply a local operation as the write `dot` at time `ts`. The caller
    /// guarantees `dot` is fresh (greater than every dot of `dot.node` so
    /// far) and `ts` greater than every timestamp this node issued.
    pub fn apply(&mut self, op: &Op, dot: Dot, ts: Timestamp) -> Result<(), OpError> {
        let ty = self.value_type();
        if !op.applies_to(ty) {
            return Err(OpError::WrongType { op: op.name(), ty: ty.as_str() });
        }
        match (self, op) {
            (Entry::Lww(r), Op::Put { value, .. }) => {
                r.clock.raise(dot.node, dot.counter);
                if ts > r.ts {
                    r.ts = ts;
                    r.value = Some(value.clone());
                }
            }
            (Entry::Lww(r), Op::Delete { .. }) => {
                r.clock.raise(dot.node, dot.counter);
                if ts > r.ts {
                    r.ts = ts;
                    r.value = None;
                }
            }
            (Entry::Mv(r), Op::Put { value, context }) => {
                mv_write(r, dot, ts, Some(value.clone()), context.as_ref());
            }
            (Entry::Mv(r), Op::Delete { context }) => {
                mv_write(r, dot, ts, None, context.as_ref());
            }
            (Entry::Counter(c), Op::Increment { amount }) => {
                let (p, n) = c.totals.get(&dot.node).copied().unwrap_or((0, 0));
                let magnitude = amount.unsigned_abs();
                let next = if *amount >= 0 {
                    (p.checked_add(magnitude).ok_or(OpError::CounterOverflow)?, n)
                } else {
                    (p, n.checked_add(magnitude).ok_or(OpError::CounterOverflow)?)
                };
                c.totals.insert(dot.node, next);
                c.clock.raise(dot.node, dot.counter);
                c.ts = c.ts.max(ts);
            }
            (Entry::Set(s), Op::Add { member }) => {
                if !s.members.contains_key(member) && s.members.len() >= limits::SET_MEMBERS_MAX {
                    return Err(OpError::TooManyMembers { members: s.members.len(), max: limits::SET_MEMBERS_MAX });
                }
                // The new dot supersedes the member's observed dots: they are
                // covered by our clock, so peers holding them drop them on join.
                s.members.insert(member.clone(), BTreeSet::from([dot]));
                s.clock.raise(dot.node, dot.counter);
                s.ts = s.ts.max(ts);
            }
            (Entry::Set(s), Op::Remove { member, context }) => {
                if let Some(dots) = s.members.get_mut(member) {
                    match context {
                        Some(ctx) => dots.retain(|d| !ctx.contains(*d)),
                        None => dots.clear(),
                    }
                    if dots.is_empty() {
                        s.members.remove(member);
                    }
                }
                // The remove is itself a write with its own dot so that it is
                // indexed, broadcast and repaired like any other.
                s.clock.raise(dot.node, dot.counter);
                s.ts = s.ts.max(ts);
            }
            _ => return Err(OpError::WrongType { op: op.name(), ty: ty.as_str() }),
        }
        Ok(())
    }

    /// Join `other` into `self` (least upper bound). Returns whether `self`
    /// changed. Commutative, associative and idempotent on valid states.
    pub fn join(&mut self, other: &Entry) -> Result<bool, JoinError> {
        let before_len = self.clock().len();
        let changed = match (&mut *self, other) {
            (Entry::Lww(a), Entry::Lww(b)) => {
                let mut changed = false;
                if b.ts > a.ts {
                    a.ts = b.ts;
                    a.value = b.value.clone();
                    changed = true;
                }
                changed |= merge_clock(&mut a.clock, &b.clock);
                changed
            }
            (Entry::Mv(a), Entry::Mv(b)) => {
                let joined = dot_kernel_join_siblings(a, b);
                let changed = joined != a.siblings;
                a.siblings = joined;
                merge_clock(&mut a.clock, &b.clock) | changed
            }
            (Entry::Counter(a), Entry::Counter(b)) => {
                let mut changed = false;
                for (node, &(bp, bn)) in &b.totals {
                    let e = a.totals.entry(*node).or_insert((0, 0));
                    let next = (e.0.max(bp), e.1.max(bn));
                    if next != *e {
                        *e = next;
                        changed = true;
                    }
                }
                if b.ts > a.ts {
                    a.ts = b.ts;
                    changed = true;
                }
                merge_clock(&mut a.clock, &b.clock) | changed
            }
            (Entry::Set(a), Entry::Set(b)) => {
                let mut members: BTreeMap<Vec<u8>, BTreeSet<Dot>> = BTreeMap::new();
                let keys: BTreeSet<&Vec<u8>> = a.members.keys().chain(b.members.keys()).collect();
                let empty = BTreeSet::new();
                for m in keys {
                    let da = a.members.get(m).unwrap_or(&empty);
                    let db = b.members.get(m).unwrap_or(&empty);
                    let kept: BTreeSet<Dot> = da
                        .iter()
                        .filter(|d| db.contains(d) || !b.clock.contains(**d))
                        .chain(db.iter().filter(|d| !a.clock.contains(**d)))
                        .copied()
                        .collect();
                    if !kept.is_empty() {
                        members.insert(m.clone(), kept);
                    }
                }
                let mut changed = members != a.members;
                a.members = members;
                if b.ts > a.ts {
                    a.ts = b.ts;
                    changed = true;
                }
                merge_clock(&mut a.clock, &b.clock) | changed
            }
            (a, b) => {
                return Err(JoinError::TypeMismatch { ours: a.value_type().as_str(), theirs: b.value_type().as_str() });
            }
        };
        debug_assert!(self.clock().len() >= before_len);
        Ok(changed)
    }

    /// What a client sees.
    pub fn read(&self) -> ReadValue {
        match self {
            Entry::Lww(r) => ReadValue::Lww(r.value.clone()),
            Entry::Mv(r) => ReadValue::Mv(r.siblings.iter().filter_map(|s| s.value.clone()).collect()),
            Entry::Counter(c) => {
                let sum: i128 = c.totals.values().map(|&(p, n)| i128::from(p) - i128::from(n)).sum();
                ReadValue::Counter(sum.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
            }
            Entry::Set(s) => ReadValue::Set(s.members.keys().cloned().collect()),
        }
    }

    /// Structural checks for a state that came from outside (wire or disk).
    pub fn validate(&self, value_bytes_max: usize) -> Result<(), InvalidEntry> {
        let clock = self.clock();
        if clock.has_zero_entry() {
            return Err(InvalidEntry::ZeroClockEntry);
        }
        if clock.len() > limits::CLOCK_ENTRIES_MAX {
            return Err(InvalidEntry::ClockTooLarge(clock.len()));
        }
        let check_value = |v: &Option<Vec<u8>>| match v {
            Some(v) if v.len() > value_bytes_max => {
                Err(InvalidEntry::TooLarge { what: "value", len: v.len(), max: value_bytes_max })
            }
            _ => Ok(()),
        };
        match self {
            Entry::Lww(r) => check_value(&r.value)?,
            Entry::Mv(r) => {
                // Writers keep at most SIBLINGS_MAX, but a join of many
                // writers' states legitimately holds more; the bound that
                // holds for every reachable state is the clock bound.
                if r.siblings.len() > limits::CLOCK_ENTRIES_MAX {
                    return Err(InvalidEntry::TooLarge {
                        what: "sibling list",
                        len: r.siblings.len(),
                        max: limits::CLOCK_ENTRIES_MAX,
                    });
                }
                if r.siblings.windows(2).any(|w| w[0].dot >= w[1].dot) {
                    return Err(InvalidEntry::UnsortedSiblings);
                }
                for s in &r.siblings {
                    if !r.clock.contains(s.dot) {
                        return Err(InvalidEntry::DotNotInClock(s.dot));
                    }
                    if s.ts.node != s.dot.node {
                        return Err(InvalidEntry::TimestampNodeMismatch);
                    }
                    check_value(&s.value)?;
                }
            }
            Entry::Counter(c) => {
                if c.totals.len() > limits::CLOCK_ENTRIES_MAX {
                    return Err(InvalidEntry::ClockTooLarge(c.totals.len()));
                }
            }
            Entry::Set(s) => {
                if s.members.len() > limits::SET_MEMBERS_MAX {
                    return Err(InvalidEntry::TooLarge {
                        what: "set",
                        len: s.members.len(),
                        max: limits::SET_MEMBERS_MAX,
                    });
                }
                for (m, dots) in &s.members {
                    if m.len() > limits::KEY_BYTES_MAX {
                        return Err(InvalidEntry::TooLarge {
                            what: "set member",
                            len: m.len(),
                            max: limits::KEY_BYTES_MAX,
                        });
                    }
                    if dots.is_empty() {
                        return Err(InvalidEntry::EmptyMember);
                    }
                    if let Some(d) = dots.iter().find(|d| !s.clock.contains(**d)) {
                        return Err(InvalidEntry::DotNotInClock(*d));
                    }
                }
            }
        }
        Ok(())
    }

    /// Canonical bytes of this state (equal states encode equally: every
    /// collection is ordered and zero clock entries never exist).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Encoding into a Vec cannot fail for these types (no maps with
        // non-string keys are rejected by postcard); an empty result would
        // only make digests collide, never lose data.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// The state without its clock: values, timestamps and element dots.
    ///
    /// Why the clock is left out: after a tombstone is collected, a later
    /// write to the same key starts a fresh clock on the nodes that collected
    /// it, while nodes that had not collected it yet join the old, causally
    /// stable clock entries in. Both hold the same values and element dots and
    /// behave identically for every future write (the extra entries are
    /// dots every node has seen), but their clocks differ forever. Comparing
    /// states for convergence and reconciliation therefore uses this form.
    pub fn semantic_bytes(&self) -> Vec<u8> {
        let encoded = match self {
            Entry::Lww(r) => postcard::to_stdvec(&(0u8, &r.ts, &r.value)),
            Entry::Mv(r) => postcard::to_stdvec(&(1u8, &r.siblings)),
            Entry::Counter(c) => postcard::to_stdvec(&(2u8, &c.totals)),
            Entry::Set(s) => postcard::to_stdvec(&(3u8, &s.members)),
        };
        encoded.unwrap_or_default()
    }

    /// 16-byte BLAKE3 digest of [`Entry::semantic_bytes`], used by
    /// anti-entropy to compare versions of one key.
    pub fn digest(&self) -> [u8; 16] {
        let h = blake3::hash(&self.semantic_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.as_bytes()[..16]);
        out
    }
}

fn merge_clock(a: &mut VersionVector, b: &VersionVector) -> bool {
    if b.le(a) {
        return false;
    }
    a.merge(b);
    true
}

/// A local write to an MV register: drop the siblings the context covers,
/// add the new one, and keep the sibling list bounded by dropping the oldest
/// (by HLC) — a write may always supersede more, so this stays a valid op.
fn mv_write(r: &mut MvRegister, dot: Dot, ts: Timestamp, value: Option<Vec<u8>>, context: Option<&VersionVector>) {
    if let Some(ctx) = context {
        r.siblings.retain(|s| !ctx.contains(s.dot));
    }
    r.siblings.push(Sibling { dot, ts, value });
    while r.siblings.len() > limits::SIBLINGS_MAX {
        if let Some((oldest, _)) = r.siblings.iter().enumerate().min_by_key(|(_, s)| s.ts) {
            r.siblings.remove(oldest);
        }
    }
    r.siblings.sort_by_key(|s| s.dot);
    r.clock.raise(dot.node, dot.counter);
}

fn dot_kernel_join_siblings(a: &MvRegister, b: &MvRegister) -> Vec<Sibling> {
    let mut out: BTreeMap<Dot, Sibling> = BTreeMap::new();
    for s in &a.siblings {
        let in_b = b.siblings.iter().any(|t| t.dot == s.dot);
        if in_b || !b.clock.contains(s.dot) {
            out.insert(s.dot, s.clone());
        }
    }
    for s in &b.siblings {
        if !a.clock.contains(s.dot) {
            out.entry(s.dot).or_insert_with(|| s.clone());
        }
    }
    out.into_values().collect()
}
