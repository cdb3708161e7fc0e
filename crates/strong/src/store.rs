//! The Raft log and the state machine on a chorus [`Storage`].
//!
//! Keyspaces (see `docs/design/strong.md`):
//! - `raft.log`: big-endian `u64` log index → postcard(`Entry`);
//! - `raft.meta`: `vote`, `committed`, `purged` → postcard of the log id / vote;
//! - `raft.sm`: the last snapshot: `snapshot` → postcard of its metadata
//!   and chunk count, `part/<id u64 BE><index u32 BE>` → one chunk of its
//!   record stream (`kv::snapshot`).
//!
//! Durability follows openraft's contract (`RaftLogStorage::append`): the
//! flush callback fires only after the batch holding the entries has been
//! committed, i.e. fsynced by the storage layer. The state machine lives in
//! memory and is made durable by snapshots plus the log: at start it is
//! loaded from the last snapshot and openraft re-applies the log from there
//! up to the persisted `committed` id. Logs are purged only after a snapshot
//! covering them is on disk (openraft purges after `build_snapshot`
//! returns, and `build_snapshot` persists before returning).
//!
//! A snapshot is never one buffer (`docs/design/strong.md`, "Snapshot
//! format"): it is built from a copy of the state machine taken between two
//! applies, written one chunk per commit, made current by one small batch
//! that also deletes the previous snapshot's chunks, read back chunk by
//! chunk, and sent to a follower chunk by chunk (`network`). What openraft
//! holds as the snapshot's data is a handle, [`SnapshotData`].

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chorus_storage::{KeyRange, Storage, WriteBatch};
use futures_util::{Stream, StreamExt};
use openraft::storage::{EntryResponder, IOFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder};
use serde::{Serialize, de::DeserializeOwned};

use crate::kv::snapshot::{self, SnapshotDecoder};
use crate::kv::{HistoryLimits, KvResponse, KvStateMachine};
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

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const PURGED_KEY: &[u8] = b"purged";
/// Which snapshot is current (a [`StoredSnapshot`]).
const SNAPSHOT_KEY: &[u8] = b"snapshot";
/// Chunks of snapshots: `part/<id u64 BE><index u32 BE>`.
const SNAPSHOT_PART_PREFIX: &[u8] = b"part/";
/// The metadata of a snapshot of the layout written before the record stream.
const LEGACY_META_KEY: &[u8] = b"meta";
/// The chunks (`chunk/<u32 BE>`) of a snapshot of that layout.
const LEGACY_CHUNK_PREFIX: &[u8] = b"chunk/";

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

impl LogStore {
    /// The id of the last entry in the log (or the last purged one), as
    /// loaded: a node's read floor after a restart (see
    /// `docs/design/strong.md`, "Reads after a restart").
    pub fn last_log_id(&self) -> Option<LogId> {
        let cache = lock(&self.cache);
        cache.entries.values().next_back().map(|entry| entry.log_id).or(cache.purged)
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
        let last_log_id = self.last_log_id();
        Ok(LogState { last_purged_log_id: lock(&self.cache).purged, last_log_id })
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
    /// the leader. (A leader that restarts into its own term starts from
    /// this lagging value too; its linearizable reads wait for the node's
    /// read floor, `docs/design/strong.md`, "Reads after a restart".) So it is not committed on its own (that was one more
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

/// Statistics of one node's snapshots, for `/v1/raft` and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SnapshotStatus {
    /// Log index the current snapshot covers, if there is one.
    pub last_index: Option<u64>,
    /// Bytes of the current snapshot's record stream.
    pub bytes: u64,
    /// Chunks it is stored in.
    pub chunks: u32,
    /// Snapshots this node built since it started.
    pub built_total: u64,
    /// Snapshots received from a leader and installed since it started.
    pub installed_total: u64,
    /// Snapshots this node sent to a follower, completely, since it started.
    pub sent_total: u64,
    /// Snapshot chunks received from a leader since it started.
    pub chunks_received_total: u64,
}

/// A handle to a snapshot's chunks in the store: what openraft carries
/// around as the snapshot's data. The bytes stay on disk; whoever needs
/// them reads them chunk by chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SnapshotData {
    /// Which chunks (`part/<id>/…` in `raft.sm`).
    pub id: u64,
    /// How many chunks.
    pub chunks: u32,
    /// Bytes of the record stream.
    pub bytes: u64,
}

/// The record under [`SNAPSHOT_KEY`]: which stored snapshot is current.
#[derive(Debug, Serialize, serde::Deserialize)]
struct StoredSnapshot {
    format: u32,
    meta: SnapshotMeta,
    data: SnapshotData,
}

fn part_key(id: u64, index: u32) -> Vec<u8> {
    let mut key = SNAPSHOT_PART_PREFIX.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key.extend_from_slice(&index.to_be_bytes());
    key
}

fn parts_of(id: u64) -> KeyRange {
    let mut prefix = SNAPSHOT_PART_PREFIX.to_vec();
    prefix.extend_from_slice(&id.to_be_bytes());
    KeyRange::prefix(prefix)
}

/// Deletes every stored chunk except those of snapshot `keep`.
fn parts_except(batch: &mut WriteBatch, keep: u64) {
    let all = KeyRange::prefix(SNAPSHOT_PART_PREFIX);
    batch.delete_range(SM_SPACE, KeyRange { start: all.start.clone(), end: Bound::Excluded(part_key(keep, 0)) });
    if let Some(next) = keep.checked_add(1) {
        batch.delete_range(SM_SPACE, KeyRange { start: Bound::Included(part_key(next, 0)), end: all.end });
    }
}

#[derive(Default)]
struct Counters {
    built: AtomicU64,
    installed: AtomicU64,
    sent: AtomicU64,
    chunks_received: AtomicU64,
}

/// Snapshots in the store: writing a state machine's record stream as
/// chunks, reading chunks back, and switching which snapshot is current
/// (`docs/design/strong.md`, "Snapshot format"). Shared by the state
/// machine, the Raft network (which sends chunks) and the receiver of
/// chunks from a leader.
pub struct SnapshotStore {
    storage: Arc<dyn Storage>,
    chunk_bytes: usize,
    limits: HistoryLimits,
    /// Ids for new snapshots (built or received); above every stored one.
    next_id: AtomicU64,
    /// A received snapshot already decoded (and so checked) by the
    /// receiver before openraft installs it; `install_snapshot` takes it
    /// instead of decoding the chunks a second time.
    prepared: Mutex<Option<(u64, KvStateMachine)>>,
    counters: Counters,
    #[cfg(feature = "test-knobs")]
    fail_builds: bool,
}

impl SnapshotStore {
    fn new(storage: Arc<dyn Storage>, chunk_bytes: usize, limits: HistoryLimits) -> Self {
        Self {
            storage,
            chunk_bytes,
            limits,
            next_id: AtomicU64::new(1),
            prepared: Mutex::new(None),
            counters: Counters::default(),
            #[cfg(feature = "test-knobs")]
            fail_builds: false,
        }
    }

    /// A fresh id for a snapshot about to be written.
    pub(crate) fn allocate_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Bytes of one chunk.
    pub fn chunk_bytes(&self) -> usize {
        self.chunk_bytes
    }

    /// Writes `sm`'s record stream as snapshot `id`, one chunk per commit:
    /// at most one chunk and one record are in memory at a time.
    async fn write(&self, id: u64, sm: &KvStateMachine) -> io::Result<SnapshotData> {
        let mut chunk: Vec<u8> = Vec::with_capacity(self.chunk_bytes);
        let mut chunks = 0u32;
        let mut bytes = 0u64;
        for record in snapshot::encode(sm) {
            let mut rest = record.as_slice();
            while !rest.is_empty() {
                let room = self.chunk_bytes - chunk.len();
                let (now, later) = rest.split_at(room.min(rest.len()));
                chunk.extend_from_slice(now);
                rest = later;
                if chunk.len() == self.chunk_bytes {
                    self.write_part(id, chunks, std::mem::replace(&mut chunk, Vec::with_capacity(self.chunk_bytes)))
                        .await?;
                    chunks = chunks.checked_add(1).ok_or_else(|| io::Error::other("snapshot of 2^32 chunks"))?;
                    bytes += self.chunk_bytes as u64;
                }
            }
        }
        if !chunk.is_empty() {
            bytes += chunk.len() as u64;
            self.write_part(id, chunks, chunk).await?;
            chunks += 1;
        }
        Ok(SnapshotData { id, chunks, bytes })
    }

    /// Stores chunk `index` of snapshot `id`.
    pub(crate) async fn write_part(&self, id: u64, index: u32, chunk: Vec<u8>) -> io::Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(SM_SPACE, part_key(id, index), chunk);
        commit(&self.storage, batch).await
    }

    /// Chunk `index` of `data`. Fails if the snapshot was replaced meanwhile
    /// (its chunks are deleted then).
    pub(crate) async fn read_part(&self, data: &SnapshotData, index: u32) -> io::Result<Vec<u8>> {
        let storage = Arc::clone(&self.storage);
        let id = data.id;
        let part = blocking(move || storage.get(SM_SPACE, &part_key(id, index)).map_err(io::Error::other)).await?;
        part.ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("chunk {index} of snapshot {id} is gone (replaced?)"))
        })
    }

    /// Deletes every chunk of snapshot `id`.
    pub(crate) async fn delete_parts(&self, id: u64) -> io::Result<()> {
        let mut batch = WriteBatch::new();
        batch.delete_range(SM_SPACE, parts_of(id));
        commit(&self.storage, batch).await
    }

    /// Reads `data` chunk by chunk into a state machine, checking every record.
    pub(crate) async fn decode(&self, data: &SnapshotData) -> io::Result<KvStateMachine> {
        let mut decoder = SnapshotDecoder::new(self.limits);
        let mut read = 0u64;
        for index in 0..data.chunks {
            let chunk = self.read_part(data, index).await?;
            read += chunk.len() as u64;
            decoder.push(&chunk).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        if read != data.bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot {} has {read} bytes, {} expected", data.id, data.bytes),
            ));
        }
        decoder.finish().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Decodes a received snapshot ahead of its install, so that a
    /// damaged transfer is refused to the sender instead of failing inside
    /// openraft (where a failed install stops the group).
    pub(crate) async fn prepare(&self, data: &SnapshotData) -> io::Result<()> {
        let sm = self.decode(data).await?;
        *lock(&self.prepared) = Some((data.id, sm));
        Ok(())
    }

    /// Drops a prepared state that was not installed.
    pub(crate) fn discard_prepared(&self, id: u64) {
        let mut prepared = lock(&self.prepared);
        if prepared.as_ref().is_some_and(|(prepared_id, _)| *prepared_id == id) {
            *prepared = None;
        }
    }

    fn take_prepared(&self, id: u64) -> Option<KvStateMachine> {
        let mut prepared = lock(&self.prepared);
        match prepared.take() {
            Some((prepared_id, sm)) if prepared_id == id => Some(sm),
            other => {
                *prepared = other;
                None
            }
        }
    }

    /// Makes `data` the current snapshot and deletes every other chunk, in
    /// one batch: a crash leaves either the old snapshot or the new one.
    async fn switch(&self, meta: &SnapshotMeta, data: &SnapshotData) -> io::Result<()> {
        let stored = StoredSnapshot { format: snapshot::SNAPSHOT_FORMAT, meta: meta.clone(), data: data.clone() };
        let mut batch = WriteBatch::new();
        batch.put(SM_SPACE, SNAPSHOT_KEY, encode(&stored)?);
        parts_except(&mut batch, data.id);
        // Keys of the layout written before the record stream, if any.
        batch.delete(SM_SPACE, LEGACY_META_KEY);
        batch.delete_range(SM_SPACE, KeyRange::prefix(LEGACY_CHUNK_PREFIX));
        commit(&self.storage, batch).await
    }

    /// Counts a snapshot sent to a follower completely.
    pub(crate) fn count_sent(&self) {
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a chunk received from a leader.
    pub(crate) fn count_received_chunk(&self) {
        self.counters.chunks_received.fetch_add(1, Ordering::Relaxed);
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
    snapshot: Option<(SnapshotMeta, SnapshotData)>,
}

/// The state machine ([`RaftStateMachine`]) and its snapshots.
#[derive(Clone)]
pub struct SmStore {
    shared: Arc<RwLock<SmShared>>,
    snapshots: Arc<SnapshotStore>,
    /// The store revision after every apply or snapshot install: watch
    /// streams wait on it instead of polling (`docs/design/watch.md`).
    applied: Arc<tokio::sync::watch::Sender<u64>>,
}

/// Settings of the state machine's store.
#[derive(Clone, Copy, Debug)]
pub struct SmSettings {
    /// Bytes of one snapshot chunk.
    pub chunk_bytes: usize,
    /// Watch history kept by this replica.
    pub history: HistoryLimits,
    /// Test knob: every snapshot build fails.
    #[cfg(feature = "test-knobs")]
    pub fail_builds: bool,
}

impl SmStore {
    /// Loads the last snapshot from `storage` (chunk by chunk), or starts
    /// empty. Chunks of any other snapshot (one being written or received
    /// when the node stopped) are deleted. A snapshot of the layout written
    /// before the record stream is read once and rewritten as chunks.
    pub async fn open(storage: Arc<dyn Storage>, settings: SmSettings) -> io::Result<Self> {
        #[allow(unused_mut)]
        let mut snapshots = SnapshotStore::new(Arc::clone(&storage), settings.chunk_bytes, settings.history);
        #[cfg(feature = "test-knobs")]
        {
            snapshots.fail_builds = settings.fail_builds;
        }
        let snapshots = Arc::new(snapshots);
        let reader = Arc::clone(&storage);
        let stored = blocking(move || reader.get(SM_SPACE, SNAPSHOT_KEY).map_err(io::Error::other)).await?;
        let shared = match stored {
            Some(bytes) => {
                let stored: StoredSnapshot = decode(&bytes)?;
                if stored.format != snapshot::SNAPSHOT_FORMAT {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("snapshot format {}; this build reads {}", stored.format, snapshot::SNAPSHOT_FORMAT),
                    ));
                }
                let kv = snapshots.decode(&stored.data).await?;
                snapshots.next_id.store(stored.data.id.saturating_add(1), Ordering::Relaxed);
                let mut batch = WriteBatch::new();
                parts_except(&mut batch, stored.data.id);
                commit(&storage, batch).await?;
                SmShared {
                    kv,
                    last_applied: stored.meta.last_log_id,
                    last_membership: stored.meta.last_membership.clone(),
                    snapshot: Some((stored.meta, stored.data)),
                }
            }
            None => match Self::open_legacy(&storage, &snapshots, settings.history).await? {
                Some(shared) => shared,
                None => {
                    let mut batch = WriteBatch::new();
                    batch.delete_range(SM_SPACE, KeyRange::prefix(SNAPSHOT_PART_PREFIX));
                    commit(&storage, batch).await?;
                    SmShared {
                        kv: KvStateMachine::with_history_limits(settings.history),
                        last_applied: None,
                        last_membership: StoredMembership::default(),
                        snapshot: None,
                    }
                }
            },
        };
        let (applied, _) = tokio::sync::watch::channel(shared.kv.revision());
        Ok(Self { shared: Arc::new(RwLock::new(shared)), snapshots, applied: Arc::new(applied) })
    }

    /// A snapshot of the layout written before the record stream: one
    /// postcard value of the whole machine in `chunk/<u32>` values (at most
    /// 48 MiB, that layout's limit). Rewritten as chunks at once.
    async fn open_legacy(
        storage: &Arc<dyn Storage>,
        snapshots: &SnapshotStore,
        limits: HistoryLimits,
    ) -> io::Result<Option<SmShared>> {
        let reader = Arc::clone(storage);
        let legacy = blocking(move || {
            let Some(meta) = reader.get(SM_SPACE, LEGACY_META_KEY).map_err(io::Error::other)? else {
                return Ok(None);
            };
            let meta: SnapshotMeta = decode(&meta)?;
            let mut data: Vec<u8> = Vec::new();
            reader
                .for_each(SM_SPACE, &mut |key, value| {
                    if key.starts_with(LEGACY_CHUNK_PREFIX) {
                        data.extend_from_slice(value);
                    }
                    std::ops::ControlFlow::Continue(())
                })
                .map_err(io::Error::other)?;
            Ok::<_, io::Error>(Some((meta, data)))
        })
        .await?;
        let Some((meta, data)) = legacy else { return Ok(None) };
        let kv = snapshot::decode_legacy(&data, limits).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        drop(data);
        let written = snapshots.write(snapshots.allocate_id(), &kv).await?;
        snapshots.switch(&meta, &written).await?;
        tracing::info!(bytes = written.bytes, chunks = written.chunks, "snapshot rewritten in the chunked layout");
        Ok(Some(SmShared {
            kv,
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
            snapshot: Some((meta, written)),
        }))
    }

    /// The revision after each apply, as it happens.
    pub fn applied_revisions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The shared state, for reads.
    pub fn shared(&self) -> Arc<RwLock<SmShared>> {
        Arc::clone(&self.shared)
    }

    /// The snapshot store, for the network and the receiver of chunks.
    pub fn snapshots(&self) -> Arc<SnapshotStore> {
        Arc::clone(&self.snapshots)
    }

    /// The current snapshot and the counters.
    pub fn snapshot_status(&self) -> SnapshotStatus {
        let current = self.read().snapshot.clone();
        let counters = &self.snapshots.counters;
        SnapshotStatus {
            last_index: current.as_ref().and_then(|(meta, _)| meta.last_log_id.map(|id| id.index)),
            bytes: current.as_ref().map_or(0, |(_, data)| data.bytes),
            chunks: current.as_ref().map_or(0, |(_, data)| data.chunks),
            built_total: counters.built.load(Ordering::Relaxed),
            installed_total: counters.installed.load(Ordering::Relaxed),
            sent_total: counters.sent.load(Ordering::Relaxed),
            chunks_received_total: counters.chunks_received.load(Ordering::Relaxed),
        }
    }

    /// The id of the current snapshot's chunks, if there is one.
    pub(crate) fn current_snapshot_id(&self) -> Option<u64> {
        self.read().snapshot.as_ref().map(|(_, data)| data.id)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, SmShared> {
        self.shared.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SmShared> {
        self.shared.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes a built or installed snapshot current, unless a newer one
    /// became current meanwhile (a build and an install may overlap); then
    /// `data`'s chunks are deleted and the current snapshot stays.
    async fn make_current(&self, meta: &SnapshotMeta, data: &SnapshotData) -> io::Result<Snapshot> {
        let newer = self.read().snapshot.clone().filter(|(current, _)| current.last_log_id > meta.last_log_id);
        if let Some((current_meta, current_data)) = newer {
            self.snapshots.delete_parts(data.id).await?;
            return Ok(Snapshot { meta: current_meta, snapshot: current_data });
        }
        self.snapshots.switch(meta, data).await?;
        self.write().snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot { meta: meta.clone(), snapshot: data.clone() })
    }
}

/// Builds a snapshot from a copy of the state machine taken between two
/// applies (a consistent view), while applies go on.
pub struct SnapshotBuilder {
    store: SmStore,
    meta: SnapshotMeta,
    view: KvStateMachine,
}

impl RaftSnapshotBuilder<StrongTypes> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        #[cfg(feature = "test-knobs")]
        if self.store.snapshots.fail_builds {
            return Err(io::Error::other("snapshot build failed: injected by a test knob"));
        }
        let snapshots = &self.store.snapshots;
        let id = snapshots.allocate_id();
        let data = match snapshots.write(id, &self.view).await {
            Ok(data) => data,
            Err(e) => {
                // Leave no half-written chunks behind; the node keeps its
                // previous snapshot and the log it covers.
                let _ = snapshots.delete_parts(id).await;
                return Err(e);
            }
        };
        let snapshot = self.store.make_current(&self.meta, &data).await?;
        snapshots.counters.built.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            last_index = ?self.meta.last_log_id.map(|id| id.index),
            bytes = data.bytes,
            chunks = data.chunks,
            "strong snapshot built"
        );
        Ok(snapshot)
    }
}

impl RaftStateMachine<StrongTypes> for SmStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

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
        let revision = self.read().kv.revision();
        self.applied.send_replace(revision);
        Ok(())
    }

    /// Called by openraft's state-machine worker between applies, so the
    /// copy taken here is consistent. Values are shared buffers, so the copy
    /// costs the keys and counters, not the values (see `kv`).
    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let shared = self.read();
        let meta = SnapshotMeta { last_log_id: shared.last_applied, last_membership: shared.last_membership.clone() };
        SnapshotBuilder { store: self.clone(), meta, view: shared.kv.clone() }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let kv = match self.snapshots.take_prepared(snapshot.id) {
            Some(kv) => kv,
            None => self.snapshots.decode(&snapshot).await?,
        };
        self.snapshots.switch(meta, &snapshot).await?;
        {
            let mut shared = self.write();
            shared.kv = kv;
            shared.last_applied = meta.last_log_id;
            shared.last_membership = meta.last_membership.clone();
            shared.snapshot = Some((meta.clone(), snapshot.clone()));
        }
        let revision = self.read().kv.revision();
        self.applied.send_replace(revision);
        self.snapshots.counters.installed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            last_index = ?meta.last_log_id.map(|id| id.index),
            bytes = snapshot.bytes,
            chunks = snapshot.chunks,
            "strong snapshot installed"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let shared = self.read();
        Ok(shared.snapshot.as_ref().map(|(meta, data)| Snapshot { meta: meta.clone(), snapshot: data.clone() }))
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
