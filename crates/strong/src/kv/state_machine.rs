//! [`KvStateMachine`]: the revisioned store that applies [`KvCommand`]s in log
//! order and answers reads. It is pure and deterministic, as the parent
//! module `kv` explains. Keeping it apart from the interface types lets a
//! reader check the apply rules (revisions, lease expiry, lock
//! compatibility and fencing tokens, the bounded watch history, the
//! idempotency table) in one file against `docs/design/strong.md`, section
//! "State machine (`kv`)".
//!
//! Values are held as shared buffers ([`Bytes`]): a key and its watch event
//! share one copy, and cloning the whole machine (what a snapshot is built
//! from, see `store`) copies keys and counters but never a value.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use super::{
    Compare, CompareOp, CompareTarget, IDEMPOTENCY_BYTES_MAX, IDEMPOTENCY_KEYS_MAX, IDEMPOTENT_RESPONSE_BYTES_MAX,
    KeyValue, KvCommand, KvError, KvResponse, LEASES_MAX, LOCK_HOLDERS_MAX, Lease, LeaseId, LockMode, LockState,
    RANGE_LIMIT_MAX, TxnOp, TxnOpResult, WATCH_HISTORY_BYTES_DEFAULT, WATCH_HISTORY_MAX, WatchEvent, WatchEventKind,
};

/// How much watch history a replica keeps. A per-node setting, not part of
/// the replicated state: every replica applies the same events, each keeps
/// as many of the newest as its own limits allow (a watcher resuming from an
/// older revision on that node gets [`KvError::Compacted`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Most events kept.
    pub events_max: usize,
    /// Most bytes of keys and values kept.
    pub bytes_max: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self { events_max: WATCH_HISTORY_MAX, bytes_max: WATCH_HISTORY_BYTES_DEFAULT }
    }
}

/// One stored key. The value is shared with its watch event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredKey {
    pub(crate) value: Bytes,
    pub(crate) create_revision: u64,
    pub(crate) mod_revision: u64,
    pub(crate) version: u64,
    pub(crate) lease: Option<LeaseId>,
}

impl StoredKey {
    fn to_key_value(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: self.value.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// One event of the watch history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredEvent {
    pub(crate) revision: u64,
    pub(crate) kind: WatchEventKind,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Option<Bytes>,
}

impl StoredEvent {
    /// What the event counts against [`HistoryLimits::bytes_max`].
    pub(crate) fn bytes(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, Bytes::len)
    }
}

/// One remembered idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Remembered {
    /// Identifies the command the key was first used for.
    pub(crate) fingerprint: u64,
    /// When it was first applied, in the state machine's clock.
    pub(crate) at_ms: u64,
    /// When it is forgotten, in the state machine's clock.
    pub(crate) expires_ms: u64,
    /// The first answer.
    pub(crate) outcome: Result<KvResponse, KvError>,
    /// Whether the values inside `outcome` were dropped.
    pub(crate) values_elided: bool,
}

impl Remembered {
    fn bytes(&self, request_id: &[u8]) -> usize {
        request_id.len() + outcome_bytes(&self.outcome)
    }
}

/// The state machine. Its snapshot is written and read record by record by
/// [`super::snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvStateMachine {
    pub(crate) revision: u64,
    pub(crate) keys: BTreeMap<Vec<u8>, StoredKey>,
    pub(crate) leases: BTreeMap<LeaseId, Lease>,
    pub(crate) next_lease_id: LeaseId,
    pub(crate) locks: BTreeMap<Vec<u8>, LockState>,
    pub(crate) events: VecDeque<StoredEvent>,
    /// Sum of [`StoredEvent::bytes`] over `events`.
    pub(crate) events_bytes: usize,
    /// Revision of the newest event dropped from `events` (0: none).
    pub(crate) events_dropped_through: u64,
    /// Highest time any applied command carried. Every such time was
    /// stamped by a leader as it proposed the command, so the clock never
    /// goes back, whichever leader stamped it (`docs/design/strong.md`,
    /// "Lease time").
    pub(crate) clock_ms: u64,
    /// Remembered idempotency keys and their first answers.
    pub(crate) requests: BTreeMap<Vec<u8>, Remembered>,
    /// Keys in the order they were remembered, with their expiry, for
    /// forgetting the oldest first.
    pub(crate) request_order: VecDeque<(u64, Vec<u8>)>,
    /// Sum of [`Remembered::bytes`] over `requests`.
    pub(crate) requests_bytes: usize,
    pub(crate) limits: HistoryLimits,
}

impl Default for KvStateMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl KvStateMachine {
    /// An empty store at revision 0 with the default history limits.
    pub fn new() -> Self {
        Self::with_history_limits(HistoryLimits::default())
    }

    /// An empty store at revision 0 that keeps at most `limits` of watch history.
    pub fn with_history_limits(limits: HistoryLimits) -> Self {
        Self {
            revision: 0,
            keys: BTreeMap::new(),
            leases: BTreeMap::new(),
            next_lease_id: 1,
            locks: BTreeMap::new(),
            events: VecDeque::new(),
            events_bytes: 0,
            events_dropped_through: 0,
            clock_ms: 0,
            requests: BTreeMap::new(),
            request_order: VecDeque::new(),
            requests_bytes: 0,
            limits,
        }
    }

    /// The watch-history limits of this replica.
    pub fn history_limits(&self) -> HistoryLimits {
        self.limits
    }

    /// Applies new watch-history limits, dropping the oldest events at once
    /// if the history is over them.
    pub fn set_history_limits(&mut self, limits: HistoryLimits) {
        self.limits = limits;
        self.trim_history();
    }

    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The state machine's clock: the highest time any applied command carried.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// The key-value for `key`.
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.keys.get(key).map(|stored| stored.to_key_value(key))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Events in the watch history, and their bytes of keys and values.
    pub fn history_size(&self) -> (usize, usize) {
        (self.events.len(), self.events_bytes)
    }

    /// Remembered idempotency keys.
    pub fn remembered_requests(&self) -> usize {
        self.requests.len()
    }

    /// Keys in `[start, end)` (`end == None`: unbounded), ascending, at most
    /// `min(limit, RANGE_LIMIT_MAX)`.
    pub fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<KeyValue> {
        use std::ops::Bound;
        let upper = match end {
            Some(end) if end <= start => return Vec::new(),
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        self.keys
            .range::<[u8], _>((Bound::Included(start), upper))
            .take(limit.min(RANGE_LIMIT_MAX))
            .map(|(key, stored)| stored.to_key_value(key))
            .collect()
    }

    /// How many keys lie in `[start, end)` (`end == None`: unbounded).
    pub fn count(&self, start: &[u8], end: Option<&[u8]>) -> u64 {
        use std::ops::Bound;
        let upper = match end {
            Some(end) if end <= start => return 0,
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        self.keys.range::<[u8], _>((Bound::Included(start), upper)).count() as u64
    }

    /// The lease `id`, if live.
    pub fn lease(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// Live leases.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// Whether some lease's deadline is at or before `now_ms` (so the leader
    /// should propose [`KvCommand::ExpireLeases`]).
    pub fn has_expired_leases(&self, now_ms: u64) -> bool {
        self.leases.values().any(|lease| lease.deadline_ms <= now_ms)
    }

    /// The holders of lock `name`.
    pub fn lock(&self, name: &[u8]) -> Option<&LockState> {
        self.locks.get(name)
    }

    /// Up to `limit` events with revision ≥ `from_revision`, in order.
    /// Fails with [`KvError::Compacted`] if events at or after
    /// `from_revision` were dropped from the history (it keeps the newest
    /// events within [`HistoryLimits`]).
    pub fn events_since(&self, from_revision: u64, limit: usize) -> Result<Vec<WatchEvent>, KvError> {
        if self.events_dropped_through > 0 && from_revision <= self.events_dropped_through {
            return Err(KvError::Compacted { requested: from_revision, oldest: self.events_dropped_through + 1 });
        }
        let start = self.events.partition_point(|event| event.revision < from_revision);
        Ok(self
            .events
            .iter()
            .skip(start)
            .take(limit)
            .map(|event| WatchEvent {
                revision: event.revision,
                kind: event.kind,
                key: event.key.clone(),
                value: event.value.as_ref().map(|value| value.to_vec()),
            })
            .collect())
    }

    /// Applies one command. Deterministic: the same commands in the same
    /// order give the same state and responses on every replica.
    pub fn apply(&mut self, command: &KvCommand) -> Result<KvResponse, KvError> {
        command.validate()?;
        match command {
            KvCommand::Put { key, value, lease } => {
                if let Some(lease) = lease
                    && !self.leases.contains_key(lease)
                {
                    return Err(KvError::LeaseNotFound(*lease));
                }
                let revision = self.bump();
                let prev = self.put(revision, key, value, *lease);
                Ok(KvResponse::Put { revision, prev })
            }
            KvCommand::Delete { key } => {
                if !self.keys.contains_key(key.as_slice()) {
                    return Ok(KvResponse::Delete { revision: self.revision, existed: false });
                }
                let revision = self.bump();
                let existed = self.delete(revision, key);
                Ok(KvResponse::Delete { revision, existed })
            }
            KvCommand::CompareAndSwap { key, expected, value } => {
                let current = self.keys.get(key.as_slice()).map(|stored| &stored.value[..]);
                if current != expected.as_deref() {
                    return Ok(KvResponse::CompareAndSwap {
                        succeeded: false,
                        revision: self.revision,
                        current: self.get(key),
                    });
                }
                let revision = self.bump();
                self.put(revision, key, value, None);
                Ok(KvResponse::CompareAndSwap { succeeded: true, revision, current: self.get(key) })
            }
            KvCommand::Txn { compares, success, failure } => self.txn(compares, success, failure),
            KvCommand::LeaseGrant { ttl_ms, now_ms } => {
                self.advance_clock(*now_ms);
                if self.leases.len() >= LEASES_MAX {
                    return Err(KvError::LimitReached("leases".to_owned()));
                }
                let id = self.next_lease_id;
                self.next_lease_id += 1;
                let deadline_ms = self.clock_ms.saturating_add(*ttl_ms);
                self.leases.insert(
                    id,
                    Lease { id, ttl_ms: *ttl_ms, deadline_ms, keys: BTreeSet::new(), locks: BTreeSet::new() },
                );
                Ok(KvResponse::Lease { lease: id, ttl_ms: *ttl_ms, deadline_ms })
            }
            KvCommand::LeaseKeepAlive { lease, now_ms } => {
                self.advance_clock(*now_ms);
                let clock = self.clock_ms;
                let entry = self.leases.get_mut(lease).ok_or(KvError::LeaseNotFound(*lease))?;
                // A keep-alive that arrives after the deadline but before the
                // leader's expiry sweep still renews: expiry is decided by the
                // log, not by the wall clock of any one node.
                entry.deadline_ms = clock.saturating_add(entry.ttl_ms);
                Ok(KvResponse::Lease { lease: *lease, ttl_ms: entry.ttl_ms, deadline_ms: entry.deadline_ms })
            }
            KvCommand::LeaseRevoke { lease } => {
                if !self.leases.contains_key(lease) {
                    return Err(KvError::LeaseNotFound(*lease));
                }
                let revision = self.bump();
                let keys_deleted = self.end_lease(revision, *lease);
                Ok(KvResponse::LeaseRevoked { revision, keys_deleted })
            }
            KvCommand::ExpireLeases { now_ms } => {
                self.advance_clock(*now_ms);
                let clock = self.clock_ms;
                let expired: Vec<LeaseId> =
                    self.leases.values().filter(|lease| lease.deadline_ms <= clock).map(|lease| lease.id).collect();
                if !expired.is_empty() {
                    let revision = self.bump();
                    for lease in &expired {
                        self.end_lease(revision, *lease);
                    }
                }
                self.expire_requests();
                Ok(KvResponse::LeasesSwept { expired })
            }
            KvCommand::RefreshLeases { now_ms } => {
                self.advance_clock(*now_ms);
                let clock = self.clock_ms;
                for lease in self.leases.values_mut() {
                    lease.deadline_ms = lease.deadline_ms.max(clock.saturating_add(lease.ttl_ms));
                }
                Ok(KvResponse::LeasesSwept { expired: Vec::new() })
            }
            KvCommand::LockAcquire { name, lease, mode } => self.lock_acquire(name, *lease, *mode),
            KvCommand::LockRelease { name, lease } => {
                let was_held = self.lock_release(name, *lease);
                if let Some(entry) = self.leases.get_mut(lease) {
                    entry.locks.remove(name.as_slice());
                }
                Ok(KvResponse::LockReleased { was_held })
            }
            KvCommand::Idempotent { request_id, at_ms, window_ms, command } => {
                self.idempotent(request_id, *at_ms, *window_ms, command)
            }
        }
    }

    fn idempotent(
        &mut self,
        request_id: &[u8],
        at_ms: u64,
        window_ms: u64,
        command: &KvCommand,
    ) -> Result<KvResponse, KvError> {
        self.advance_clock(at_ms);
        self.expire_requests();
        let now = self.clock_ms;
        let fingerprint = fingerprint(command);
        if let Some(first) = self.requests.get(request_id)
            && now < first.expires_ms
        {
            if first.fingerprint != fingerprint {
                return Err(KvError::RequestIdReused);
            }
            return match &first.outcome {
                Ok(response) => {
                    Ok(KvResponse::Replayed { first: Box::new(response.clone()), values_elided: first.values_elided })
                }
                Err(e) => Err(e.clone()),
            };
        }
        let outcome = self.apply(command);
        let (remembered_outcome, values_elided) = if outcome_bytes(&outcome) > IDEMPOTENT_RESPONSE_BYTES_MAX {
            (outcome.clone().map(elide_values), true)
        } else {
            (outcome.clone(), false)
        };
        let remembered = Remembered {
            fingerprint,
            at_ms: now,
            expires_ms: now.saturating_add(window_ms),
            outcome: remembered_outcome,
            values_elided,
        };
        self.remember(request_id.to_vec(), remembered);
        outcome
    }

    /// Adds a remembered key (replacing an expired one of the same name)
    /// and forgets the oldest keys while the table is over its bounds.
    pub(crate) fn remember(&mut self, request_id: Vec<u8>, remembered: Remembered) {
        // Every remembered key has exactly one place in the order (what the
        // snapshot relies on): a key reused after its window leaves its old
        // place. Rare, so the linear scan is fine.
        if self.requests.contains_key(&request_id) {
            self.request_order.retain(|(_, id)| *id != request_id);
        }
        self.requests_bytes += remembered.bytes(&request_id);
        self.request_order.push_back((remembered.expires_ms, request_id.clone()));
        if let Some(old) = self.requests.insert(request_id.clone(), remembered) {
            self.requests_bytes = self.requests_bytes.saturating_sub(old.bytes(&request_id));
        }
        while self.requests.len() > IDEMPOTENCY_KEYS_MAX || self.requests_bytes > IDEMPOTENCY_BYTES_MAX {
            let Some((expires_ms, oldest)) = self.request_order.pop_front() else { break };
            self.forget_request(expires_ms, &oldest);
        }
    }

    /// Forgets every key whose window ended by the state machine's clock.
    /// Windows of different leaders may differ, so the order is only
    /// roughly by expiry; a lookup checks the expiry of the key it finds.
    fn expire_requests(&mut self) {
        let now = self.clock_ms;
        while let Some((expires_ms, _)) = self.request_order.front() {
            if *expires_ms > now {
                break;
            }
            let Some((expires_ms, request_id)) = self.request_order.pop_front() else { break };
            self.forget_request(expires_ms, &request_id);
        }
    }

    /// Removes `request_id` if its entry is the one that expires at
    /// `expires_ms` (a key reused after its window has a newer entry).
    fn forget_request(&mut self, expires_ms: u64, request_id: &[u8]) {
        if self.requests.get(request_id).is_some_and(|r| r.expires_ms == expires_ms)
            && let Some(old) = self.requests.remove(request_id)
        {
            self.requests_bytes = self.requests_bytes.saturating_sub(old.bytes(request_id));
        }
    }

    fn advance_clock(&mut self, now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
    }

    fn bump(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    /// Appends an event and drops the oldest while the history is over its
    /// limits.
    pub(crate) fn record(&mut self, event: StoredEvent) {
        self.events_bytes += event.bytes();
        self.events.push_back(event);
        self.trim_history();
    }

    fn trim_history(&mut self) {
        while self.events.len() > self.limits.events_max || self.events_bytes > self.limits.bytes_max {
            let Some(dropped) = self.events.pop_front() else { break };
            self.events_bytes = self.events_bytes.saturating_sub(dropped.bytes());
            self.events_dropped_through = dropped.revision;
        }
    }

    fn put(&mut self, revision: u64, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Option<KeyValue> {
        let prev = self.get(key);
        let (create_revision, version) = match &prev {
            Some(prev) => (prev.create_revision, prev.version + 1),
            None => (revision, 1),
        };
        if let Some(old_lease) = prev.as_ref().and_then(|kv| kv.lease)
            && Some(old_lease) != lease
            && let Some(entry) = self.leases.get_mut(&old_lease)
        {
            entry.keys.remove(key);
        }
        if let Some(lease) = lease
            && let Some(entry) = self.leases.get_mut(&lease)
        {
            entry.keys.insert(key.to_vec());
        }
        let value = Bytes::copy_from_slice(value);
        self.keys.insert(
            key.to_vec(),
            StoredKey { value: value.clone(), create_revision, mod_revision: revision, version, lease },
        );
        self.record(StoredEvent { revision, kind: WatchEventKind::Put, key: key.to_vec(), value: Some(value) });
        prev
    }

    fn delete(&mut self, revision: u64, key: &[u8]) -> bool {
        let Some(prev) = self.keys.remove(key) else { return false };
        if let Some(lease) = prev.lease
            && let Some(entry) = self.leases.get_mut(&lease)
        {
            entry.keys.remove(key);
        }
        self.record(StoredEvent { revision, kind: WatchEventKind::Delete, key: key.to_vec(), value: None });
        true
    }

    /// Deletes the lease, its keys and its lock holds. Returns the number of keys deleted.
    fn end_lease(&mut self, revision: u64, lease: LeaseId) -> usize {
        let Some(entry) = self.leases.remove(&lease) else { return 0 };
        let mut deleted = 0;
        for key in &entry.keys {
            // The key may have been rebound since; only delete it if it still
            // belongs to this lease.
            if self.keys.get(key.as_slice()).is_some_and(|kv| kv.lease == Some(lease)) && self.delete(revision, key) {
                deleted += 1;
            }
        }
        for name in &entry.locks {
            self.lock_release(name, lease);
        }
        deleted
    }

    fn compare(&self, compare: &Compare) -> bool {
        use std::cmp::Ordering;
        let kv = self.keys.get(compare.key.as_slice());
        let ordering: Option<Ordering> = match &compare.target {
            CompareTarget::Value(target) => {
                let current = kv.map(|kv| &kv.value[..]);
                match (current, target.as_deref()) {
                    (Some(current), Some(target)) => Some(current.cmp(target)),
                    (None, None) => Some(Ordering::Equal),
                    // Absent vs present: equal is false, not-equal is true,
                    // order is undefined (false).
                    _ => None,
                }
            }
            CompareTarget::Version(target) => Some(kv.map_or(0, |kv| kv.version).cmp(target)),
            CompareTarget::CreateRevision(target) => Some(kv.map_or(0, |kv| kv.create_revision).cmp(target)),
            CompareTarget::ModRevision(target) => Some(kv.map_or(0, |kv| kv.mod_revision).cmp(target)),
        };
        match (compare.op, ordering) {
            (CompareOp::Equal, Some(o)) => o == Ordering::Equal,
            (CompareOp::NotEqual, Some(o)) => o != Ordering::Equal,
            (CompareOp::NotEqual, None) => true,
            (CompareOp::Less, Some(o)) => o == Ordering::Less,
            (CompareOp::Greater, Some(o)) => o == Ordering::Greater,
            (_, None) => false,
        }
    }

    fn txn(&mut self, compares: &[Compare], success: &[TxnOp], failure: &[TxnOp]) -> Result<KvResponse, KvError> {
        let succeeded = compares.iter().all(|compare| self.compare(compare));
        let ops = if succeeded { success } else { failure };
        // Check every op before changing anything: a transaction applies all
        // of its branch or nothing.
        for op in ops {
            if let TxnOp::Put { lease: Some(lease), .. } = op
                && !self.leases.contains_key(lease)
            {
                return Err(KvError::LeaseNotFound(*lease));
            }
        }
        let writes = ops.iter().any(|op| !matches!(op, TxnOp::Get { .. }));
        let revision = if writes { self.bump() } else { self.revision };
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                TxnOp::Put { key, value, lease } => TxnOpResult::Put { prev: self.put(revision, key, value, *lease) },
                TxnOp::Delete { key } => TxnOpResult::Delete { existed: self.delete(revision, key) },
                TxnOp::Get { key } => TxnOpResult::Get { kv: self.get(key) },
            });
        }
        Ok(KvResponse::Txn { succeeded, revision, results })
    }

    fn lock_acquire(&mut self, name: &[u8], lease: LeaseId, mode: LockMode) -> Result<KvResponse, KvError> {
        if !self.leases.contains_key(&lease) {
            return Err(KvError::LeaseNotFound(lease));
        }
        if let Some(state) = self.locks.get(name) {
            if let Some(token) = state.holders.get(&lease)
                && state.mode == mode
            {
                return Ok(KvResponse::LockGranted { fencing_token: *token });
            }
            let compatible = mode == LockMode::Shared && state.mode == LockMode::Shared;
            if !compatible {
                return Ok(KvResponse::LockBusy { holders: state.holders.keys().copied().collect() });
            }
            if state.holders.len() >= LOCK_HOLDERS_MAX {
                return Err(KvError::LimitReached("lock holders".to_owned()));
            }
        }
        let fencing_token = self.bump();
        let state = self.locks.entry(name.to_vec()).or_insert(LockState { mode, holders: BTreeMap::new() });
        state.holders.insert(lease, fencing_token);
        if let Some(entry) = self.leases.get_mut(&lease) {
            entry.locks.insert(name.to_vec());
        }
        Ok(KvResponse::LockGranted { fencing_token })
    }

    fn lock_release(&mut self, name: &[u8], lease: LeaseId) -> bool {
        let Some(state) = self.locks.get_mut(name) else { return false };
        let was_held = state.holders.remove(&lease).is_some();
        if state.holders.is_empty() {
            self.locks.remove(name);
        }
        was_held
    }
}

/// Identifies a command for idempotency: a 64-bit FNV-1a hash of its
/// encoding with the stamped times cleared. Deterministic on every replica.
fn fingerprint(command: &KvCommand) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    // Encoding a validated command cannot fail; an empty encoding would
    // only make every such command share one fingerprint.
    let bytes = postcard::to_stdvec(&command.unstamped()).unwrap_or_default();
    bytes.iter().fold(OFFSET, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(PRIME))
}

/// Generous estimate of the bytes an answer holds (keys and values plus a
/// fixed overhead per item), for the idempotency table's bounds.
pub(crate) fn outcome_bytes(outcome: &Result<KvResponse, KvError>) -> usize {
    const ITEM_OVERHEAD_BYTES: usize = 64;
    fn kv(kv: &Option<KeyValue>) -> usize {
        kv.as_ref().map_or(0, |kv| kv.key.len() + kv.value.len() + ITEM_OVERHEAD_BYTES)
    }
    fn response(r: &KvResponse) -> usize {
        ITEM_OVERHEAD_BYTES
            + match r {
                KvResponse::Put { prev, .. } => kv(prev),
                KvResponse::CompareAndSwap { current, .. } => kv(current),
                KvResponse::Txn { results, .. } => results
                    .iter()
                    .map(|result| {
                        ITEM_OVERHEAD_BYTES
                            + match result {
                                TxnOpResult::Put { prev } => kv(prev),
                                TxnOpResult::Get { kv: found } => kv(found),
                                _ => 0,
                            }
                    })
                    .sum(),
                KvResponse::LeasesSwept { expired } => expired.len() * 8,
                KvResponse::LockBusy { holders } => holders.len() * 8,
                KvResponse::Replayed { first, .. } => response(first),
                _ => 0,
            }
    }
    match outcome {
        Ok(r) => response(r),
        Err(e) => ITEM_OVERHEAD_BYTES + e.to_string().len(),
    }
}

/// The answer with every value inside it emptied (keys, revisions and flags kept).
fn elide_values(response: KvResponse) -> KvResponse {
    fn kv(kv: Option<KeyValue>) -> Option<KeyValue> {
        kv.map(|kv| KeyValue { value: Vec::new(), ..kv })
    }
    match response {
        KvResponse::Put { revision, prev } => KvResponse::Put { revision, prev: kv(prev) },
        KvResponse::CompareAndSwap { succeeded, revision, current } => {
            KvResponse::CompareAndSwap { succeeded, revision, current: kv(current) }
        }
        KvResponse::Txn { succeeded, revision, results } => KvResponse::Txn {
            succeeded,
            revision,
            results: results
                .into_iter()
                .map(|result| match result {
                    TxnOpResult::Put { prev } => TxnOpResult::Put { prev: kv(prev) },
                    TxnOpResult::Get { kv: found } => TxnOpResult::Get { kv: kv(found) },
                    other => other,
                })
                .collect(),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KEY_BYTES_MAX, VALUE_BYTES_MAX};

    fn put(key: &str, value: &str) -> KvCommand {
        KvCommand::Put { key: key.into(), value: value.into(), lease: None }
    }

    fn grant(sm: &mut KvStateMachine, ttl_ms: u64, now_ms: u64) -> LeaseId {
        match sm.apply(&KvCommand::LeaseGrant { ttl_ms, now_ms }) {
            Ok(KvResponse::Lease { lease, .. }) => lease,
            other => panic!("grant failed: {other:?}"),
        }
    }

    fn token(response: Result<KvResponse, KvError>) -> u64 {
        match response {
            Ok(KvResponse::LockGranted { fencing_token }) => fencing_token,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    #[test]
    fn puts_track_create_and_mod_revisions_and_versions() {
        let mut sm = KvStateMachine::new();
        sm.apply(&put("a", "1")).unwrap();
        sm.apply(&put("b", "1")).unwrap();
        sm.apply(&put("a", "2")).unwrap();
        let a = sm.get(b"a").unwrap();
        assert_eq!((a.create_revision, a.mod_revision, a.version), (1, 3, 2));
        assert_eq!(sm.revision(), 3);
        sm.apply(&KvCommand::Delete { key: b"a".to_vec() }).unwrap();
        sm.apply(&put("a", "3")).unwrap();
        let a = sm.get(b"a").unwrap();
        assert_eq!((a.create_revision, a.mod_revision, a.version), (5, 5, 1));
    }

    #[test]
    fn deleting_an_absent_key_does_not_bump_the_revision() {
        let mut sm = KvStateMachine::new();
        let response = sm.apply(&KvCommand::Delete { key: b"x".to_vec() }).unwrap();
        assert_eq!(response, KvResponse::Delete { revision: 0, existed: false });
    }

    #[test]
    fn compare_and_swap_succeeds_only_on_the_expected_value() {
        let mut sm = KvStateMachine::new();
        let cas = |expected: Option<&str>, value: &str| KvCommand::CompareAndSwap {
            key: b"k".to_vec(),
            expected: expected.map(Into::into),
            value: value.into(),
        };
        assert!(matches!(sm.apply(&cas(None, "1")), Ok(KvResponse::CompareAndSwap { succeeded: true, .. })));
        assert!(matches!(sm.apply(&cas(None, "2")), Ok(KvResponse::CompareAndSwap { succeeded: false, .. })));
        assert!(matches!(sm.apply(&cas(Some("1"), "2")), Ok(KvResponse::CompareAndSwap { succeeded: true, .. })));
        assert_eq!(sm.get(b"k").unwrap().value, b"2");
    }

    #[test]
    fn a_transaction_runs_the_branch_its_compares_select() {
        let mut sm = KvStateMachine::new();
        sm.apply(&put("a", "1")).unwrap();
        let txn = KvCommand::Txn {
            compares: vec![
                Compare { key: b"a".to_vec(), op: CompareOp::Equal, target: CompareTarget::Value(Some(b"1".to_vec())) },
                Compare { key: b"a".to_vec(), op: CompareOp::Greater, target: CompareTarget::ModRevision(0) },
                Compare { key: b"z".to_vec(), op: CompareOp::Equal, target: CompareTarget::Version(0) },
            ],
            success: vec![
                TxnOp::Put { key: b"b".to_vec(), value: b"2".to_vec(), lease: None },
                TxnOp::Delete { key: b"a".to_vec() },
            ],
            failure: vec![TxnOp::Put { key: b"c".to_vec(), value: b"3".to_vec(), lease: None }],
        };
        let response = sm.apply(&txn).unwrap();
        assert!(matches!(response, KvResponse::Txn { succeeded: true, revision: 2, .. }));
        assert!(sm.get(b"a").is_none() && sm.get(b"b").is_some() && sm.get(b"c").is_none());
        // Same txn again: a is gone, so the failure branch runs.
        let response = sm.apply(&txn).unwrap();
        assert!(matches!(response, KvResponse::Txn { succeeded: false, revision: 3, .. }));
        assert!(sm.get(b"c").is_some());
        // Both ops of a branch share one revision.
        assert_eq!(sm.get(b"b").unwrap().mod_revision, 2);
    }

    #[test]
    fn a_transaction_with_a_dead_lease_applies_none_of_its_ops() {
        let mut sm = KvStateMachine::new();
        let txn = KvCommand::Txn {
            compares: vec![],
            success: vec![
                TxnOp::Put { key: b"a".to_vec(), value: b"1".to_vec(), lease: None },
                TxnOp::Put { key: b"b".to_vec(), value: b"1".to_vec(), lease: Some(77) },
            ],
            failure: vec![],
        };
        assert_eq!(sm.apply(&txn), Err(KvError::LeaseNotFound(77)));
        assert!(sm.is_empty());
        assert_eq!(sm.revision(), 0);
    }

    #[test]
    fn expired_leases_delete_their_keys_and_release_their_locks() {
        let mut sm = KvStateMachine::new();
        let lease = grant(&mut sm, 1_000, 10_000);
        sm.apply(&KvCommand::Put { key: b"k".to_vec(), value: b"v".to_vec(), lease: Some(lease) }).unwrap();
        token(sm.apply(&KvCommand::LockAcquire { name: b"l".to_vec(), lease, mode: LockMode::Exclusive }));
        assert!(!sm.has_expired_leases(10_999));
        let swept = sm.apply(&KvCommand::ExpireLeases { now_ms: 10_999 }).unwrap();
        assert_eq!(swept, KvResponse::LeasesSwept { expired: vec![] });
        assert!(sm.get(b"k").is_some());
        sm.apply(&KvCommand::ExpireLeases { now_ms: 11_000 }).unwrap();
        assert!(sm.get(b"k").is_none());
        assert!(sm.lock(b"l").is_none());
        assert!(sm.lease(lease).is_none());
        let events = sm.events_since(0, 100).unwrap();
        assert_eq!(events.last().unwrap().kind, WatchEventKind::Delete);
    }

    #[test]
    fn keep_alive_extends_a_lease_and_the_clock_never_goes_back() {
        let mut sm = KvStateMachine::new();
        let lease = grant(&mut sm, 1_000, 10_000);
        sm.apply(&KvCommand::LeaseKeepAlive { lease, now_ms: 10_800 }).unwrap();
        // A leader with a slower clock cannot expire it early.
        sm.apply(&KvCommand::ExpireLeases { now_ms: 5_000 }).unwrap();
        sm.apply(&KvCommand::ExpireLeases { now_ms: 11_500 }).unwrap();
        assert!(sm.lease(lease).is_some());
        assert_eq!(sm.clock_ms(), 11_500);
        sm.apply(&KvCommand::ExpireLeases { now_ms: 11_800 }).unwrap();
        assert!(sm.lease(lease).is_none());
        assert_eq!(sm.apply(&KvCommand::LeaseKeepAlive { lease, now_ms: 11_900 }), Err(KvError::LeaseNotFound(lease)));
    }

    #[test]
    fn exclusive_locks_exclude_and_fencing_tokens_grow_across_holders() {
        let mut sm = KvStateMachine::new();
        let a = grant(&mut sm, 1_000, 0);
        let b = grant(&mut sm, 5_000, 0);
        let acquire = |lease, mode| KvCommand::LockAcquire { name: b"l".to_vec(), lease, mode };
        let first = token(sm.apply(&acquire(a, LockMode::Exclusive)));
        assert_eq!(token(sm.apply(&acquire(a, LockMode::Exclusive))), first, "re-acquire is idempotent");
        assert_eq!(sm.apply(&acquire(b, LockMode::Exclusive)), Ok(KvResponse::LockBusy { holders: vec![a] }));
        assert!(matches!(sm.apply(&acquire(b, LockMode::Shared)), Ok(KvResponse::LockBusy { .. })));
        // a's lease expires while it is paused; b takes over with a larger token.
        sm.apply(&KvCommand::ExpireLeases { now_ms: 1_000 }).unwrap();
        let second = token(sm.apply(&acquire(b, LockMode::Exclusive)));
        assert!(second > first);
    }

    #[test]
    fn shared_locks_admit_many_holders_but_no_exclusive_one() {
        let mut sm = KvStateMachine::new();
        let a = grant(&mut sm, 1_000, 0);
        let b = grant(&mut sm, 1_000, 0);
        let c = grant(&mut sm, 1_000, 0);
        let acquire = |lease, mode| KvCommand::LockAcquire { name: b"l".to_vec(), lease, mode };
        let ta = token(sm.apply(&acquire(a, LockMode::Shared)));
        let tb = token(sm.apply(&acquire(b, LockMode::Shared)));
        assert!(tb > ta);
        assert!(matches!(sm.apply(&acquire(c, LockMode::Exclusive)), Ok(KvResponse::LockBusy { .. })));
        sm.apply(&KvCommand::LockRelease { name: b"l".to_vec(), lease: a }).unwrap();
        sm.apply(&KvCommand::LeaseRevoke { lease: b }).unwrap();
        let tc = token(sm.apply(&acquire(c, LockMode::Exclusive)));
        assert!(tc > tb);
    }

    #[test]
    fn refresh_gives_every_lease_a_full_ttl_from_the_new_leaders_time() {
        let mut sm = KvStateMachine::new();
        let lease = grant(&mut sm, 1_000, 0);
        sm.apply(&KvCommand::RefreshLeases { now_ms: 900 }).unwrap();
        sm.apply(&KvCommand::ExpireLeases { now_ms: 1_500 }).unwrap();
        assert!(sm.lease(lease).is_some());
    }

    #[test]
    fn watch_history_is_ordered_bounded_and_reports_compaction() {
        let mut sm = KvStateMachine::new();
        for i in 0..(WATCH_HISTORY_MAX + 10) {
            sm.apply(&put("k", &i.to_string())).unwrap();
        }
        let error = sm.events_since(5, 5).unwrap_err();
        assert_eq!(error, KvError::Compacted { requested: 5, oldest: 11 });
        let events = sm.events_since(20, 3).unwrap();
        assert_eq!(events.iter().map(|e| e.revision).collect::<Vec<_>>(), vec![20, 21, 22]);
        assert!(sm.events_since(sm.revision() + 1, 10).unwrap().is_empty());
    }

    #[test]
    fn oversized_keys_and_values_are_refused_without_changing_state() {
        let mut sm = KvStateMachine::new();
        let big_key = vec![b'k'; KEY_BYTES_MAX + 1];
        assert!(matches!(
            sm.apply(&KvCommand::Put { key: big_key, value: vec![], lease: None }),
            Err(KvError::BadKey { .. })
        ));
        assert!(matches!(
            sm.apply(&KvCommand::Put { key: b"k".to_vec(), value: vec![0; VALUE_BYTES_MAX + 1], lease: None }),
            Err(KvError::ValueTooLarge { .. })
        ));
        assert!(matches!(sm.apply(&KvCommand::LeaseGrant { ttl_ms: 0, now_ms: 0 }), Err(KvError::BadTtl(0))));
        assert_eq!(sm, KvStateMachine::new());
    }

    #[test]
    fn range_returns_keys_in_order_within_bounds() {
        let mut sm = KvStateMachine::new();
        for key in ["a", "b", "c", "d"] {
            sm.apply(&put(key, "v")).unwrap();
        }
        let keys: Vec<Vec<u8>> = sm.range(b"b", Some(b"d"), 10).into_iter().map(|kv| kv.key).collect();
        assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(sm.range(b"a", None, 2).len(), 2);
        assert!(sm.range(b"c", Some(b"a"), 10).is_empty());
    }

    fn idempotent(request_id: &str, at_ms: u64, command: KvCommand) -> KvCommand {
        KvCommand::Idempotent { request_id: request_id.into(), at_ms, window_ms: 1_000, command: Box::new(command) }
    }

    #[test]
    fn watch_history_is_bounded_in_bytes_as_well_as_events() {
        let mut sm = KvStateMachine::with_history_limits(HistoryLimits { events_max: 1_000, bytes_max: 10_000 });
        for i in 0..50u64 {
            sm.apply(&KvCommand::Put { key: format!("k{i}").into_bytes(), value: vec![7; 1_000], lease: None })
                .unwrap();
        }
        let (events, bytes) = sm.history_size();
        assert!(bytes <= 10_000, "the history holds {bytes} bytes, over its 10000-byte bound");
        assert_eq!(events, 9, "each event is 1002 or 1003 bytes: nine fit in 10000");
        let oldest = sm.revision() - events as u64 + 1;
        assert!(matches!(sm.events_since(oldest - 1, 10), Err(KvError::Compacted { .. })));
        assert_eq!(sm.events_since(oldest, 100).unwrap().len(), events);
        // Lowering the limits trims at once.
        sm.set_history_limits(HistoryLimits { events_max: 3, bytes_max: 10_000 });
        assert_eq!(sm.history_size().0, 3);
    }

    #[test]
    fn an_idempotent_retry_applies_nothing_and_answers_the_first_outcome() {
        let mut sm = KvStateMachine::new();
        let first = sm.apply(&idempotent("r1", 100, put("k", "1"))).unwrap();
        assert!(matches!(first, KvResponse::Put { revision: 1, .. }));
        let again = sm.apply(&idempotent("r1", 200, put("k", "1"))).unwrap();
        assert_eq!(again, KvResponse::Replayed { first: Box::new(first), values_elided: false });
        assert_eq!(sm.revision(), 1, "the retry bumped the revision");
        assert_eq!(sm.get(b"k").unwrap().version, 1, "the retry wrote the key again");
        // The same key for another command is refused and changes nothing.
        assert_eq!(sm.apply(&idempotent("r1", 300, put("k", "2"))), Err(KvError::RequestIdReused));
        assert_eq!(sm.get(b"k").unwrap().value, b"1");
        // A lease grant stamped again on retry is still the same command.
        let grant = |now_ms| idempotent("g", now_ms, KvCommand::LeaseGrant { ttl_ms: 5_000, now_ms });
        let lease = sm.apply(&grant(400)).unwrap();
        assert!(matches!(sm.apply(&grant(450)).unwrap(), KvResponse::Replayed { first, .. } if *first == lease));
        assert_eq!(sm.leases().count(), 1, "the retried grant made a second lease");
    }

    #[test]
    fn idempotency_keys_expire_by_leader_stamped_time_only() {
        let mut sm = KvStateMachine::new();
        sm.apply(&idempotent("r", 10_000, put("k", "1"))).unwrap();
        // Stamped inside the window (window 1000 ms): a replay.
        assert!(matches!(sm.apply(&idempotent("r", 10_999, put("k", "1"))), Ok(KvResponse::Replayed { .. })));
        // An unsafe leader stamps 0: the state machine's own clock is used,
        // so the key is still remembered.
        assert!(matches!(sm.apply(&idempotent("r", 0, put("k", "1"))), Ok(KvResponse::Replayed { .. })));
        // Past the window the key is forgotten and the write applies again.
        assert!(matches!(sm.apply(&idempotent("r", 11_000, put("k", "1"))), Ok(KvResponse::Put { revision: 2, .. })));
        assert_eq!(sm.remembered_requests(), 1);
    }

    #[test]
    fn the_idempotency_table_forgets_the_oldest_key_past_its_bound() {
        let mut sm = KvStateMachine::new();
        for i in 0..(crate::kv::IDEMPOTENCY_KEYS_MAX + 5) {
            sm.apply(&idempotent(&format!("r{i}"), 1, put("k", "v"))).unwrap();
        }
        assert_eq!(sm.remembered_requests(), crate::kv::IDEMPOTENCY_KEYS_MAX);
        // The oldest were forgotten: their retries apply again.
        assert!(matches!(sm.apply(&idempotent("r0", 1, put("k", "v"))), Ok(KvResponse::Put { .. })));
        let newest = format!("r{}", crate::kv::IDEMPOTENCY_KEYS_MAX + 4);
        assert!(matches!(sm.apply(&idempotent(&newest, 1, put("k", "v"))), Ok(KvResponse::Replayed { .. })));
    }

    #[test]
    fn a_large_remembered_answer_keeps_its_revision_but_not_its_values() {
        let mut sm = KvStateMachine::new();
        let big = vec![b'x'; VALUE_BYTES_MAX];
        for key in ["a", "b"] {
            sm.apply(&KvCommand::Put { key: key.into(), value: big.clone(), lease: None }).unwrap();
        }
        let reads = KvCommand::Txn {
            compares: vec![],
            success: vec![TxnOp::Get { key: b"a".to_vec() }, TxnOp::Get { key: b"b".to_vec() }],
            failure: vec![],
        };
        let first = sm.apply(&idempotent("t", 1, reads.clone())).unwrap();
        let KvResponse::Replayed { first: replayed, values_elided } = sm.apply(&idempotent("t", 2, reads)).unwrap()
        else {
            panic!("expected a replay");
        };
        assert!(values_elided);
        let (KvResponse::Txn { revision, results, .. }, KvResponse::Txn { revision: first_revision, .. }) =
            (*replayed, first)
        else {
            panic!("expected transactions");
        };
        assert_eq!(revision, first_revision);
        assert!(results.iter().all(|r| matches!(r, TxnOpResult::Get { kv: Some(kv) } if kv.value.is_empty())));
    }

    #[test]
    fn lease_time_is_stamped_only_from_a_safe_clock() {
        let mut grant = KvCommand::LeaseGrant { ttl_ms: 1_000, now_ms: 99 };
        assert_eq!(grant.stamp(None, 1_000), Err(KvError::ClockUnsafe));
        grant.stamp(Some(5_000), 1_000).unwrap();
        assert_eq!(grant, KvCommand::LeaseGrant { ttl_ms: 1_000, now_ms: 5_000 });
        let mut keyed = idempotent("r", 0, put("k", "v"));
        keyed.stamp(None, 30_000).unwrap();
        assert!(matches!(keyed, KvCommand::Idempotent { at_ms: 0, window_ms: 30_000, .. }));
    }
}
