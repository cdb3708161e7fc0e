//! The replication state machine of one node, with no I/O
//! (`docs/design/replication.md`).
//!
//! # The driver contract
//!
//! The driver (the daemon, or the simulator) owns the sockets, the disk and
//! the clock. It calls the node's inputs and executes the node's outputs;
//! it keeps no ordering logic of its own. The full contract, with the
//! reasoning behind it, is `docs/design/replication.md`, "The driver
//! contract"; in short:
//!
//! * **Inputs** take the current corrected physical time in µs where time
//!   matters: [`Node::handle_local_writes`], [`Node::handle_message`],
//!   [`Node::handle_timeout`] (when [`Node::poll_timeout`] is reached),
//!   [`Node::set_members`], [`Node::handle_create_namespace`],
//!   [`Node::handle_read`], and the two completion inputs
//!   [`Node::handle_persisted`] and [`Node::handle_persist_failed`].
//! * **Outputs**: after every input, drain [`Node::poll_action`] until
//!   `None` and execute the actions **in the order given**:
//!   - [`Action::Persist`] `{ id, batch }`: start committing `batch`
//!     atomically and durably, after every earlier Persist; do not wait for
//!     it. Report the outcome with `handle_persisted(id)` or
//!     `handle_persist_failed(id, why)`. Several batches may be in flight.
//!   - [`Action::Send`]: send best effort (losses are repaired).
//!   - [`Action::WriteDone`], [`Action::NamespaceDone`],
//!     [`Action::ReadReady`]: answer that request now.
//!   - [`Action::Halted`]: a batch failed; stop the node (restart it from
//!     the store).
//! * **The core holds back** every Send and every answer until every batch
//!   persisted before it was queued is durable. So a peer never sees a dot
//!   that a crash could take back (no dot is ever reused), an acknowledged
//!   write is durable, and a read never shows state a crash could undo. A
//!   driver that executes actions in order gets all of this for free.
//! * A driver bounds its in-flight batches ([`Node::persists_in_flight`])
//!   by not feeding new inputs while the bound is reached; completions are
//!   always accepted.
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

mod announce;
mod gc;
mod output;
mod push;
mod reconcile;
mod recovery;
mod sign;
mod sync;
mod write;

pub use announce::{ANNOUNCEMENTS_MAX, NamespaceCreated};
pub use output::{Halted, PERSIST_BYTES_MAX, PERSIST_OPS_MAX, PersistId, RequestId};
pub use reconcile::{RECONCILE_SESSION_IDLE_MAX_US, RECONCILE_SESSIONS_MAX};
pub use sync::URGENT_SYNC_MAX;
pub use write::{IDEMPOTENCY_KEY_BYTES_MAX, IDEMPOTENCY_KEYS_MAX};

use announce::Announcement;
use output::Outputs;
use reconcile::{ReconcileSession, SessionKey};
use sync::Stream;

/// Tunables of the replication protocol. Every one has a default.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// This node's tier (0–[`crate::TIER_MAX`]); it exchanges data with
    /// tiers t-1, t, t+1 only.
    pub tier: u8,
    /// Peers each new write is pushed to; 0 means ceil(log2(peers + 1)).
    pub fanout: u32,
    /// Hops a write is forwarded at most; 0 means ceil(log2(peers + 1)) + 3.
    pub hop_limit: u8,
    /// Period of anti-entropy rounds.
    pub anti_entropy_interval_us: u64,
    /// Remote timestamps further ahead than this are refused
    /// (`docs/design/replication.md`, "Failure cases and assumptions").
    pub offset_max_us: u64,
    /// Entries one sync message carries at most.
    pub sync_entries_max: u32,
    /// Encoded entry bytes one sync message carries at most (soft: at least
    /// one entry always goes).
    pub sync_bytes_max: u32,
    /// Largest value accepted from clients or peers.
    pub value_bytes_max: u32,
    /// Tombstones collected per timeout, to bound the work of one call.
    pub gc_batch_max: u32,
    /// How long a namespace creation waits for every reachable node to
    /// confirm that it holds the namespace (see [`Node::handle_create_namespace`]).
    pub namespace_confirm_wait_us: u64,
    /// How long a write's idempotency key is remembered (durably).
    pub idempotency_window_us: u64,
    /// Deliberately broken behaviour, for proving that checkers catch bugs.
    /// Exists only in builds with the `test-knobs` feature.
    #[cfg(feature = "test-knobs")]
    pub injected_bug: Option<InjectedBug>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            tier: 0,
            fanout: 0,
            hop_limit: 0,
            anti_entropy_interval_us: 1_000_000,
            offset_max_us: 500_000,
            sync_entries_max: 4096,
            sync_bytes_max: 4 << 20,
            value_bytes_max: limits::VALUE_BYTES_DEFAULT as u32,
            gc_batch_max: 1024,
            namespace_confirm_wait_us: 3_000_000,
            idempotency_window_us: 60_000_000,
            #[cfg(feature = "test-knobs")]
            injected_bug: None,
        }
    }
}

/// Bugs that tests switch on to show that checkers fail when they should.
/// Only builds with the `test-knobs` feature have them.
#[cfg(feature = "test-knobs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedBug {
    /// Mark pushed writes as seen without merging them: anti-entropy then
    /// believes we have them and never repairs the loss.
    SkipMergeOnPush,
    /// Release `Send`s without waiting for the batches they depend on.
    ReleaseSendsBeforeDurable,
    /// Release write outcomes without waiting for their batches.
    ReleaseReceiptsBeforeDurable,
    /// At recovery, restore our own dot counter from the namespace record
    /// alone, ignoring the entries' clocks: dots get reused.
    ForgetOwnDotsOnRecovery,
    /// Report every peer that pushes us an entry as forging our dots (a
    /// detector that accuses honest peers).
    AccuseHonestPeers,
}

/// Whether the test-only bug `$bug` is switched on: always `false` in
/// builds without the `test-knobs` feature, where no bug can be named.
macro_rules! injected {
    ($config:expr, $bug:ident) => {{
        #[cfg(feature = "test-knobs")]
        let on = $config.injected_bug == Some($crate::node::InjectedBug::$bug);
        #[cfg(not(feature = "test-knobs"))]
        let on = false;
        on
    }};
}
pub(crate) use injected;

/// Whether nodes of these tiers may exchange data directly
/// (`docs/design/clock.md`, "Tiers"): the one tier rule, shared with the
/// clock service.
pub use chorus_clock::tiers_may_talk;

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
    /// The client's idempotency key: a retry with the same key within
    /// [`NodeConfig::idempotency_window_us`] returns the first outcome and
    /// applies nothing (see `node/write.rs`).
    pub request_id: Option<Vec<u8>>,
}

impl LocalWrite {
    /// A write without an idempotency key.
    pub fn new(namespace: impl Into<String>, key: impl Into<Key>, op: Op) -> Self {
        LocalWrite { namespace: namespace.into(), key: key.into(), op, request_id: None }
    }

    /// The same write, with an idempotency key.
    pub fn with_request_id(mut self, request_id: impl Into<Vec<u8>>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }
}

/// What an accepted write became.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteReceipt {
    pub dot: Dot,
    pub ts: Timestamp,
    /// The key's causal context after the write.
    pub context: VersionVector,
}

/// Why a local write failed. Every variant but
/// [`WriteError::PersistFailed`] is a refusal: state is unchanged for that
/// write.
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
    /// Refused: the node halted before this write arrived.
    #[error(transparent)]
    Halted(Halted),
    /// Refused: the idempotency key is longer than [`IDEMPOTENCY_KEY_BYTES_MAX`].
    #[error("request_id of {len} bytes exceeds the {max}-byte limit")]
    RequestIdTooLarge { len: usize, max: usize },
    /// Refused: the idempotency key already named a different write (its
    /// namespace or key differ) within the window.
    #[error("request_id was already used for another write ({namespace:?}/{key:?}) within the idempotency window")]
    RequestIdReused { namespace: String, key: String },
    /// The batch carrying this write could not be made durable. The outcome
    /// is unknown: the write may or may not survive a restart.
    #[error("the write's batch failed; it may or may not be durable: {0}")]
    PersistFailed(Halted),
}

/// Why a namespace could not be created. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NamespaceError {
    #[error("namespace {name:?} already exists with type {existing}")]
    TypeConflict { name: String, existing: &'static str },
    #[error("invalid namespace name {0:?}: use 1-128 characters of A-Z a-z 0-9 _ - .")]
    InvalidName(String),
    /// The node halted (a batch failed); the namespace may exist locally
    /// only in memory.
    #[error(transparent)]
    Halted(Halted),
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

/// What the driver must do, in order (see the module documentation).
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Start committing `batch` atomically and durably, after every earlier
    /// batch; report the outcome with [`Node::handle_persisted`] or
    /// [`Node::handle_persist_failed`].
    Persist { id: PersistId, batch: PersistBatch },
    /// Send a message to a peer (best effort; losses are repaired by
    /// anti-entropy).
    Send { to: NodeId, message: Message },
    /// The outcome of a local write; `Ok` means durable.
    WriteDone { request: RequestId, result: Result<WriteReceipt, WriteError> },
    /// The outcome of [`Node::handle_create_namespace`].
    NamespaceDone { request: RequestId, result: Result<NamespaceCreated, NamespaceError> },
    /// A read taken at [`Node::handle_read`] may be answered now (`Err`: the
    /// node halted; answer with an error instead).
    ReadReady { request: RequestId, result: Result<(), Halted> },
    /// The node halted; the driver stops it. Comes after every outcome.
    Halted(Halted),
    /// A peer sent what no honest peer can (the driver disconnects and
    /// quarantines it). At most one per message.
    PeerMisbehaved { peer: NodeId, reason: Misbehavior },
    /// Changes installed in one namespace, durable now: hand them to the
    /// watch streams (only with the feed on, [`Node::enable_change_feed`]).
    Changes(crate::watch::ChangeBatch),
}

/// What a misbehaving peer did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehavior {
    /// Entries or a seen set claimed writes of ours that we never issued.
    /// Not reported by a node that started from an empty store: its peers
    /// may honestly know of writes it made before its disk was wiped.
    ForgedDots,
    /// Entries its origins did not sign as they are (an altered value,
    /// counter contribution or clock), or seen-set claims about an origin
    /// that no signature of that origin backs (`docs/design/signing.md`).
    BadSignature,
}

impl Misbehavior {
    /// A short name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Misbehavior::ForgedDots => "forged_dots",
            Misbehavior::BadSignature => "bad_signature",
        }
    }
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
    /// Namespace announcements this node started or forwarded.
    pub announcements: u64,
    /// Writes answered from a remembered idempotency key (applied nothing).
    pub idempotent_replays: u64,
    /// Blocks of our own writes signed (one per turn of local writes).
    pub blocks_signed: u64,
    /// Block signatures verified (each block once per node).
    pub signatures_checked: u64,
    /// Entries, push items or seen claims refused because their origins
    /// did not sign them as they are (the sender is reported).
    pub rejected_signature: u64,
    /// Entries refused because no key is known yet for one of their
    /// origins (not the sender's fault; they come again later).
    pub rejected_unknown_origin: u64,
    /// Entries refused because they hold a write a revoked origin made
    /// after its revocation.
    pub rejected_revoked: u64,
    /// Entries that could not be sent or kept with a proof (stored before
    /// signing was on, or a damaged proof record).
    pub unprovable_entries: u64,
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
    out: Outputs,
    next_anti_entropy_us: Option<u64>,
    sessions: BTreeMap<SessionKey, ReconcileSession>,
    /// Our seen prefixes as sent in the last request to each peer: a reply
    /// saying "in sync" means the peer's prefix equalled exactly these,
    /// which is what its GC report must be (never our later, larger one).
    pending_sync: BTreeMap<NodeId, (u64, BTreeMap<String, VersionVector>)>,
    streams: BTreeMap<(NodeId, String), Stream>,
    /// Namespace announcements in progress, by (origin, id).
    announcements: BTreeMap<(NodeId, u64), Announcement>,
    /// Announcements finished recently (a late duplicate is answered at once).
    announced: VecDeque<(NodeId, u64)>,
    /// Remembered idempotency keys, and their insertion order for expiry.
    idempotency: BTreeMap<Vec<u8>, persist::IdempotencyRecord>,
    idempotency_order: VecDeque<(u64, Vec<u8>)>,
    /// Started from an empty store (see [`Misbehavior::ForgedDots`]).
    started_empty: bool,
    /// The peer of the message being handled already reported.
    misbehavior_reported: bool,
    /// Changes are recorded for watch streams ([`Action::Changes`]).
    feed_on: bool,
    stats: NodeStats,
    /// Signing our writes and checking others' (`None`: off).
    signing: Option<sign::SigningState>,
    /// Our last signed block `(seq, header hash)`, durable in META.
    block_head: (u64, [u8; 32]),
    /// Namespaces whose origin heads changed since the last batch.
    heads_dirty: BTreeSet<String>,
}

impl Node {
    /// A fresh node with no state.
    pub fn new(id: NodeId, config: NodeConfig, seed: u64) -> Self {
        let hlc = Hlc::new(id, config.offset_max_us);
        #[allow(unused_mut)]
        let mut out = Outputs::default();
        #[cfg(feature = "test-knobs")]
        {
            out.early = match config.injected_bug {
                Some(InjectedBug::ReleaseSendsBeforeDurable) => Some(output::EarlyRelease::Sends),
                Some(InjectedBug::ReleaseReceiptsBeforeDurable) => Some(output::EarlyRelease::Receipts),
                _ => None,
            };
        }
        Self {
            id,
            config,
            hlc,
            rng: Rng::new(seed),
            namespaces: BTreeMap::new(),
            peers: BTreeMap::new(),
            live: Vec::new(),
            urgent_sync: VecDeque::new(),
            out,
            next_anti_entropy_us: None,
            sessions: BTreeMap::new(),
            pending_sync: BTreeMap::new(),
            streams: BTreeMap::new(),
            announcements: BTreeMap::new(),
            announced: VecDeque::new(),
            idempotency: BTreeMap::new(),
            idempotency_order: VecDeque::new(),
            started_empty: true,
            misbehavior_reported: false,
            feed_on: false,
            stats: NodeStats::default(),
            signing: None,
            block_head: (0, [0; 32]),
            heads_dirty: BTreeSet::new(),
        }
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

    /// Record every change for watch streams from now on: each persisted
    /// batch's changes then leave as [`Action::Changes`], held behind it
    /// (`docs/design/watch.md`). Off by default (the simulator's thousands
    /// of nodes do not pay for it).
    pub fn enable_change_feed(&mut self) {
        self.feed_on = true;
        for ns in self.namespaces.values_mut() {
            ns.enable_feed();
        }
    }

    fn new_namespace(&self, name: &str, value_type: ValueType) -> Namespace {
        let mut ns = Namespace::new(name.to_string(), value_type);
        if self.feed_on {
            ns.enable_feed();
        }
        ns
    }

    /// Next action for the driver, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.pop()
    }

    /// When [`Node::handle_timeout`] is next due (absolute µs).
    pub fn poll_timeout(&self) -> Option<u64> {
        let announce = self.announcements.values().map(|a| a.deadline_us).min();
        match (self.next_anti_entropy_us, announce) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Read one key of the node's current state. A driver answering a
    /// client with it must wait for [`Action::ReadReady`] (see
    /// [`Node::handle_read`]).
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
        self.announcements_lost_members();
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

    /// A message from a peer (already decoded and validated). A halted node
    /// ignores it.
    pub fn handle_message(&mut self, now_us: u64, from: NodeId, message: Message) {
        if self.out.halted.is_some() || !self.peer_allowed(from) {
            return;
        }
        self.misbehavior_reported = false;
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
            Message::Announce(a) => self.on_announce(now_us, from, a),
            Message::Confirm(c) => self.on_confirm(from, c),
        }
    }

    /// Run what is due: expire namespace announcements; start an
    /// anti-entropy round and collect stable tombstones.
    pub fn handle_timeout(&mut self, now_us: u64) {
        if self.out.halted.is_some() {
            return;
        }
        self.expire_announcements(now_us);
        self.expire_idempotency_keys(now_us);
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

    /// A peer claimed writes of ours that we never issued.
    fn forged(&mut self, from: NodeId) {
        self.stats.rejected_forged += 1;
        if !self.started_empty && !self.misbehavior_reported {
            self.misbehavior_reported = true;
            self.out.hold(Action::PeerMisbehaved { peer: from, reason: Misbehavior::ForgedDots });
        }
    }

    /// Queue a Send behind everything persisted so far.
    fn send(&mut self, to: NodeId, message: Message) {
        self.out.hold(Action::Send { to, message });
    }

    /// Hand `batch` (with the HLC high-water mark) to the driver, unless
    /// it is empty.
    fn finish_persist(&mut self, mut batch: PersistBatch) {
        self.flush_heads(&mut batch);
        if batch.ops.is_empty() {
            return;
        }
        self.persist_hlc(&mut batch);
        self.out.persist(batch);
        self.hold_changes();
    }

    /// Queue the changes recorded so far behind the batch just persisted.
    fn hold_changes(&mut self) {
        if !self.feed_on {
            return;
        }
        for ns in self.namespaces.values_mut() {
            if let Some(changes) = ns.take_feed() {
                self.out.hold(Action::Changes(changes));
            }
        }
    }

    fn persist_namespace(&self, batch: &mut PersistBatch, name: &str) {
        if let Some(ns) = self.namespaces.get(name) {
            let record = persist::namespace_record(ns.value_type(), WireSeen::from(ns.seen()));
            batch.ops.push(StoreOp {
                space: persist::NAMESPACES_SPACE.to_string(),
                key: name.as_bytes().to_vec(),
                value: Some(persist::encode_namespace_record(&record)),
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

/// An entry and the proof of its state as one record (signing on): one
/// store operation per key (`docs/design/signing.md`, "Storage").
fn proven_entry_op(namespace: &str, key: &[u8], entry: &Entry, proof: &crate::signing::KeyProof) -> StoreOp {
    StoreOp {
        space: persist::entries_space(namespace),
        key: key.to_vec(),
        value: Some(persist::encode_proven_entry(entry, proof)),
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
