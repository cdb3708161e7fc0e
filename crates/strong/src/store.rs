//! The Raft log and the state machine on a chorus [`Storage`].
//!
//! Keyspaces (see `docs/design/strong.md`):
//! - `raft.log`: big-endian `u64` log index → postcard(`Entry`);
//! - `raft.meta`: `vote`, `committed`, `purged` → postcard of the log id / vote;
//! - `raft.sm`: the last snapshot: `meta` → postcard(`SnapshotMeta`), `chunk/<u32 BE>` → bytes.
//!
//! Durability follows openraft's contract (`RaftLogStorage::append`): the
//! flush callback fires only after the batch holding the entries has been
//! committed, i.e. fsynced by the storage layer. The state machine lives in
//! memory and is made durable by snapshots plus the log: at start it is
//! loaded from the last snapshot and openraft re-applies the log from there
//! up to the persisted `committed` id. Logs are purged only after a snapshot
//! covering them is on disk (openraft purges after `build_snapshot`
//! returns, and `build_snapshot` persists before returning).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chorus_storage::{KeyRange, Storage, WriteBatch};
use futures_util::{Stream, StreamExt};
use openraft::storage::{EntryResponder, IOFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder};
use serde::{Serialize, de::DeserializeOwned};

use crate::kv::{KvResponse, KvStateMachine};
use crate::types::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership, StrongTypes, Vote};

/// Every space of this store starts with this (the daemon skips them when it
/// loads the eventual state).
pub const SPACE_PREFIX: &str = "raft.";
/// Keyspace of the Raft log.
pub const LOG_SPACE: &str = "raft.log";
/// Keyspace of the vote, committed and purged log ids.
pub const META_SPACE: &str = "raft.meta";
/// Keyspace of the last snapshot.
pub const SM_SPACE: &str = "raft.sm";
/// Snapshot bytes per stored value. Below the storage layer's value limit.
pub const SNAPSHOT_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Largest snapshot, in bytes. A snapshot is committed in one batch, whose
/// payload the storage layer bounds at 64 MiB; it also travels as one
/// transport frame (16 MiB by default, see `TransportConfig::frame_bytes_max`).
pub const SNAPSHOT_BYTES_MAX: usize = 48 * 1024 * 1024;

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const PURGED_KEY: &[u8] = b"purged";
const SNAPSHOT_META_KEY: &[u8] = b"meta";
const SNAPSHOT_CHUNK_PREFIX: &[u8] = b"chunk/";

fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(io::Error::other)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Commits `batch` durably without blocking the async runtime (the
/// `Storage` contract forbids calling `commit` on a runtime thread):
/// straight into the group committer's queue when the store has one,
/// otherwise on a blocking thread.
async fn commit(storage: &Arc<dyn Storage>, batch: WriteBatch) -> io::Result<()> {
    let batch = match storage.try_submit(batch) {
        Ok(ticket) => return ticket.await.map_err(io::Error::other),
        Err(batch) => batch,
    };
    let storage = Arc::clone(storage);
    tokio::task::spawn_blocking(move || storage.commit(batch))
        .await
        .map_err(io::Error::other)?
        .map_err(io::Error::other)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

#[derive(Default)]
struct LogCache {
    /// Every entry on disk, mirrored: replication reads never touch the
    /// disk. Bounded by the snapshot policy (entries are purged after each
    /// snapshot, keeping `max_in_snapshot_log_to_keep`).
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// Whether `committed` changed since it was last written.
    committed_dirty: bool,
    purged: Option<LogId>,
}

/// The Raft log ([`RaftLogStorage`]) over a [`Storage`].
#[derive(Clone)]
pub struct LogStore {
    cache: Arc<Mutex<LogCache>>,
    storage: Arc<dyn Storage>,
}

impl LogStore {
    /// Loads the log and its metadata from `storage`.
    pub async fn open(storage: Arc<dyn Storage>) -> io::Result<Self> {
        let reader = Arc::clone(&storage);
        let cache = blocking(move || {
            let mut cache = LogCache::default();
            let mut failure = None;
            reader
                .for_each(LOG_SPACE, &mut |_, value| match decode::<Entry>(value) {
                    Ok(entry) => {
                        cache.entries.insert(entry.log_id.index, entry);
                        std::ops::ControlFlow::Continue(())
                    }
                    Err(e) => {
                        failure = Some(e);
                        std::ops::ControlFlow::Break(())
                    }
                })
                .map_err(io::Error::other)?;
            if let Some(e) = failure {
                return Err(e);
            }
            let meta = |key: &[u8]| reader.get(META_SPACE, key).map_err(io::Error::other);
            cache.vote = meta(VOTE_KEY)?.map(|b| decode(&b)).transpose()?;
            cache.committed = meta(COMMITTED_KEY)?.map(|b| decode(&b)).transpose()?;
            cache.purged = meta(PURGED_KEY)?.map(|b| decode(&b)).transpose()?;
            Ok(cache)
        })
        .await?;
        Ok(Self { cache: Arc::new(Mutex::new(cache)), storage })
    }
}

impl RaftLogReader<StrongTypes> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let cache = lock(&self.cache);
        Ok(cache.entries.range(range).map(|(_, entry)| entry.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(lock(&self.cache).vote)
    }
}

impl RaftLogStorage<StrongTypes> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<StrongTypes>, io::Error> {
        let cache = lock(&self.cache);
        let last = cache.entries.values().next_back().map(|entry| entry.log_id).or(cache.purged);
        Ok(LogState { last_purged_log_id: cache.purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut batch = WriteBatch::new();
        batch.put(META_SPACE, VOTE_KEY, encode(vote)?);
        commit(&self.storage, batch).await?;
        lock(&self.cache).vote = Some(*vote);
        Ok(())
    }

    /// The committed id is a hint for recovery (re-apply up to it at
    /// start-up), never a promise: Raft does not need it durable, and a
    /// stored value that lags only means the node re-learns the rest from
    /// the leader. So it is not committed on its own (that was one more
    /// fsync on every commit's critical path): the next `append` writes it
    /// in the same batch as its entries. It never gets ahead of the log:
    /// every entry it covers was appended, durably, before this call.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let mut cache = lock(&self.cache);
        cache.committed = committed;
        cache.committed_dirty = true;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(lock(&self.cache).committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<StrongTypes>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut batch = WriteBatch::new();
        for entry in &entries {
            batch.put(LOG_SPACE, index_key(entry.log_id.index), encode(entry)?);
        }
        let committed = {
            let cache = lock(&self.cache);
            cache.committed_dirty.then_some(cache.committed)
        };
        match committed {
            Some(Some(log_id)) => {
                batch.put(META_SPACE, COMMITTED_KEY, encode(&log_id)?);
            }
            Some(None) => {
                batch.delete(META_SPACE, COMMITTED_KEY);
            }
            None => {}
        }
        // Durable first, then visible and acknowledged.
        if let Err(e) = commit(&self.storage, batch).await {
            callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(e);
        }
        {
            let mut cache = lock(&self.cache);
            for entry in entries {
                cache.entries.insert(entry.log_id.index, entry);
            }
            // Unless it moved again meanwhile, what was written is current.
            if committed == Some(cache.committed) {
                cache.committed_dirty = false;
            }
        }
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let first_removed = last_log_id.map_or(0, |log_id| log_id.index + 1);
        let mut batch = WriteBatch::new();
        batch.delete_range(LOG_SPACE, KeyRange::from_key(index_key(first_removed)));
        commit(&self.storage, batch).await?;
        lock(&self.cache).entries.split_off(&first_removed);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut batch = WriteBatch::new();
        batch.delete_range(LOG_SPACE, KeyRange::before_key(index_key(log_id.index.saturating_add(1))));
        batch.put(META_SPACE, PURGED_KEY, encode(&log_id)?);
        commit(&self.storage, batch).await?;
        let mut cache = lock(&self.cache);
        let kept = cache.entries.split_off(&log_id.index.saturating_add(1));
        cache.entries = kept;
        cache.purged = Some(log_id);
        Ok(())
    }
}

/// The in-memory state shared by the Raft state-machine worker and the
/// node's read path.
pub struct SmShared {
    /// The key-value state machine.
    pub kv: KvStateMachine,
    /// The last applied log id.
    pub last_applied: Option<LogId>,
    /// The membership as of `last_applied`.
    pub last_membership: StoredMembership,
    snapshot: Option<(SnapshotMeta, Arc<Vec<u8>>)>,
}

/// The state machine ([`RaftStateMachine`]) and its snapshots.
#[derive(Clone)]
pub struct SmStore {
    shared: Arc<RwLock<SmShared>>,
    storage: Arc<dyn Storage>,
}

impl SmStore {
    /// Loads the last snapshot from `storage`, or starts empty.
    pub async fn open(storage: Arc<dyn Storage>) -> io::Result<Self> {
        let reader = Arc::clone(&storage);
        let stored = blocking(move || {
            let Some(meta) = reader.get(SM_SPACE, SNAPSHOT_META_KEY).map_err(io::Error::other)? else {
                return Ok(None);
            };
            let meta: SnapshotMeta = decode(&meta)?;
            let mut data: Vec<u8> = Vec::new();
            reader
                .for_each(SM_SPACE, &mut |key, value| {
                    if key.starts_with(SNAPSHOT_CHUNK_PREFIX) {
                        data.extend_from_slice(value);
                    }
                    std::ops::ControlFlow::Continue(())
                })
                .map_err(io::Error::other)?;
            Ok::<_, io::Error>(Some((meta, data)))
        })
        .await?;
        let shared = match stored {
            Some((meta, data)) => SmShared {
                kv: decode(&data)?,
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership.clone(),
                snapshot: Some((meta, Arc::new(data))),
            },
            None => SmShared {
                kv: KvStateMachine::new(),
                last_applied: None,
                last_membership: StoredMembership::default(),
                snapshot: None,
            },
        };
        Ok(Self { shared: Arc::new(RwLock::new(shared)), storage })
    }

    /// The shared state, for reads.
    pub fn shared(&self) -> Arc<RwLock<SmShared>> {
        Arc::clone(&self.shared)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, SmShared> {
        self.shared.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SmShared> {
        self.shared.write().unwrap_or_else(PoisonError::into_inner)
    }

    async fn persist_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        if data.len() > SNAPSHOT_BYTES_MAX {
            return Err(io::Error::other(format!(
                "snapshot of {} bytes exceeds the maximum of {SNAPSHOT_BYTES_MAX}",
                data.len()
            )));
        }
        let mut batch = WriteBatch::new();
        batch.delete_range(SM_SPACE, KeyRange::prefix(SNAPSHOT_CHUNK_PREFIX));
        for (i, chunk) in data.chunks(SNAPSHOT_CHUNK_BYTES).enumerate() {
            let mut key = SNAPSHOT_CHUNK_PREFIX.to_vec();
            key.extend_from_slice(&(i as u32).to_be_bytes());
            batch.put(SM_SPACE, key, chunk);
        }
        batch.put(SM_SPACE, SNAPSHOT_META_KEY, encode(meta)?);
        commit(&self.storage, batch).await
    }
}

impl RaftSnapshotBuilder<StrongTypes> for SmStore {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (meta, data) = {
            let shared = self.read();
            let meta =
                SnapshotMeta { last_log_id: shared.last_applied, last_membership: shared.last_membership.clone() };
            (meta, encode(&shared.kv)?)
        };
        self.persist_snapshot(&meta, &data).await?;
        self.write().snapshot = Some((meta.clone(), Arc::new(data.clone())));
        Ok(Snapshot { meta, snapshot: data })
    }
}

impl RaftStateMachine<StrongTypes> for SmStore {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SmStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let shared = self.read();
        Ok((shared.last_applied, shared.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<StrongTypes>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let result = {
                let mut shared = self.write();
                shared.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => Ok(KvResponse::Empty),
                    EntryPayload::Normal(ref command) => shared.kv.apply(command),
                    EntryPayload::Membership(ref membership) => {
                        shared.last_membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                        Ok(KvResponse::Empty)
                    }
                }
            };
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Vec<u8>) -> Result<(), io::Error> {
        let kv: KvStateMachine = decode(&snapshot)?;
        self.persist_snapshot(meta, &snapshot).await?;
        let mut shared = self.write();
        shared.kv = kv;
        shared.last_applied = meta.last_log_id;
        shared.last_membership = meta.last_membership.clone();
        shared.snapshot = Some((meta.clone(), Arc::new(snapshot)));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let shared = self.read();
        Ok(shared
            .snapshot
            .as_ref()
            .map(|(meta, data)| Snapshot { meta: meta.clone(), snapshot: data.as_ref().clone() }))
    }
}

#[cfg(test)]
mod tests {
    use chorus_storage::MemoryStorage;
    use openraft::RaftLogReader;
    use openraft::vote::RaftLeaderIdExt;

    use super::*;
    use crate::kv::KvCommand;
    use crate::types::CommittedLeaderId;

    fn entry(term: u64, index: u64) -> Entry {
        let leader = CommittedLeaderId::new_committed(term, 1);
        Entry {
            log_id: LogId::new(leader, index),
            payload: EntryPayload::Normal(KvCommand::Delete { key: index.to_string().into_bytes() }),
        }
    }

    #[tokio::test]
    async fn the_log_survives_reopening_with_truncation_and_purge_applied() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let mut log = LogStore::open(Arc::clone(&storage)).await.unwrap();
        log.append((1..=10).map(|i| entry(1, i)), IOFlushed::noop()).await.unwrap();
        log.truncate_after(Some(entry(1, 7).log_id)).await.unwrap();
        log.purge(entry(1, 3).log_id).await.unwrap();
        log.save_committed(Some(entry(1, 6).log_id)).await.unwrap();
        let reopened = LogStore::open(Arc::clone(&storage)).await.unwrap();
        assert_eq!(
            lock(&reopened.cache).committed,
            None,
            "the committed id is written with the next append, not on its own"
        );
        log.append([entry(1, 8)], IOFlushed::noop()).await.unwrap();

        let mut reopened = LogStore::open(storage).await.unwrap();
        let state = reopened.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(entry(1, 3).log_id));
        assert_eq!(state.last_log_id, Some(entry(1, 8).log_id));
        let indexes: Vec<u64> =
            reopened.try_get_log_entries(0..100).await.unwrap().iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, vec![4, 5, 6, 7, 8]);
        assert_eq!(reopened.read_committed().await.unwrap(), Some(entry(1, 6).log_id));
    }
}
