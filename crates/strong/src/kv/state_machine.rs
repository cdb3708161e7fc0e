//! [`KvStateMachine`]: the revisioned store that applies [`KvCommand`]s in log
//! order and answers reads. It is pure and deterministic, as the parent
//! module `kv` explains. Keeping it apart from the interface types lets a
//! reader check the apply rules (revisions, lease expiry, lock
//! compatibility and fencing tokens, the bounded watch history) in one file
//! against `docs/design/strong.md`, section "State machine (`kv`)".

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::{
    Compare, CompareOp, CompareTarget, KeyValue, KvCommand, KvError, KvResponse, LEASES_MAX, LOCK_HOLDERS_MAX, Lease,
    LeaseId, LockMode, LockState, RANGE_LIMIT_MAX, TxnOp, TxnOpResult, WATCH_HISTORY_MAX, WatchEvent, WatchEventKind,
};

/// The state machine. Its serialised form is the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStateMachine {
    revision: u64,
    keys: BTreeMap<Vec<u8>, KeyValue>,
    leases: BTreeMap<LeaseId, Lease>,
    next_lease_id: LeaseId,
    locks: BTreeMap<Vec<u8>, LockState>,
    events: VecDeque<WatchEvent>,
    /// Revision of the newest event dropped from `events` (0: none).
    events_dropped_through: u64,
    /// Highest `now_ms` seen in any command: the state machine's clock never
    /// goes back, whichever leader stamped the command.
    clock_ms: u64,
}

impl KvStateMachine {
    /// An empty store at revision 0.
    pub fn new() -> Self {
        Self { next_lease_id: 1, ..Self::default() }
    }

    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The state machine's clock: the highest `now_ms` any applied command carried.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// The key-value for `key`.
    pub fn get(&self, key: &[u8]) -> Option<&KeyValue> {
        self.keys.get(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
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
            .map(|(_, kv)| kv.clone())
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
    /// `from_revision` were dropped from the history (it keeps the last
    /// [`WATCH_HISTORY_MAX`]).
    pub fn events_since(&self, from_revision: u64, limit: usize) -> Result<Vec<WatchEvent>, KvError> {
        if self.events_dropped_through > 0 && from_revision <= self.events_dropped_through {
            return Err(KvError::Compacted { requested: from_revision, oldest: self.events_dropped_through + 1 });
        }
        let start = self.events.partition_point(|event| event.revision < from_revision);
        Ok(self.events.iter().skip(start).take(limit).cloned().collect())
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
                let current = self.keys.get(key.as_slice()).map(|kv| &kv.value);
                if current != expected.as_ref() {
                    return Ok(KvResponse::CompareAndSwap {
                        succeeded: false,
                        revision: self.revision,
                        current: self.keys.get(key.as_slice()).cloned(),
                    });
                }
                let revision = self.bump();
                self.put(revision, key, value, None);
                Ok(KvResponse::CompareAndSwap {
                    succeeded: true,
                    revision,
                    current: self.keys.get(key.as_slice()).cloned(),
                })
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
        }
    }

    fn advance_clock(&mut self, now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
    }

    fn bump(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn record(&mut self, event: WatchEvent) {
        if self.events.len() >= WATCH_HISTORY_MAX
            && let Some(dropped) = self.events.pop_front()
        {
            self.events_dropped_through = dropped.revision;
        }
        self.events.push_back(event);
    }

    fn put(&mut self, revision: u64, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Option<KeyValue> {
        let prev = self.keys.get(key).cloned();
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
        self.keys.insert(
            key.to_vec(),
            KeyValue {
                key: key.to_vec(),
                value: value.to_vec(),
                create_revision,
                mod_revision: revision,
                version,
                lease,
            },
        );
        self.record(WatchEvent { revision, kind: WatchEventKind::Put, key: key.to_vec(), value: Some(value.to_vec()) });
        prev
    }

    fn delete(&mut self, revision: u64, key: &[u8]) -> bool {
        let Some(prev) = self.keys.remove(key) else { return false };
        if let Some(lease) = prev.lease
            && let Some(entry) = self.leases.get_mut(&lease)
        {
            entry.keys.remove(key);
        }
        self.record(WatchEvent { revision, kind: WatchEventKind::Delete, key: key.to_vec(), value: None });
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
                let current = kv.map(|kv| &kv.value);
                match (current, target.as_ref()) {
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
                TxnOp::Get { key } => TxnOpResult::Get { kv: self.keys.get(key.as_slice()).cloned() },
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
}
