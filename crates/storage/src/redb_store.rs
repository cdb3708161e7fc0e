//! redb backend: one redb table per keyspace, every commit fsynced.

use std::collections::BTreeMap;
use std::path::Path;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use crate::batch::{BatchOp, WriteBatch, validate_space_name};
use crate::error::{CommitError, Fault, OpenError, ReadError};
use crate::range::KeyRange;
use crate::storage::{EntryVisitor, SCAN_LIMIT_MAX, ScanPage, Storage};
use crate::wal::{self, WAL_CHECKPOINT_BYTES};

/// Version of this crate's layout inside the redb file, recorded in
/// [`FORMAT_TABLE`]. Bump it on any change to table naming or encoding.
pub const REDB_FORMAT_VERSION: u32 = 1;

/// Table names of keyspaces are this prefix followed by the keyspace name, so
/// keyspace tables can never collide with this crate's own tables (whose
/// names do not start with it) and every table name is non-empty, which redb
/// requires. redb accepts any non-empty string as a table name, so no further
/// escaping is needed.
const SPACE_TABLE_PREFIX: &str = "s:";

/// Holds the layout version under [`FORMAT_KEY`].
const FORMAT_TABLE: TableDefinition<&str, u32> = TableDefinition::new("chorus-storage:format");
const FORMAT_KEY: &str = "version";

type SpaceReadTable = ReadOnlyTable<&'static [u8], &'static [u8]>;
type SpaceTable<'a> = TableDefinition<'a, &'static [u8], &'static [u8]>;

/// A [`Storage`] in a redb 4.x database file.
///
/// A file-backed store ([`RedbStorage::open`]) makes a commit durable by
/// appending the batch to its write-ahead log (`<file>.wal`, see
/// [`crate::wal`]) and `fdatasync`ing it; the batch then waits in an
/// in-memory backlog that a background applier thread writes to redb,
/// many batches per redb transaction, with `Durability::None` (see
/// [`APPLY_INTERVAL`]). Every read first applies the whole backlog, so a
/// read that begins after a commit returned sees it. Every
/// [`crate::wal::WAL_CHECKPOINT_BYTES`] one [`Durability::Immediate`] redb
/// commit (redb's "1PC+C": new pages, flip the commit slot, `fsync`) makes
/// everything durable in the file and the log is emptied. Commits are
/// serialised (one log, applied in log order); put a
/// [`crate::GroupCommitter`] in front to share `fsync`s between writers.
/// An in-memory store has no log and applies each commit at once.
pub struct RedbStorage {
    shared: Arc<Shared>,
    wal: Option<Mutex<Wal>>,
    applier: Option<JoinHandle<()>>,
}

/// The longest a logged batch waits before the applier writes it to redb.
///
/// Why defer at all: the log already makes a batch durable, and redb is
/// read only at start-up (the daemon and the Raft log keep their state in
/// memory) or by the rare read through this handle. Applying each commit in
/// its own redb transaction copied the B-tree pages on every key's path
/// once per commit; under `chorus bench write` that was 22–30% of a node's
/// CPU. One transaction per interval copies each hot page once per
/// interval instead.
pub const APPLY_INTERVAL: Duration = Duration::from_millis(50);

/// Backlog size (payload bytes) that wakes the applier before
/// [`APPLY_INTERVAL`] is up: bounds the memory the backlog holds and the
/// length of one apply.
pub const APPLY_WAKE_BYTES: usize = 4 << 20;

/// What the committing threads, readers and the applier share.
struct Shared {
    db: Database,
    backlog: Mutex<Backlog>,
    /// Signals the applier: the backlog grew past [`APPLY_WAKE_BYTES`], or
    /// the store is closing.
    wake: Condvar,
    /// Held while batches taken from the backlog are applied, so batches
    /// reach redb in log order whoever applies them.
    applying: Mutex<()>,
}

/// The open write-ahead log.
struct Wal {
    file: File,
    bytes: u64,
}

/// Logged batches not yet in redb, oldest first.
#[derive(Default)]
struct Backlog {
    batches: Vec<WriteBatch>,
    bytes: usize,
    /// Set when applying failed: the store refuses everything after that
    /// (the log still holds every acknowledged batch for the next open).
    failed: Option<String>,
    closing: bool,
}

impl std::fmt::Debug for RedbStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStorage").finish_non_exhaustive()
    }
}

impl RedbStorage {
    /// Opens the database at `path`, creating it if absent. After a crash,
    /// redb repairs the file (walks it, verifies checksums, rebuilds the
    /// allocator state) before this returns; the repair only ever rolls back to
    /// the last fully committed transaction.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        let path = path.as_ref();
        let db = Database::builder().create(path).map_err(open_error)?;
        let mut store = Self::from_database(db)?;
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push(".wal");
        store.wal = Some(Mutex::new(store.recover_wal(Path::new(&wal_path))?));
        let shared = store.shared.clone();
        store.applier = Some(
            std::thread::Builder::new()
                .name("chorus-redb-apply".into())
                .spawn(move || run_applier(&shared))
                .map_err(OpenError::Io)?,
        );
        Ok(store)
    }

    /// Applies what the log holds beyond the last durable redb commit, makes
    /// it durable in redb, and empties the log.
    fn recover_wal(&self, path: &Path) -> Result<Wal, OpenError> {
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(OpenError::Io)?;
        let mut log = Vec::new();
        file.read_to_end(&mut log).map_err(OpenError::Io)?;
        if !log.is_empty() {
            let replay = wal::decode_log(&log).map_err(|e| {
                OpenError::Corrupted(format!(
                    "{}: {e}; the node refuses to start rather than lose the acknowledged writes after it \
                     (docs/design/storage.md, \"A damaged write-ahead log\", says what to do)",
                    path.display()
                ))
            })?;
            apply_batches(&self.shared.db, &replay.batches, Durability::None).map_err(OpenError::from)?;
            self.checkpoint().map_err(OpenError::from)?;
            file.set_len(0).map_err(OpenError::Io)?;
            file.sync_all().map_err(OpenError::Io)?;
        }
        // The log's directory entry must be durable too before anything
        // relies on the log.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(OpenError::Io)?;
        }
        Ok(Wal { file, bytes: 0 })
    }

    /// One empty `Immediate` commit: every earlier `None` commit becomes
    /// durable in the redb file.
    fn checkpoint(&self) -> Result<(), Fault> {
        let mut write = self.shared.db.begin_write().map_err(txn_fault)?;
        write.set_durability(Durability::Immediate).map_err(|err| Fault::Backend(err.to_string()))?;
        write.commit().map_err(commit_fault)
    }

    /// Applies every batch of the backlog to redb, in log order; after it
    /// returns `Ok`, redb holds every batch committed before the call.
    fn catch_up(&self) -> Result<(), Fault> {
        catch_up(&self.shared)
    }

    /// A database held in memory, for fuzzing and tests of the redb code path
    /// where a file system is unwanted. Not durable.
    pub fn in_memory() -> Result<Self, OpenError> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).map_err(open_error)?;
        Self::from_database(db)
    }

    fn from_database(db: Database) -> Result<Self, OpenError> {
        let read = db.begin_read().map_err(|err| OpenError::from(txn_fault(err)))?;
        let recorded = match read.open_table(FORMAT_TABLE) {
            Ok(table) => {
                table.get(FORMAT_KEY).map_err(|err| OpenError::from(storage_fault(err)))?.map(|guard| guard.value())
            }
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(err) => return Err(table_fault(err).into()),
        };
        drop(read);
        match recorded {
            Some(REDB_FORMAT_VERSION) => {}
            Some(found) => {
                return Err(OpenError::UnknownFormat { found, expected: REDB_FORMAT_VERSION });
            }
            None => {
                let write = db.begin_write().map_err(|err| OpenError::from(txn_fault(err)))?;
                {
                    let mut table = write.open_table(FORMAT_TABLE).map_err(|err| OpenError::from(table_fault(err)))?;
                    table.insert(FORMAT_KEY, REDB_FORMAT_VERSION).map_err(|err| OpenError::from(storage_fault(err)))?;
                }
                write.commit().map_err(|err| OpenError::from(commit_fault(err)))?;
            }
        }
        let shared =
            Shared { db, backlog: Mutex::new(Backlog::default()), wake: Condvar::new(), applying: Mutex::new(()) };
        Ok(Self { shared: Arc::new(shared), wal: None, applier: None })
    }

    /// Opens `space` for reading; `None` if the keyspace does not exist.
    fn read_table(&self, space: &str) -> Result<Option<SpaceReadTable>, ReadError> {
        validate_space_name(space)?;
        self.catch_up()?;
        let read = self.shared.db.begin_read().map_err(txn_fault)?;
        let name = table_name(space);
        match read.open_table(SpaceTable::new(&name)) {
            Ok(table) => Ok(Some(table)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(err) => Err(table_fault(err).into()),
        }
    }
}

fn table_name(space: &str) -> String {
    format!("{SPACE_TABLE_PREFIX}{space}")
}

/// Takes the whole backlog and applies it in one redb transaction. The
/// first failure is kept: every later call (and so every later commit and
/// read) fails with it.
fn catch_up(shared: &Shared) -> Result<(), Fault> {
    let _applying = shared.applying.lock().unwrap_or_else(PoisonError::into_inner);
    let batches = {
        let mut backlog = shared.backlog.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(failed) = &backlog.failed {
            return Err(Fault::Backend(failed.clone()));
        }
        backlog.bytes = 0;
        std::mem::take(&mut backlog.batches)
    };
    if batches.is_empty() {
        return Ok(());
    }
    apply_batches(&shared.db, &batches, Durability::None).inspect_err(|fault| {
        let mut backlog = shared.backlog.lock().unwrap_or_else(PoisonError::into_inner);
        backlog.failed = Some(format!("applying logged batches to redb failed: {fault:?}"));
    })
}

/// The applier thread: applies the backlog every [`APPLY_INTERVAL`], or as
/// soon as it holds [`APPLY_WAKE_BYTES`], until the store closes.
fn run_applier(shared: &Shared) {
    loop {
        {
            let backlog = shared.backlog.lock().unwrap_or_else(PoisonError::into_inner);
            let (backlog, _) = shared
                .wake
                .wait_timeout_while(backlog, APPLY_INTERVAL, |b| !b.closing && b.bytes < APPLY_WAKE_BYTES)
                .unwrap_or_else(PoisonError::into_inner);
            if backlog.closing || backlog.failed.is_some() {
                return;
            }
        }
        // A failure is recorded in the backlog and reported to the next
        // commit or read.
        let _ = catch_up(shared);
    }
}

/// Applies valid batches, in order, in one redb transaction.
fn apply_batches(db: &Database, batches: &[WriteBatch], durability: Durability) -> Result<(), Fault> {
    let mut write = db.begin_write().map_err(txn_fault)?;
    write.set_durability(durability).map_err(|err| Fault::Backend(err.to_string()))?;
    // Any early return below drops `write`, which aborts the transaction:
    // nothing of the batches becomes visible.
    let mut emptied = Vec::new();
    {
        let names: BTreeMap<&str, String> =
            batches.iter().flat_map(|b| b.ops()).map(|op| (op.space(), table_name(op.space()))).collect();
        let mut tables = BTreeMap::new();
        for (space, name) in &names {
            let table = write.open_table(SpaceTable::new(name)).map_err(table_fault)?;
            tables.insert(*space, table);
        }
        // Puts and deletes are collected per key, last one winning, and
        // written in key order: the backlog rewrites a few keys on every
        // commit (the HLC high-water mark, namespace records), and sorted
        // inserts walk the B-tree once instead of hopping around it. A range
        // delete first writes what was collected before it, so order holds.
        let mut latest: BTreeMap<(&str, &[u8]), Option<&[u8]>> = BTreeMap::new();
        let write_latest = |latest: &mut BTreeMap<(&str, &[u8]), Option<&[u8]>>,
                            tables: &mut BTreeMap<&str, redb::Table<'_, &'static [u8], &'static [u8]>>|
         -> Result<(), Fault> {
            for ((space, key), value) in std::mem::take(latest) {
                let Some(table) = tables.get_mut(space) else {
                    unreachable!("every keyspace of the batches was opened above");
                };
                match value {
                    Some(value) => {
                        table.insert(key, value).map_err(storage_fault)?;
                    }
                    None => {
                        table.remove(key).map_err(storage_fault)?;
                    }
                }
            }
            Ok(())
        };
        for op in batches.iter().flat_map(|b| b.ops()) {
            match op {
                BatchOp::Put { space, key, value } => {
                    latest.insert((space.as_str(), key.as_slice()), Some(value.as_slice()));
                }
                BatchOp::Delete { space, key } => {
                    latest.insert((space.as_str(), key.as_slice()), None);
                }
                BatchOp::DeleteRange { space, range } => {
                    write_latest(&mut latest, &mut tables)?;
                    let Some(table) = tables.get_mut(space.as_str()) else {
                        unreachable!("every keyspace of the batches was opened above");
                    };
                    if !range.is_empty() {
                        table.retain_in::<&[u8], _>(range.as_slices(), |_, _| false).map_err(storage_fault)?;
                    }
                }
            }
        }
        write_latest(&mut latest, &mut tables)?;
        // A keyspace exists exactly while it holds a key (the contract on
        // `Storage`), so tables these batches emptied, or opened only to
        // delete from, are removed.
        for (space, table) in &tables {
            if table.first().map_err(storage_fault)?.is_none() {
                emptied.push(names[space].clone());
            }
        }
    }
    for name in &emptied {
        write.delete_table(SpaceTable::new(name)).map_err(table_fault)?;
    }
    write.commit().map_err(commit_fault)?;
    Ok(())
}

impl Drop for RedbStorage {
    /// A clean close applies the backlog and leaves an empty log (a crash
    /// leaves the log for replay).
    fn drop(&mut self) {
        if let Some(applier) = self.applier.take() {
            self.shared.backlog.lock().unwrap_or_else(PoisonError::into_inner).closing = true;
            self.shared.wake.notify_all();
            let _ = applier.join();
        }
        if let Some(wal) = &self.wal {
            let mut wal = wal.lock().unwrap_or_else(PoisonError::into_inner);
            if wal.bytes > 0 && self.catch_up().is_ok() && self.checkpoint().is_ok() && wal.file.set_len(0).is_ok() {
                let _ = wal.file.sync_all();
                wal.bytes = 0;
            }
        }
    }
}

impl Storage for RedbStorage {
    fn commit(&self, batch: WriteBatch) -> Result<(), CommitError> {
        batch.validate()?;
        let Some(wal) = &self.wal else {
            return Ok(apply_batches(&self.shared.db, std::slice::from_ref(&batch), Durability::Immediate)?);
        };
        // The lock spans append, sync and the push onto the backlog: redb
        // applies batches in log order, which recovery relies on.
        let mut wal = wal.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(failed) = &self.shared.backlog.lock().unwrap_or_else(PoisonError::into_inner).failed {
            return Err(Fault::Backend(failed.clone()).into());
        }
        let mut frame = wal::encode_frame(&batch);
        if wal.bytes == 0 {
            // An empty log starts with the magic (the format's version).
            let mut with_magic = wal::WAL_MAGIC.to_vec();
            with_magic.append(&mut frame);
            frame = with_magic;
        }
        if let Err(e) = wal.file.write_all(&frame).and_then(|()| wal.file.sync_data()) {
            // Cut a partial frame off, so the next commit does not append
            // behind garbage (recovery would call that corruption).
            let _ = wal.file.set_len(wal.bytes);
            return Err(Fault::Io(e).into());
        }
        wal.bytes += frame.len() as u64;
        let wake = {
            let mut backlog = self.shared.backlog.lock().unwrap_or_else(PoisonError::into_inner);
            backlog.bytes += batch.payload_bytes();
            backlog.batches.push(batch);
            backlog.bytes >= APPLY_WAKE_BYTES
        };
        if wake {
            self.shared.wake.notify_one();
        }
        if wal.bytes >= WAL_CHECKPOINT_BYTES {
            self.catch_up()?;
            self.checkpoint()?;
            wal.file.set_len(0).map_err(Fault::Io)?;
            wal.file.sync_all().map_err(Fault::Io)?;
            wal.bytes = 0;
        }
        Ok(())
    }

    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        let Some(table) = self.read_table(space)? else {
            return Ok(None);
        };
        let value = table.get(key).map_err(storage_fault)?;
        Ok(value.map(|guard| guard.value().to_vec()))
    }

    fn scan(&self, space: &str, range: &KeyRange, limit: usize) -> Result<ScanPage, ReadError> {
        range.validate()?;
        let limit = limit.min(SCAN_LIMIT_MAX);
        let Some(table) = self.read_table(space)? else {
            return Ok(ScanPage::default());
        };
        if range.is_empty() {
            return Ok(ScanPage::default());
        }
        let mut page = ScanPage::default();
        for entry in table.range::<&[u8]>(range.as_slices()).map_err(storage_fault)? {
            let (key, value) = entry.map_err(storage_fault)?;
            if page.entries.len() == limit {
                page.resume = Some(key.value().to_vec());
                break;
            }
            page.entries.push((key.value().to_vec(), value.value().to_vec()));
        }
        Ok(page)
    }

    fn spaces(&self) -> Result<Vec<String>, ReadError> {
        self.catch_up()?;
        let read = self.shared.db.begin_read().map_err(txn_fault)?;
        let mut spaces: Vec<String> = read
            .list_tables()
            .map_err(storage_fault)?
            .filter_map(|handle| handle.name().strip_prefix(SPACE_TABLE_PREFIX).map(str::to_owned))
            .collect();
        spaces.sort_unstable();
        Ok(spaces)
    }

    fn for_each(&self, space: &str, visit: EntryVisitor<'_>) -> Result<(), ReadError> {
        let Some(table) = self.read_table(space)? else {
            return Ok(());
        };
        for entry in table.iter().map_err(storage_fault)? {
            let (key, value) = entry.map_err(storage_fault)?;
            if visit(key.value(), value.value()).is_break() {
                break;
            }
        }
        Ok(())
    }
}

fn storage_fault(err: redb::StorageError) -> Fault {
    match err {
        redb::StorageError::Io(err) => Fault::Io(err),
        redb::StorageError::Corrupted(msg) => Fault::Corrupted(msg),
        redb::StorageError::PreviousIo | redb::StorageError::LockPoisoned(_) => Fault::Poisoned,
        redb::StorageError::DatabaseClosed => Fault::Closed,
        // ValueTooLarge cannot happen (STORE_VALUE_BYTES_MAX is far below redb's
        // 3 GiB) and Unsupported needs a custom backend; redb's enum is
        // non_exhaustive, so later variants land here too.
        other => Fault::Backend(other.to_string()),
    }
}

fn txn_fault(err: redb::TransactionError) -> Fault {
    match err {
        redb::TransactionError::Storage(err) => storage_fault(err),
        other => Fault::Backend(other.to_string()),
    }
}

fn table_fault(err: redb::TableError) -> Fault {
    match err {
        redb::TableError::Storage(err) => storage_fault(err),
        // A keyspace table with other key or value types, or a multimap, was
        // not written by this crate: the layout is broken.
        err @ (redb::TableError::TableTypeMismatch { .. }
        | redb::TableError::TableIsMultimap(_)
        | redb::TableError::TypeDefinitionChanged { .. }) => Fault::Corrupted(err.to_string()),
        other => Fault::Backend(other.to_string()),
    }
}

fn commit_fault(err: redb::CommitError) -> Fault {
    match err {
        redb::CommitError::Storage(err) => storage_fault(err),
        other => Fault::Backend(other.to_string()),
    }
}

fn open_error(err: redb::DatabaseError) -> OpenError {
    match err {
        redb::DatabaseError::DatabaseAlreadyOpen => OpenError::AlreadyOpen,
        redb::DatabaseError::UpgradeRequired(version) => OpenError::UpgradeRequired(version),
        redb::DatabaseError::RepairAborted => OpenError::Corrupted("redb could not repair the file".to_owned()),
        redb::DatabaseError::Storage(err) => storage_fault(err).into(),
        other => OpenError::Backend(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    use crate::range::KeyRange;

    fn backlog_len(store: &RedbStorage) -> usize {
        store.shared.backlog.lock().unwrap_or_else(PoisonError::into_inner).batches.len()
    }

    fn put(key: &str) -> WriteBatch {
        let mut batch = WriteBatch::new();
        batch.put("s", key.as_bytes(), b"v".as_slice());
        batch
    }

    #[test]
    fn a_read_sees_a_commit_that_still_waits_for_the_applier() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStorage::open(dir.path().join("db")).expect("open");
        store.commit(put("a")).expect("commit");
        store.commit(put("b")).expect("commit");
        // The applier runs every APPLY_INTERVAL; right after the commits
        // they are (almost always) still in the backlog, and the read must
        // apply them first.
        assert_eq!(store.get("s", b"b").expect("get"), Some(b"v".to_vec()));
        assert_eq!(backlog_len(&store), 0, "the read applied the backlog");
        assert_eq!(store.spaces().expect("spaces"), vec!["s".to_owned()]);
    }

    #[test]
    fn the_applier_empties_the_backlog_without_any_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStorage::open(dir.path().join("db")).expect("open");
        for i in 0..10 {
            store.commit(put(&format!("k{i}"))).expect("commit");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while backlog_len(&store) > 0 {
            assert!(Instant::now() < deadline, "the applier never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Applied straight into redb: visible through a raw read transaction.
        let read = store.shared.db.begin_read().expect("read");
        let name = table_name("s");
        let table = read.open_table(SpaceTable::new(&name)).expect("table");
        assert_eq!(table.iter().expect("iter").count(), 10);
    }

    #[test]
    fn many_batches_applied_together_keep_their_order_around_range_deletes() {
        let store = RedbStorage::in_memory().expect("in-memory db");
        let mut batches = Vec::new();
        let mut b = WriteBatch::new();
        b.put("s", b"a".as_slice(), b"1".as_slice()).put("s", b"b".as_slice(), b"1".as_slice());
        batches.push(b);
        let mut b = WriteBatch::new();
        b.put("s", b"a".as_slice(), b"2".as_slice())
            .delete_range("s", KeyRange::between(b"a".as_slice(), b"c".as_slice()));
        batches.push(b);
        let mut b = WriteBatch::new();
        b.put("s", b"b".as_slice(), b"3".as_slice()).put("s", b"c".as_slice(), b"3".as_slice());
        batches.push(b);
        let mut b = WriteBatch::new();
        b.delete("s", b"c".as_slice()).put("t", b"x".as_slice(), b"4".as_slice()).put(
            "t",
            b"x".as_slice(),
            b"5".as_slice(),
        );
        batches.push(b);
        apply_batches(&store.shared.db, &batches, Durability::None).expect("apply");
        assert_eq!(store.get("s", b"a").expect("get"), None, "the range delete came after both puts of a");
        assert_eq!(store.get("s", b"b").expect("get"), Some(b"3".to_vec()), "the put after the range delete wins");
        assert_eq!(store.get("s", b"c").expect("get"), None, "the later delete wins");
        assert_eq!(store.get("t", b"x").expect("get"), Some(b"5".to_vec()), "the last put of a key wins");
    }

    #[test]
    fn a_clean_close_applies_the_backlog_and_empties_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let store = RedbStorage::open(&path).expect("open");
            store.commit(put("a")).expect("commit");
        }
        let log = std::fs::metadata(dir.path().join("db.wal")).expect("log").len();
        assert_eq!(log, 0, "a clean close leaves an empty log");
        let store = RedbStorage::open(&path).expect("reopen");
        assert_eq!(store.get("s", b"a").expect("get"), Some(b"v".to_vec()));
    }

    #[test]
    fn a_log_damaged_in_the_middle_refuses_the_open_naming_the_file_and_offset_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        drop(RedbStorage::open(&path).expect("open"));
        // Three acknowledged batches in the log, the second's length damaged.
        let log_path = dir.path().join("db.wal");
        let batches = [put("a"), put("b"), put("c")];
        let mut log = crate::wal::encode_log(&batches);
        let at = crate::wal::WAL_MAGIC.len() + crate::wal::encode_frame(&batches[0]).len();
        log[at..at + 4].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
        std::fs::write(&log_path, &log).expect("write log");
        let err = RedbStorage::open(&path).expect_err("a damaged log must refuse the open").to_string();
        assert!(err.contains(&log_path.display().to_string()), "{err}");
        assert!(err.contains(&format!("byte {at}")), "{err}");
        // Nothing was applied or truncated: the operator still has the log.
        assert_eq!(std::fs::read(&log_path).expect("log"), log);
    }
}
