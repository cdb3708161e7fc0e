//! The node's output queue: Persist before expose, owned by the core.
//!
//! Every [`Action::Persist`] gets the next [`PersistId`] and leaves at once:
//! the driver may have several in flight. Every other action — a `Send`, a
//! write's outcome, a namespace creation's outcome, a read's release — is
//! *held* behind the last Persist issued before it was queued, and leaves
//! only when that batch and every earlier one are durable
//! ([`Node::handle_persisted`]). The held queue is ordered by that bound, so
//! releasing is popping its front. See `docs/design/replication.md`,
//! "Durability and restart", for why this is the rule and what it buys.

use super::{Action, Node, WriteError};
use crate::persist::{PersistBatch, StoreOp};
use std::collections::{BTreeSet, VecDeque};

/// Most operations in one Persist. Drivers' stores accept at least this
/// many in one atomic batch (chorus-storage accepts 65,536; the daemon
/// checks the bound at compile time).
pub const PERSIST_OPS_MAX: usize = 16_384;

/// Most bytes (space names, keys and values) in one Persist, except that a
/// single larger operation goes alone. chorus-storage accepts 64 MiB.
pub const PERSIST_BYTES_MAX: usize = 16 << 20;

/// The bytes an operation carries, counted as the store counts them.
fn op_bytes(op: &StoreOp) -> usize {
    op.space.len() + op.key.len() + op.value.as_ref().map_or(0, Vec::len)
}

/// Names one batch the core asked the driver to persist. Ids start at 1 and
/// grow by one per batch, so "this batch and every earlier one" is a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PersistId(pub u64);

impl std::fmt::Display for PersistId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "persist#{}", self.0)
    }
}

/// The driver's name for one request whose outcome the core releases (a
/// client write, a namespace creation, a read). The core never interprets
/// it; the driver keeps it unique among the requests it has outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// Why the node stopped accepting work: a batch could not be made durable,
/// so its state in memory is ahead of its disk. The driver stops the node
/// and restarts it from the store (recovery never reuses a dot).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the node halted: persisting {batch} failed: {reason}")]
pub struct Halted {
    pub batch: PersistId,
    pub reason: String,
}

/// Which held actions a test-only bug releases before they are durable.
#[cfg(feature = "test-knobs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EarlyRelease {
    Sends,
    Receipts,
}

#[derive(Debug, Default)]
pub(crate) struct Outputs {
    /// Actions that may run now, in order: Persists (never held) and, with a
    /// test-only bug, the actions it releases early.
    ready: VecDeque<Action>,
    /// `(bound, action)`: releasable once `durable >= bound`. Bounds never
    /// decrease from front to back.
    held: VecDeque<(u64, Action)>,
    /// The last PersistId issued (0: none yet).
    issued: u64,
    /// Every batch up to this id is durable.
    durable: u64,
    /// Completions reported above `durable + 1` (a driver may report out of
    /// order; the prefix rule still decides).
    completed_ahead: BTreeSet<u64>,
    pub(crate) halted: Option<Halted>,
    #[cfg(feature = "test-knobs")]
    pub(crate) early: Option<EarlyRelease>,
}

impl Outputs {
    /// Hand `batch` to the driver, split at [`PERSIST_OPS_MAX`] operations
    /// and [`PERSIST_BYTES_MAX`] bytes so that no input, however large
    /// (a push of the most items a message may carry, a long catch-up), makes
    /// a batch the store refuses. Splitting keeps the operations' order, and
    /// every record that summarizes entries (a namespace's seen set, the HLC
    /// high-water mark) comes after the entries it summarizes, so any prefix
    /// of the pieces that survives a crash is consistent; nothing held is
    /// released before the last piece is durable. Returns the last id.
    pub(crate) fn persist(&mut self, batch: PersistBatch) -> PersistId {
        let mut piece = PersistBatch::default();
        let mut piece_bytes = 0usize;
        for op in batch.ops {
            let bytes = op_bytes(&op);
            if !piece.ops.is_empty() && (piece.ops.len() >= PERSIST_OPS_MAX || piece_bytes + bytes > PERSIST_BYTES_MAX)
            {
                self.persist_piece(std::mem::take(&mut piece));
                piece_bytes = 0;
            }
            piece_bytes += bytes;
            piece.ops.push(op);
        }
        self.persist_piece(piece)
    }

    fn persist_piece(&mut self, batch: PersistBatch) -> PersistId {
        self.issued += 1;
        let id = PersistId(self.issued);
        // A halted node's memory is already ahead of its disk; nothing more
        // goes to the driver (inputs are refused before they get here).
        if self.halted.is_none() {
            self.ready.push_back(Action::Persist { id, batch });
        }
        id
    }

    /// The batch an action queued now waits for.
    fn bound(&self) -> u64 {
        match &self.halted {
            Some(h) => h.batch.0 - 1,
            None => self.issued,
        }
    }

    /// Queue an action that must not run before everything persisted so far
    /// is durable.
    pub(crate) fn hold(&mut self, action: Action) {
        #[cfg(feature = "test-knobs")]
        {
            let early = matches!(
                (&action, self.early),
                (Action::Send { .. }, Some(EarlyRelease::Sends))
                    | (Action::WriteDone { .. }, Some(EarlyRelease::Receipts))
            );
            if early {
                self.ready.push_back(action);
                return;
            }
        }
        let bound = self.bound();
        self.held.push_back((bound, action));
    }

    pub(crate) fn pop(&mut self) -> Option<Action> {
        if let Some(a) = self.ready.pop_front() {
            return Some(a);
        }
        match self.held.front() {
            Some((bound, _)) if *bound <= self.durable => self.held.pop_front().map(|(_, a)| a),
            _ => None,
        }
    }

    pub(crate) fn persisted(&mut self, id: PersistId) {
        let id = id.0;
        if id <= self.durable || id > self.issued || self.halted.as_ref().is_some_and(|h| id >= h.batch.0) {
            return;
        }
        if id == self.durable + 1 {
            self.durable = id;
            while self.completed_ahead.remove(&(self.durable + 1)) {
                self.durable += 1;
            }
        } else {
            self.completed_ahead.insert(id);
        }
    }

    /// Batches issued but not yet durable.
    pub(crate) fn in_flight(&self) -> u64 {
        self.issued - self.durable
    }

    /// Batch `id` failed: nothing held behind it may ever be exposed. Its
    /// write outcomes become "unknown" errors, its reads and namespace
    /// creations errors, its Sends are dropped; all of them, and a final
    /// `Halted`, leave once the batches before `id` are durable.
    pub(crate) fn failed(&mut self, halted: Halted) {
        if self.halted.is_some() || halted.batch.0 <= self.durable || halted.batch.0 > self.issued {
            return;
        }
        let bound = halted.batch.0 - 1;
        let mut kept: VecDeque<(u64, Action)> = VecDeque::with_capacity(self.held.len() + 1);
        for (b, action) in std::mem::take(&mut self.held) {
            if b < halted.batch.0 {
                kept.push_back((b, action));
                continue;
            }
            if let Some(converted) = fail_action(action, &halted) {
                kept.push_back((bound, converted));
            }
        }
        kept.push_back((bound, Action::Halted(halted.clone())));
        self.held = kept;
        self.completed_ahead.retain(|&c| c < halted.batch.0);
        self.halted = Some(halted);
    }
}

/// What becomes of a held action whose batch failed.
fn fail_action(action: Action, halted: &Halted) -> Option<Action> {
    match action {
        Action::Send { .. }
        | Action::Persist { .. }
        | Action::Halted(_)
        | Action::PeerMisbehaved { .. }
        | Action::Changes(_) => None,
        Action::WriteDone { request, .. } => {
            Some(Action::WriteDone { request, result: Err(WriteError::PersistFailed(halted.clone())) })
        }
        Action::NamespaceDone { request, .. } => {
            Some(Action::NamespaceDone { request, result: Err(super::NamespaceError::Halted(halted.clone())) })
        }
        Action::ReadReady { request, .. } => Some(Action::ReadReady { request, result: Err(halted.clone()) }),
    }
}

impl Node {
    /// Batch `id` is durable. Actions held behind it (and behind every
    /// earlier batch) become available from [`Node::poll_action`]. Reporting
    /// an unknown or already reported id is harmless.
    pub fn handle_persisted(&mut self, id: PersistId) {
        self.out.persisted(id);
    }

    /// Batch `id` could not be made durable (the driver must not retry it:
    /// its fate on disk may be unknown). The node halts: every held outcome
    /// that depended on it is answered with an error, its Sends are dropped,
    /// and [`Action::Halted`] tells the driver to stop the node and restart
    /// it from its store. Later inputs are refused or ignored.
    pub fn handle_persist_failed(&mut self, id: PersistId, reason: impl Into<String>) {
        self.out.failed(Halted { batch: id, reason: reason.into() });
    }

    /// Why the node halted, if it did.
    pub fn halted(&self) -> Option<&Halted> {
        self.out.halted.as_ref()
    }

    /// Batches handed to the driver and not yet reported durable: a driver
    /// bounds this to apply backpressure.
    pub fn persists_in_flight(&self) -> u64 {
        self.out.in_flight()
    }

    /// A read that observed the node's state now (through [`Node::get`],
    /// [`Node::namespace`] and the like) may be answered once
    /// [`Action::ReadReady`] for `request` comes out: by then everything that
    /// state reflects is durable, so no client ever sees state a crash could
    /// take back.
    pub fn handle_read(&mut self, request: RequestId) {
        let result = match &self.out.halted {
            Some(h) => Err(h.clone()),
            None => Ok(()),
        };
        self.out.hold(Action::ReadReady { request, result });
    }
}
