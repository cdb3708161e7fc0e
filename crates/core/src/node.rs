//! The replication state machine of one node (SPEC §3), with no I/O.
//!
//! # Driving a node
//!
//! The driver (the daemon, or the simulator) owns the sockets, the disk and
//! the clock, and calls into the node:
//!
//! * inputs: [`Node::handle_local_writes`], [`Node::handle_message`],
//!   [`Node::handle_timeout`], [`Node::set_members`],
//!   [`Node::create_namespace`]; every input takes the current corrected
//!   physical time in µs;
//! * outputs: after each input, drain [`Node::poll_action`] until `None` and
//!   execute the actions **in order**: a [`Action::Persist`] must be durable
//!   before any later action is executed (that is what keeps a dot from being
//!   seen by a peer before it is on our disk, and what makes a write's
//!   acknowledgement mean "durable");
//! * a local write's result may be returned to its client once every action
//!   queued by the call that accepted it has been executed;
//! * call [`Node::handle_timeout`] when [`Node::poll_timeout`] is reached.
//!
//! Membership is an input: the node never decides who is alive.

use crate::causal::{Dot, SeenSet, VersionVector};
use crate::crdt::{Entry, JoinError, Op, OpError, ReadValue, ValueType};
use crate::hlc::{Hlc, HlcError, Timestamp};
use crate::namespace::{MergeOutcome, Namespace};
use crate::persist::{self, PersistBatch, RecoverError, RecoveryImage, StoreOp};
use crate::rng::Rng;
use crate::types::{Key, NodeId, limits};
use crate::wire::{
    Message, NamespaceDelta, NamespaceSummary, Push, PushItem, ReconcileStep, SyncPush, SyncReply, SyncRequest,
    WireFingerprint, WireSeen,
};
use chorus_reconcile::Reconciler;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Tunables of the replication protocol. Every one has a default.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// This node's tier (0–8); it exchanges data with tiers t-1, t, t+1 only.
    pub tier: u8,
    /// Peers each new write is pushed to; 0 means ceil(log2(peers + 1)).
    pub fanout: u32,
    /// Hops a write is forwarded at most; 0 means ceil(log2(peers + 1)) + 3.
    pub hop_limit: u8,
    /// Period of anti-entropy rounds.
    pub anti_entropy_interval_us: u64,
    /// Remote timestamps further ahead than this are refused (SPEC §6).
    pub max_offset_us: u64,
    /// Entries one sync message carries at most.
    pub sync_entries_max: u32,
    /// Encoded entry bytes one sync message carries at most (soft: at least
    /// one entry always goes).
    pub sync_bytes_max: u32,
    /// Largest value accepted from clients or peers.
    pub value_bytes_max: u32,
    /// Tombstones collected per timeout, to bound the work of one call.
    pub gc_batch_max: u32,
    /// Deliberately broken behaviour, for proving that the simulator's
    /// checkers catch bugs. Never set outside tests.
    pub injected_bug: Option<InjectedBug>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            tier: 0,
            fanout: 0,
            hop_limit: 0,
            anti_entropy_interval_us: 1_000_000,
            max_offset_us: 500_000,
            sync_entries_max: 4096,
            sync_bytes_max: 4 << 20,
            value_bytes_max: limits::VALUE_BYTES_DEFAULT as u32,
            gc_batch_max: 1024,
            injected_bug: None,
        }
    }
}

/// Bugs that tests switch on to show that checkers fail when they should.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedBug {
    /// Mark pushed writes as seen without merging them: anti-entropy then
    /// believes we have them and never repairs the loss.
    SkipMergeOnPush,
}

/// Peers queued for an immediate sync when they come back. When a
/// partition heals a node sees half the cluster return at once; syncing with
/// a few of them is enough, since each of those brings the other side's state.
pub const URGENT_SYNC_MAX: usize = 4;

/// Reconciliation sessions in progress at once (as initiator or responder).
pub const RECONCILE_SESSIONS_MAX: usize = 4;

/// A session with no message for this long is abandoned (the peer died or
/// messages were lost); the next anti-entropy round starts a fresh one.
pub const RECONCILE_SESSION_IDLE_MAX_US: u64 = 10_000_000;

struct ReconcileSession {
    reconciler: Reconciler,
    started_us: u64,
    last_activity_us: u64,
}

/// Sync requests remembered for their replies (one per peer, newest wins).
const PENDING_SYNC_REQUESTS_MAX: usize = 16;

/// Catch-up streams kept at once (see [`Node::deltas_for`]); evicting one
/// only restarts that peer's catch-up from the beginning.
const STREAMS_MAX: usize = 64;

/// A catch-up larger than one message: our seen set when it started and
/// where the next chunk resumes.
struct Stream {
    seen_at_start: SeenSet,
    cursor: (NodeId, u64),
    last_used_us: u64,
}

/// (peer, namespace, session id, whether we initiated it).
type SessionKey = (NodeId, String, u64, bool);

/// Whether nodes of these tiers may exchange data directly (SPEC §3 "Tiers").
pub fn tiers_may_talk(a: u8, b: u8) -> bool {
    a.abs_diff(b) <= 1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
    /// Left gracefully: no longer counted for tombstone stability.
    Left,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub tier: u8,
    pub state: MemberState,
}

/// A client write handed to [`Node::handle_local_writes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalWrite {
    pub namespace: String,
    pub key: Key,
    pub op: Op,
}

/// What an accepted write became.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteReceipt {
    pub dot: Dot,
    pub ts: Timestamp,
    /// The key's causal context after the write.
    pub context: VersionVector,
}

/// Why a local write was refused. State is unchanged for that write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    #[error("namespace {0:?} does not exist")]
    NoSuchNamespace(String),
    #[error("key of {len} bytes exceeds the {max}-byte limit")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value of {len} bytes exceeds the {max}-byte limit")]
    ValueTooLarge { len: usize, max: usize },
    #[error(transparent)]
    Op(#[from] OpError),
    #[error(transparent)]
    Clock(#[from] HlcError),
    #[error("this node has issued 2^64 - 1 writes to the namespace")]
    DotsExhausted,
}

/// Why a namespace could not be created. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NamespaceError {
    #[error("namespace {name:?} already exists with type {existing}")]
    TypeConflict { name: String, existing: &'static str },
    #[error("invalid namespace name {0:?}: use 1-128 characters of A-Z a-z 0-9 _ - .")]
    InvalidName(String),
}

/// Validates a namespace name: 1–128 of `[A-Za-z0-9_.-]`.
pub fn valid_namespace_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= limits::NAMESPACE_NAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A read result: the value and the causal context to hand back on write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResult {
    pub value: ReadValue,
    pub context: VersionVector,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Commit atomically and durably before executing any later action.
    Persist(PersistBatch),
    /// Send a message to a peer (best effort; losses are repaired by
    /// anti-entropy).
    Send { to: NodeId, message: Message },
}

/// Counters the driver exports as metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub local_writes: u64,
    pub push_messages_sent: u64,
    pub push_items_received: u64,
    pub push_duplicates: u64,
    pub push_items_forwarded: u64,
    pub sync_rounds_started: u64,
    pub sync_entries_sent: u64,
    pub sync_entries_received: u64,
    pub sync_entries_repaired: u64,
    pub rejected_clock: u64,
    pub rejected_type: u64,
    pub rejected_tier: u64,
    /// Entries or seen sets claiming writes of ours that we never issued.
    pub rejected_forged: u64,
    pub tombstones_collected: u64,
    /// LWW registers whose value a remote write replaced.
    pub lww_overwrites: u64,
    /// Stored entries that failed their checksum at recovery (repaired
    /// from peers by reconciliation).
    pub corrupt_entries_dropped: u64,
    pub reconcile_sessions_started: u64,
    pub reconcile_sessions_completed: u64,
    pub reconcile_sessions_failed: u64,
    /// Entries sent because a reconciliation session found them differing.
    pub reconcile_entries_sent: u64,
    /// Total duration of completed sessions (µs, by the node's clock).
    pub reconcile_duration_us: u64,
}

#[derive(Clone, Debug)]
struct Peer {
    tier: u8,
    state: MemberState,
    last_sync_us: u64,
}

/// One node's replication state.
pub struct Node {
    id: NodeId,
    config: NodeConfig,
    hlc: Hlc,
    rng: Rng,
    namespaces: BTreeMap<String, Namespace>,
    peers: BTreeMap<NodeId, Peer>,
    /// Alive peers in talking range, recomputed on membership changes so
    /// that gossip target selection costs O(fanout), not O(peers).
    live: Vec<NodeId>,
    urgent_sync: VecDeque<NodeId>,
    actions: VecDeque<Action>,
    next_anti_entropy_us: Option<u64>,
    sessions: BTreeMap<SessionKey, ReconcileSession>,
    /// Our seen prefixes as sent in the last request to each peer: a reply
    /// saying "in sync" means the peer's prefix equalled exactly these,
    /// which is what its GC report must be (never our later, larger one).
    pending_sync: BTreeMap<NodeId, (u64, BTreeMap<String, VersionVector>)>,
    streams: BTreeMap<(NodeId, String), Stream>,
    stats: NodeStats,
}

impl Node {
    /// A fresh node with no state.
    pub fn new(id: NodeId, config: NodeConfig, seed: u64) -> Self {
        let hlc = Hlc::new(id, config.max_offset_us);
        Self {
            id,
            config,
            hlc,
            rng: Rng::new(seed),
            namespaces: BTreeMap::new(),
            peers: BTreeMap::new(),
            live: Vec::new(),
            urgent_sync: VecDeque::new(),
            actions: VecDeque::new(),
            next_anti_entropy_us: None,
            sessions: BTreeMap::new(),
            pending_sync: BTreeMap::new(),
            streams: BTreeMap::new(),
            stats: NodeStats::default(),
        }
    }

    /// Rebuild a node from everything its store holds.
    pub fn recover(id: NodeId, config: NodeConfig, seed: u64, image: &RecoveryImage) -> Result<Self, RecoverError> {
        let mut node = Node::new(id, config, seed);
        let corrupt = |space: &str, key: &[u8], reason: String| RecoverError::Corrupt {
            space: space.to_string(),
            key: key.to_vec(),
            reason,
        };
        if let Some(meta) = image.get(persist::META_SPACE)
            && let Some(bytes) = meta.get(persist::HLC_KEY)
        {
            let hw = persist::decode_hlc(bytes).map_err(|r| corrupt(persist::META_SPACE, persist::HLC_KEY, r))?;
            node.hlc = Hlc::resume(id, node.config.max_offset_us, hw);
        }
        let value_max = node.config.value_bytes_max as usize;
        if let Some(spaces) = image.get(persist::NAMESPACES_SPACE) {
            for (name_bytes, record) in spaces {
                let name = String::from_utf8(name_bytes.clone())
                    .map_err(|_| corrupt(persist::NAMESPACES_SPACE, name_bytes, "name is not UTF-8".into()))?;
                let rec =
                    persist::decode_namespace(record).map_err(|r| corrupt(persist::NAMESPACES_SPACE, name_bytes, r))?;
                let mut ns = Namespace::new(name.clone(), rec.value_type);
                let space = persist::entries_space(&name);
                if let Some(entries) = image.get(&space) {
                    for (key, bytes) in entries {
                        // A corrupt entry is dropped, not fatal: the seen set
                        // still claims its dots, so equal seen sets with
                        // unequal fingerprints make reconciliation fetch it
                        // back from a peer.
                        let er = match persist::decode_entry(bytes) {
                            Ok(er)
                                if er.entry.value_type() == rec.value_type && er.entry.validate(value_max).is_ok() =>
                            {
                                er
                            }
                            _ => {
                                node.stats.corrupt_entries_dropped += 1;
                                continue;
                            }
                        };
                        // Timestamps inside stored entries are ours or were
                        // accepted before; the HLC must stay above them.
                        let ts = er.entry.max_timestamp();
                        if ts > node.hlc.high_water() && ts.node == id {
                            node.hlc = Hlc::resume(id, node.config.max_offset_us, ts);
                        }
                        ns.install(key.clone(), er.entry);
                    }
                }
                // The stored record may predate the entries: fold every
                // entry's clock into it (each clock entry is a dot whose
                // write this entry reflects), and restore our own counter
                // to the greatest own dot anywhere, since own dots are dense
                // and each was durable before it was exposed.
                let mut seen = rec.seen.to_seen();
                let mut own_max = seen.contiguous().get(id);
                for (_, e) in ns.entries() {
                    for (o, c) in e.clock().iter() {
                        seen.insert(Dot { node: o, counter: c });
                    }
                    own_max = own_max.max(e.clock().get(id));
                }
                let (mut prefix, exceptions) = seen.into_parts();
                prefix.raise(id, own_max);
                ns.set_seen(SeenSet::from_parts(prefix, exceptions));
                node.namespaces.insert(name, ns);
            }
        }
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    pub fn hlc_high_water(&self) -> Timestamp {
        self.hlc.high_water()
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    /// Next action for the driver, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Node::handle_timeout`] is next due (absolute µs).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.next_anti_entropy_us
    }

    /// Create a namespace (idempotent for the same type).
    pub fn create_namespace(&mut self, name: &str, value_type: ValueType) -> Result<(), NamespaceError> {
        if !valid_namespace_name(name) {
            return Err(NamespaceError::InvalidName(name.to_string()));
        }
        if let Some(ns) = self.namespaces.get(name) {
            if ns.value_type() == value_type {
                return Ok(());
            }
            return Err(NamespaceError::TypeConflict { name: name.to_string(), existing: ns.value_type().as_str() });
        }
        self.namespaces.insert(name.to_string(), Namespace::new(name.to_string(), value_type));
        let mut batch = PersistBatch::default();
        self.persist_namespace(&mut batch, name);
        self.actions.push_back(Action::Persist(batch));
        Ok(())
    }

    /// Read one key.
    pub fn get(&self, namespace: &str, key: &[u8]) -> Option<ReadResult> {
        let entry = self.namespaces.get(namespace)?.get(key)?;
        if entry.is_tombstone() {
            return None;
        }
        Some(ReadResult { value: entry.read(), context: entry.clock().clone() })
    }

    /// Membership changed. Peers that come back alive are synced with at once.
    pub fn set_members(&mut self, now_us: u64, members: &[Member]) {
        let mut next: BTreeMap<NodeId, Peer> = BTreeMap::new();
        for m in members {
            if m.id == self.id {
                continue;
            }
            let previous = self.peers.get(&m.id);
            let was_alive = previous.is_some_and(|p| p.state == MemberState::Alive);
            if m.state == MemberState::Alive
                && !was_alive
                && tiers_may_talk(self.config.tier, m.tier)
                && self.urgent_sync.len() < URGENT_SYNC_MAX
                && !self.urgent_sync.contains(&m.id)
            {
                self.urgent_sync.push_back(m.id);
            }
            next.insert(
                m.id,
                Peer { tier: m.tier, state: m.state, last_sync_us: previous.map(|p| p.last_sync_us).unwrap_or(0) },
            );
        }
        self.peers = next;
        self.live = self
            .peers
            .iter()
            .filter(|(_, p)| p.state == MemberState::Alive && tiers_may_talk(self.config.tier, p.tier))
            .map(|(&id, _)| id)
            .collect();
        if !self.urgent_sync.is_empty() {
            self.next_anti_entropy_us = Some(now_us);
        } else if self.next_anti_entropy_us.is_none() {
            let jitter = self.rng.below(self.config.anti_entropy_interval_us.max(1));
            self.next_anti_entropy_us = Some(now_us + jitter);
        }
    }

    fn ceil_log2_peers(&self) -> u32 {
        let n = self.peers.len() as u64 + 1;
        64 - (n.saturating_sub(1)).leading_zeros()
    }

    fn fanout(&self) -> usize {
        if self.config.fanout > 0 { self.config.fanout as usize } else { self.ceil_log2_peers().max(1) as usize }
    }

    fn hop_limit(&self) -> u8 {
        if self.config.hop_limit > 0 {
            self.config.hop_limit
        } else {
            (self.ceil_log2_peers() + 3).min(u32::from(u8::MAX)) as u8
        }
    }

    /// Accept a group of client writes (one durable commit for all of them:
    /// group commit happens by the driver handing in many writes at once).
    pub fn handle_local_writes(
        &mut self,
        now_us: u64,
        writes: Vec<LocalWrite>,
    ) -> Vec<Result<WriteReceipt, WriteError>> {
        let mut results = Vec::with_capacity(writes.len());
        let mut batch = PersistBatch::default();
        let mut items: Vec<PushItem> = Vec::new();
        for w in writes {
            match self.apply_local(now_us, &w) {
                Ok((receipt, entry)) => {
                    batch.ops.push(entry_op(&w.namespace, &w.key, &entry));
                    let value_type = entry.value_type();
                    items.push(PushItem {
                        namespace: w.namespace,
                        value_type,
                        dot: receipt.dot,
                        ts: receipt.ts,
                        key: w.key,
                        entry,
                    });
                    self.stats.local_writes += 1;
                    results.push(Ok(receipt));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if items.is_empty() {
            return results;
        }
        // The namespace record is not rewritten here: the new dot is the
        // entry's own clock entry, from which recovery rebuilds the seen set.
        self.persist_hlc(&mut batch);
        self.actions.push_back(Action::Persist(batch));
        let fanout = self.fanout();
        let targets = self.rng.sample_where(&self.live, fanout, |_| true);
        self.send_push(&targets, 0, items);
        results
    }

    fn apply_local(&mut self, now_us: u64, w: &LocalWrite) -> Result<(WriteReceipt, Entry), WriteError> {
        if w.key.len() > limits::KEY_BYTES_MAX {
            return Err(WriteError::KeyTooLarge { len: w.key.len(), max: limits::KEY_BYTES_MAX });
        }
        let value_len = match &w.op {
            Op::Put { value, .. } => value.len(),
            Op::Add { member } | Op::Remove { member, .. } => {
                if member.len() > limits::KEY_BYTES_MAX {
                    return Err(WriteError::KeyTooLarge { len: member.len(), max: limits::KEY_BYTES_MAX });
                }
                0
            }
            _ => 0,
        };
        let value_max = self.config.value_bytes_max as usize;
        if value_len > value_max {
            return Err(WriteError::ValueTooLarge { len: value_len, max: value_max });
        }
        let me = self.id;
        let ns =
            self.namespaces.get_mut(&w.namespace).ok_or_else(|| WriteError::NoSuchNamespace(w.namespace.clone()))?;
        let ty = ns.value_type();
        if !w.op.applies_to(ty) {
            return Err(OpError::WrongType { op: w.op.name(), ty: ty.as_str() }.into());
        }
        let mut entry = ns.get(&w.key).cloned().unwrap_or_else(|| Entry::empty(ty));
        // The timestamp must exceed every one the key has seen so a local
        // write always wins LWW against what the client could have read.
        let key_max = entry.max_timestamp();
        if key_max > self.hlc.high_water() {
            self.hlc.update(key_max, now_us)?;
        }
        let ts = self.hlc.now(now_us)?;
        let dot = ns.next_dot(me).ok_or(WriteError::DotsExhausted)?;
        entry.apply(&w.op, dot, ts)?;
        ns.seen_mut().insert(dot);
        let context = entry.clock().clone();
        ns.install(w.key.clone(), entry.clone());
        Ok((WriteReceipt { dot, ts, context }, entry))
    }

    fn send_push(&mut self, targets: &[NodeId], hops: u8, items: Vec<PushItem>) {
        if items.is_empty() {
            return;
        }
        for chunk in items.chunks(crate::wire::ITEMS_PER_MESSAGE_MAX) {
            for &to in targets {
                self.stats.push_messages_sent += 1;
                self.actions
                    .push_back(Action::Send { to, message: Message::Push(Push { hops, items: chunk.to_vec() }) });
            }
        }
    }

    fn peer_allowed(&mut self, from: NodeId) -> bool {
        match self.peers.get(&from) {
            Some(p) if !tiers_may_talk(self.config.tier, p.tier) => {
                self.stats.rejected_tier += 1;
                false
            }
            _ => true,
        }
    }

    /// A message from a peer (already decoded and validated).
    pub fn handle_message(&mut self, now_us: u64, from: NodeId, message: Message) {
        if !self.peer_allowed(from) {
            return;
        }
        match message {
            Message::Push(p) => self.on_push(now_us, from, p),
            Message::SyncRequest(r) => self.on_sync_request(now_us, from, r),
            Message::SyncReply(r) => self.on_sync_reply(now_us, from, r),
            Message::Reconcile(r) => self.on_reconcile(now_us, from, r),
            Message::SyncPush(p) => {
                let mut batch = PersistBatch::default();
                for d in &p.deltas {
                    self.apply_delta(now_us, from, d, &mut batch);
                }
                self.finish_persist(batch);
            }
        }
    }

    fn ensure_namespace(&mut self, name: &str, value_type: ValueType, batch: &mut PersistBatch) -> bool {
        match self.namespaces.get(name) {
            Some(ns) if ns.value_type() == value_type => true,
            Some(_) => {
                self.stats.rejected_type += 1;
                false
            }
            None => {
                if !valid_namespace_name(name) {
                    return false;
                }
                self.namespaces.insert(name.to_string(), Namespace::new(name.to_string(), value_type));
                self.persist_namespace(batch, name);
                true
            }
        }
    }

    /// Check an incoming entry before merging it: it must not claim writes
    /// of ours that we never issued (a forged or corrupt state would poison
    /// our dot counter), and its timestamps must pass our clock check (they
    /// are then folded into the HLC). A refused entry is dropped whole.
    fn admit(&mut self, now_us: u64, namespace: &str, entry: &Entry) -> bool {
        let own = self.namespaces.get(namespace).map(|ns| ns.own_counter(self.id)).unwrap_or(0);
        if entry.clock().get(self.id) > own {
            self.stats.rejected_forged += 1;
            return false;
        }
        let ts = entry.max_timestamp();
        if ts == Timestamp::ZERO {
            return true;
        }
        match self.hlc.update(ts, now_us) {
            Ok(_) => true,
            Err(_) => {
                self.stats.rejected_clock += 1;
                false
            }
        }
    }

    fn on_push(&mut self, now_us: u64, from: NodeId, push: Push) {
        let mut batch = PersistBatch::default();
        let mut forward: Vec<PushItem> = Vec::new();
        let mut origins: BTreeSet<NodeId> = BTreeSet::new();
        for item in push.items {
            self.stats.push_items_received += 1;
            if !self.ensure_namespace(&item.namespace, item.value_type, &mut batch) {
                continue;
            }
            let already = self.namespaces.get(&item.namespace).is_some_and(|ns| ns.seen().contains(item.dot));
            if already {
                self.stats.push_duplicates += 1;
                continue;
            }
            if !self.admit(now_us, &item.namespace, &item.entry) {
                continue;
            }
            let Some(ns) = self.namespaces.get_mut(&item.namespace) else { continue };
            if self.config.injected_bug == Some(InjectedBug::SkipMergeOnPush) {
                ns.seen_mut().insert(item.dot);
            } else {
                let before = lww_value_ts(ns.get(&item.key));
                match ns.merge(&item.key, &item.entry) {
                    Ok(MergeOutcome::Changed) => {
                        if let Some(e) = ns.get(&item.key) {
                            if before.is_some_and(|b| Some(b) != lww_value_ts(Some(e))) {
                                self.stats.lww_overwrites += 1;
                            }
                            batch.ops.push(entry_op(&item.namespace, &item.key, e));
                        }
                    }
                    Ok(MergeOutcome::Unchanged) => {}
                    Err(JoinError::TypeMismatch { .. }) => {
                        self.stats.rejected_type += 1;
                        continue;
                    }
                }
                ns.seen_mut().insert(item.dot);
            }
            origins.insert(item.dot.node);
            forward.push(item);
        }
        self.finish_persist(batch);
        let next_hops = push.hops.saturating_add(1);
        if next_hops < self.hop_limit() && !forward.is_empty() {
            let fanout = self.fanout();
            let targets = self.rng.sample_where(&self.live, fanout, |p| *p != from && !origins.contains(p));
            self.stats.push_items_forwarded += forward.len() as u64;
            self.send_push(&targets, next_hops, forward);
        }
    }

    fn finish_persist(&mut self, mut batch: PersistBatch) {
        if batch.ops.is_empty() {
            return;
        }
        self.persist_hlc(&mut batch);
        self.actions.push_back(Action::Persist(batch));
    }

    /// Start an anti-entropy round and collect stable tombstones.
    pub fn handle_timeout(&mut self, now_us: u64) {
        let Some(due) = self.next_anti_entropy_us else { return };
        if now_us < due {
            return;
        }
        let interval = self.config.anti_entropy_interval_us.max(1);
        // ±10 % jitter keeps nodes from synchronizing their rounds.
        let jitter = self.rng.below(interval / 5 + 1);
        self.next_anti_entropy_us = Some(now_us + interval - interval / 10 + jitter);
        self.collect_garbage();
        let before = self.sessions.len();
        self.sessions.retain(|_, s| now_us.saturating_sub(s.last_activity_us) <= RECONCILE_SESSION_IDLE_MAX_US);
        self.stats.reconcile_sessions_failed += (before - self.sessions.len()) as u64;
        let peer = loop {
            match self.urgent_sync.pop_front() {
                Some(p) if self.peers.get(&p).is_some_and(|x| x.state == MemberState::Alive) => break Some(p),
                Some(_) => continue,
                None => break self.least_recently_synced(),
            }
        };
        if let Some(peer) = peer {
            if !self.urgent_sync.is_empty() {
                self.next_anti_entropy_us = Some(now_us);
            }
            self.start_sync(now_us, peer);
        }
    }

    fn least_recently_synced(&mut self) -> Option<NodeId> {
        let oldest = self.live.iter().filter_map(|id| self.peers.get(id).map(|p| p.last_sync_us)).min()?;
        let candidates: Vec<NodeId> = self
            .live
            .iter()
            .copied()
            .filter(|id| self.peers.get(id).is_some_and(|p| p.last_sync_us == oldest))
            .collect();
        self.rng.choose_distinct(&candidates, 1).pop()
    }

    /// Begin a push-pull anti-entropy exchange with `peer` now.
    pub fn start_sync(&mut self, now_us: u64, peer: NodeId) {
        self.stats.sync_rounds_started += 1;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.last_sync_us = now_us.max(1);
        }
        let me = self.id;
        for ns in self.namespaces.values_mut() {
            let prefix = ns.seen().contiguous().clone();
            ns.gc.report(me, &prefix);
        }
        let prefixes: BTreeMap<String, VersionVector> =
            self.namespaces.values().map(|ns| (ns.name().to_string(), ns.seen().contiguous().clone())).collect();
        self.pending_sync.insert(peer, (now_us, prefixes));
        while self.pending_sync.len() > PENDING_SYNC_REQUESTS_MAX {
            let oldest = self.pending_sync.iter().min_by_key(|(_, (at, _))| *at).map(|(p, _)| *p);
            if let Some(p) = oldest {
                self.pending_sync.remove(&p);
            }
        }
        let summaries = self
            .namespaces
            .values()
            .map(|ns| NamespaceSummary {
                namespace: ns.name().to_string(),
                value_type: ns.value_type(),
                seen: WireSeen::from(ns.seen()),
                fingerprint: wire_fingerprint(ns),
            })
            .collect();
        self.actions.push_back(Action::Send { to: peer, message: Message::SyncRequest(SyncRequest { summaries }) });
    }

    /// What `peer` lacks, per namespace: every namespace the peer named,
    /// plus (with `include_unnamed`) every namespace of ours it did not name.
    ///
    /// A delta may carry only part of what the peer lacks (message bounds).
    /// The peer may fold our seen set into its own only after receiving
    /// *everything* it lacked relative to that seen set — chunks alone never
    /// let it, because dots superseded on the same key appear in no entry's
    /// clock. So a truncated delta starts a *stream*: we remember our seen
    /// set at its start and where the scan stopped; later deltas to the same
    /// peer resume from there, and the delta that reaches the end carries
    /// the start's seen set with `complete`. Every entry that had a clock
    /// entry the peer had not seen at the start is in some chunk (an entry
    /// that changes meanwhile only moves to a later index position), which
    /// makes that merge sound.
    fn deltas_for(
        &mut self,
        now_us: u64,
        peer: NodeId,
        peer_seen: &BTreeMap<String, (ValueType, SeenSet)>,
        include_unnamed: bool,
    ) -> Vec<NamespaceDelta> {
        let mut budget_entries = self.config.sync_entries_max as usize;
        let mut budget_bytes = self.config.sync_bytes_max as usize;
        let empty = SeenSet::new();
        let mut names: BTreeSet<String> =
            if include_unnamed { self.namespaces.keys().cloned().collect() } else { BTreeSet::new() };
        names.extend(peer_seen.keys().cloned());
        let mut deltas = Vec::new();
        for name in names {
            match self.namespaces.get(&name) {
                Some(ns) => {
                    let theirs = peer_seen.get(&name).map(|(_, s)| s).unwrap_or(&empty);
                    let stream_key = (peer, name.clone());
                    let resume = self.streams.get(&stream_key).map(|s| s.cursor);
                    let (entries, stopped) = ns.missing_for(theirs, resume, budget_entries, budget_bytes);
                    budget_entries = budget_entries.saturating_sub(entries.len());
                    let bytes: usize = entries.iter().map(|(k, e)| k.len() + e.canonical_bytes().len()).sum();
                    budget_bytes = budget_bytes.saturating_sub(bytes);
                    self.stats.sync_entries_sent += entries.len() as u64;
                    let value_type = ns.value_type();
                    let current = ns.seen().clone();
                    let (seen, complete) = match stopped {
                        None => match self.streams.remove(&stream_key) {
                            Some(stream) => (stream.seen_at_start, true),
                            None => (current, true),
                        },
                        Some(cursor) => {
                            let stream = self.streams.entry(stream_key).or_insert(Stream {
                                seen_at_start: current.clone(),
                                cursor,
                                last_used_us: now_us,
                            });
                            stream.cursor = cursor;
                            stream.last_used_us = now_us;
                            (current, false)
                        }
                    };
                    deltas.push(NamespaceDelta {
                        namespace: name.clone(),
                        value_type,
                        entries,
                        complete,
                        seen: WireSeen::from(&seen),
                    });
                }
                None => {
                    // We lack it entirely: an empty seen set asks for everything.
                    if let Some((ty, _)) = peer_seen.get(&name) {
                        deltas.push(NamespaceDelta {
                            namespace: name.clone(),
                            value_type: *ty,
                            entries: Vec::new(),
                            complete: true,
                            seen: WireSeen::from(&empty),
                        });
                    }
                }
            }
        }
        // A catch-up in progress continues at once instead of waiting for
        // the next round to pick this peer again.
        if deltas.iter().any(|d| !d.complete) && !self.urgent_sync.contains(&peer) {
            if self.urgent_sync.len() >= URGENT_SYNC_MAX {
                self.urgent_sync.pop_back();
            }
            self.urgent_sync.push_front(peer);
            self.next_anti_entropy_us = Some(now_us);
        }
        while self.streams.len() > STREAMS_MAX {
            let oldest = self.streams.iter().min_by_key(|(_, s)| s.last_used_us).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.streams.remove(&k);
            }
        }
        deltas
    }

    fn on_sync_request(&mut self, now_us: u64, from: NodeId, request: SyncRequest) {
        let mut peer_seen = BTreeMap::new();
        let mut in_sync: BTreeSet<String> = BTreeSet::new();
        let mut diverged: Vec<String> = Vec::new();
        for s in request.summaries {
            let seen = s.seen.to_seen();
            if let Some(ns) = self.namespaces.get_mut(&s.namespace) {
                ns.gc.report(from, seen.contiguous());
                if WireSeen::from(ns.seen()) == s.seen {
                    // Equal seen sets: nothing to send by version vector.
                    // Equal fingerprints too: the fast path, nothing at all.
                    // Unequal fingerprints: silent divergence (a corrupt or
                    // stale entry) that only reconciliation can find.
                    in_sync.insert(s.namespace.clone());
                    if wire_fingerprint(ns) != s.fingerprint {
                        diverged.push(s.namespace.clone());
                    }
                }
            }
            peer_seen.insert(s.namespace, (s.value_type, seen));
        }
        let deltas: Vec<NamespaceDelta> = self
            .deltas_for(now_us, from, &peer_seen, true)
            .into_iter()
            .filter(|d| !in_sync.contains(&d.namespace))
            .collect();
        let in_sync: Vec<String> = in_sync.into_iter().collect();
        self.actions.push_back(Action::Send { to: from, message: Message::SyncReply(SyncReply { deltas, in_sync }) });
        for name in diverged {
            self.start_reconcile(now_us, from, &name);
        }
    }

    /// Start a reconciliation session for one namespace with `peer`.
    pub fn start_reconcile(&mut self, now_us: u64, peer: NodeId, namespace: &str) {
        if self.sessions.len() >= RECONCILE_SESSIONS_MAX
            || self.sessions.keys().any(|(p, n, _, _)| *p == peer && n == namespace)
        {
            return;
        }
        let Some(ns) = self.namespaces.get(namespace) else { return };
        let (reconciler, first) = Reconciler::initiate(ns.reconcile_index());
        let session = self.rng.next_u64();
        self.stats.reconcile_sessions_started += 1;
        self.sessions.insert(
            (peer, namespace.to_string(), session, true),
            ReconcileSession { reconciler, started_us: now_us, last_activity_us: now_us },
        );
        self.actions.push_back(Action::Send {
            to: peer,
            message: Message::Reconcile(ReconcileStep {
                namespace: namespace.to_string(),
                session,
                from_initiator: true,
                body: first.encode(),
            }),
        });
    }

    fn on_reconcile(&mut self, now_us: u64, from: NodeId, step: ReconcileStep) {
        let key: SessionKey = (from, step.namespace.clone(), step.session, !step.from_initiator);
        let Some(ns) = self.namespaces.get(&step.namespace) else { return };
        let body = match chorus_reconcile::Message::decode(&step.body) {
            Ok(m) => m,
            Err(_) => {
                self.stats.reconcile_sessions_failed += 1;
                self.sessions.remove(&key);
                return;
            }
        };
        if !self.sessions.contains_key(&key) {
            if !step.from_initiator || self.sessions.len() >= RECONCILE_SESSIONS_MAX {
                // A reply for a session we abandoned, or too many sessions:
                // the initiator's session will expire and a later round retry.
                return;
            }
            self.stats.reconcile_sessions_started += 1;
            self.sessions.insert(
                key.clone(),
                ReconcileSession { reconciler: Reconciler::responder(), started_us: now_us, last_activity_us: now_us },
            );
        }
        let Some(session) = self.sessions.get_mut(&key) else { return };
        session.last_activity_us = now_us;
        let result = session.reconciler.handle(ns.reconcile_index(), body);
        let started_us = session.started_us;
        match result {
            Ok(out) => {
                if let Some(reply) = out.reply {
                    self.actions.push_back(Action::Send {
                        to: from,
                        message: Message::Reconcile(ReconcileStep {
                            namespace: step.namespace.clone(),
                            session: step.session,
                            from_initiator: !step.from_initiator,
                            body: reply.encode(),
                        }),
                    });
                }
                // Send our version of every key found to differ; the peer
                // sends its own for the same keys, and both join.
                if !out.have.is_empty() {
                    let entries: Vec<(Key, Entry)> =
                        out.have.iter().filter_map(|k| ns.get(k).map(|e| (k.clone(), e.clone()))).collect();
                    self.stats.reconcile_entries_sent += entries.len() as u64;
                    for chunk in entries.chunks(self.config.sync_entries_max.max(1) as usize) {
                        self.actions.push_back(Action::Send {
                            to: from,
                            message: Message::SyncPush(SyncPush {
                                deltas: vec![NamespaceDelta {
                                    namespace: step.namespace.clone(),
                                    value_type: ns.value_type(),
                                    entries: chunk.to_vec(),
                                    complete: false,
                                    seen: WireSeen::from(ns.seen()),
                                }],
                            }),
                        });
                    }
                }
                if out.done {
                    self.sessions.remove(&key);
                    self.stats.reconcile_sessions_completed += 1;
                    self.stats.reconcile_duration_us += now_us.saturating_sub(started_us);
                }
            }
            Err(_) => {
                self.sessions.remove(&key);
                self.stats.reconcile_sessions_failed += 1;
            }
        }
    }

    fn on_sync_reply(&mut self, now_us: u64, from: NodeId, reply: SyncReply) {
        if let Some((_, sent)) = self.pending_sync.remove(&from) {
            for name in &reply.in_sync {
                if let (Some(prefix), Some(ns)) = (sent.get(name), self.namespaces.get_mut(name)) {
                    ns.gc.report(from, prefix);
                }
            }
        }
        let mut batch = PersistBatch::default();
        let mut peer_seen = BTreeMap::new();
        for d in &reply.deltas {
            self.apply_delta(now_us, from, d, &mut batch);
            peer_seen.insert(d.namespace.clone(), (d.value_type, d.seen.to_seen()));
        }
        self.finish_persist(batch);
        if let Some(p) = self.peers.get_mut(&from) {
            p.last_sync_us = now_us.max(1);
        }
        // Only namespaces the reply names: a namespace left out is one the
        // peer found in sync with our request (the fast path).
        let deltas: Vec<NamespaceDelta> = self
            .deltas_for(now_us, from, &peer_seen, false)
            .into_iter()
            .filter(|d| {
                !d.entries.is_empty() || !peer_seen.get(&d.namespace).is_some_and(|(_, s)| WireSeen::from(s) == d.seen)
            })
            .collect();
        if !deltas.is_empty() {
            self.actions.push_back(Action::Send { to: from, message: Message::SyncPush(SyncPush { deltas }) });
        }
    }

    fn apply_delta(&mut self, now_us: u64, from: NodeId, delta: &NamespaceDelta, batch: &mut PersistBatch) {
        let mut seen = delta.seen.to_seen();
        let own = self.namespaces.get(&delta.namespace).map(|ns| ns.own_counter(self.id)).unwrap_or(0);
        if seen.contiguous().get(self.id) > own || seen.exceptions(self.id).any(|c| c > own) {
            self.stats.rejected_forged += 1;
            seen.clamp_origin(self.id, own);
        }
        // Namespaces propagate through anti-entropy even before their first
        // write, so one created on any node soon exists on every node.
        if !self.ensure_namespace(&delta.namespace, delta.value_type, batch) {
            return;
        }
        let mut all_admitted = true;
        let mut seen_changed = false;
        for (key, entry) in &delta.entries {
            self.stats.sync_entries_received += 1;
            if !self.admit(now_us, &delta.namespace, entry) {
                all_admitted = false;
                continue;
            }
            let Some(ns) = self.namespaces.get_mut(&delta.namespace) else { return };
            match ns.merge(key, entry) {
                Ok(MergeOutcome::Changed) => {
                    self.stats.sync_entries_repaired += 1;
                    if let Some(e) = ns.get(key) {
                        batch.ops.push(entry_op(&delta.namespace, key, e));
                    }
                }
                Ok(MergeOutcome::Unchanged) => {}
                Err(_) => {
                    self.stats.rejected_type += 1;
                    all_admitted = false;
                }
            }
        }
        let Some(ns) = self.namespaces.get_mut(&delta.namespace) else { return };
        ns.gc.report(from, seen.contiguous());
        if delta.complete && all_admitted {
            let before = ns.seen().clone();
            ns.seen_mut().merge(&seen);
            seen_changed = *ns.seen() != before;
        }
        // A merged seen set carries knowledge the entries' clocks do not
        // (dots superseded before they reached us), so it is persisted.
        if seen_changed {
            self.persist_namespace(batch, &delta.namespace);
        }
    }

    fn collect_garbage(&mut self) {
        let members: BTreeSet<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.state != MemberState::Left)
            .map(|(&id, _)| id)
            .chain(std::iter::once(self.id))
            .collect();
        if members.len() <= 1 && self.peers.is_empty() {
            // No membership known yet: nothing can be proven stable.
            return;
        }
        let limit = self.config.gc_batch_max as usize;
        let mut batch = PersistBatch::default();
        let names: Vec<String> = self.namespaces.keys().cloned().collect();
        for name in names {
            let Some(ns) = self.namespaces.get_mut(&name) else { continue };
            if ns.gc.completed.is_none() {
                ns.gc.try_complete(&members);
            }
            let collected = ns.collect_garbage(limit);
            self.stats.tombstones_collected += collected.len() as u64;
            let space = persist::entries_space(&name);
            let any = !collected.is_empty();
            for (key, rewritten) in collected {
                match rewritten {
                    Some(entry) => batch.ops.push(entry_op(&name, &key, &entry)),
                    None => batch.ops.push(StoreOp { space: space.clone(), key, value: None }),
                }
            }
            // Collected keys take their clock entries with them; the record
            // keeps the seen set (and our own dot counter) from going back.
            if any {
                self.persist_namespace(&mut batch, &name);
            }
        }
        self.finish_persist(batch);
    }

    fn persist_namespace(&self, batch: &mut PersistBatch, name: &str) {
        if let Some(ns) = self.namespaces.get(name) {
            let record = persist::namespace_record(ns.value_type(), WireSeen::from(ns.seen()));
            batch.ops.push(StoreOp {
                space: persist::NAMESPACES_SPACE.to_string(),
                key: name.as_bytes().to_vec(),
                value: Some(persist::encode_record(&record)),
            });
        }
    }

    fn persist_hlc(&self, batch: &mut PersistBatch) {
        batch.ops.push(StoreOp {
            space: persist::META_SPACE.to_string(),
            key: persist::HLC_KEY.to_vec(),
            value: Some(persist::encode_hlc(&self.hlc.high_water())),
        });
    }
}

fn entry_op(namespace: &str, key: &[u8], entry: &Entry) -> StoreOp {
    StoreOp {
        space: persist::entries_space(namespace),
        key: key.to_vec(),
        value: Some(persist::encode_entry_record(entry)),
    }
}

fn lww_value_ts(entry: Option<&Entry>) -> Option<Timestamp> {
    match entry {
        Some(Entry::Lww(r)) if r.value.is_some() => Some(r.ts),
        _ => None,
    }
}

fn wire_fingerprint(ns: &Namespace) -> WireFingerprint {
    let f = ns.fingerprint();
    WireFingerprint { tag_sum: f.tag_sum, check_sum: f.check_sum, count: ns.reconcile_index().len() as u64 }
}
