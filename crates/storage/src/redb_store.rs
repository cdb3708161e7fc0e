//! redb backend: one redb table per keyspace, every commit fsynced.

use std::collections::BTreeMap;
use std::path::Path;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::sync::{Mutex, PoisonError};

use redb::{Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use crate::batch::{Op, WriteBatch, validate_space_name};
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
/// [`crate::wal`]) and `fdatasync`ing it, then applies the batch to redb
/// with `Durability::None`; every [`crate::wal::WAL_CHECKPOINT_BYTES`] one
/// [`Durability::Immediate`] redb commit (redb's "1PC+C": new pages, flip
/// the commit slot, `fsync`) makes everything durable in the file and the
/// log is emptied. Commits are serialised (one log, applied in log order);
/// put a [`crate::GroupCommitter`] in front to share `fsync`s between
/// writers. An in-memory store has no log.
pub struct RedbStorage {
    db: Database,
    wal: Option<Mutex<Wal>>,
}

/// The open write-ahead log.
struct Wal {
    file: File,
    bytes: u64,
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
        Ok(store)
    }

    /// Applies what the log holds beyond the last durable redb commit, makes
    /// it durable in redb, and empties the log.
    fn recover_wal(&self, path: &Path) -> Result<Wal, OpenError> {
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(OpenError::Io)?;
        let mut log = Vec::new();
        file.read_to_end(&mut log).map_err(OpenError::Io)?;
        if !log.is_empty() {
            let replay = wal::decode_log(&log).map_err(|e| OpenError::Corrupted(e.to_string()))?;
            for batch in &replay.batches {
                self.apply(batch, Durability::None).map_err(OpenError::from)?;
            }
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
        let mut write = self.db.begin_write().map_err(txn_fault)?;
        write.set_durability(Durability::Immediate).map_err(|err| Fault::Backend(err.to_string()))?;
        write.commit().map_err(commit_fault)
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
        Ok(Self { db, wal: None })
    }

    /// Opens `space` for reading; `None` if the keyspace does not exist.
    fn read_table(&self, space: &str) -> Result<Option<SpaceReadTable>, ReadError> {
        validate_space_name(space)?;
        let read = self.db.begin_read().map_err(txn_fault)?;
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

impl RedbStorage {
    /// Applies a valid batch in one redb transaction.
    fn apply(&self, batch: &WriteBatch, durability: Durability) -> Result<(), Fault> {
        let mut write = self.db.begin_write().map_err(txn_fault)?;
        write.set_durability(durability).map_err(|err| Fault::Backend(err.to_string()))?;
        // Any early return below drops `write`, which aborts the transaction:
        // nothing of the batch becomes visible.
        let mut emptied = Vec::new();
        {
            let names: BTreeMap<&str, String> =
                batch.ops().iter().map(|op| (op.space(), table_name(op.space()))).collect();
            let mut tables = BTreeMap::new();
            for (space, name) in &names {
                let table = write.open_table(SpaceTable::new(name)).map_err(table_fault)?;
                tables.insert(*space, table);
            }
            for op in batch.ops() {
                let Some(table) = tables.get_mut(op.space()) else {
                    unreachable!("every keyspace of the batch was opened above");
                };
                match op {
                    Op::Put { key, value, .. } => {
                        table.insert(key.as_slice(), value.as_slice()).map_err(storage_fault)?;
                    }
                    Op::Delete { key, .. } => {
                        table.remove(key.as_slice()).map_err(storage_fault)?;
                    }
                    Op::DeleteRange { range, .. } => {
                        if !range.is_empty() {
                            table.retain_in::<&[u8], _>(range.as_slices(), |_, _| false).map_err(storage_fault)?;
                        }
                    }
                }
            }
            // A keyspace exists exactly while it holds a key (the contract on
            // `Storage`), so tables this batch emptied, or opened only to
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
}

impl Drop for RedbStorage {
    /// A clean close leaves an empty log (a crash leaves it for replay).
    fn drop(&mut self) {
        if let Some(wal) = &self.wal {
            let mut wal = wal.lock().unwrap_or_else(PoisonError::into_inner);
            if wal.bytes > 0 && self.checkpoint().is_ok() && wal.file.set_len(0).is_ok() {
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
            return Ok(self.apply(&batch, Durability::Immediate)?);
        };
        // The lock spans append, sync and apply: redb applies batches in
        // log order, which recovery relies on.
        let mut wal = wal.lock().unwrap_or_else(PoisonError::into_inner);
        let frame = wal::encode_frame(&batch);
        if let Err(e) = wal.file.write_all(&frame).and_then(|()| wal.file.sync_data()) {
            // Cut a partial frame off, so the next commit does not append
            // behind garbage (recovery would call that corruption).
            let _ = wal.file.set_len(wal.bytes);
            return Err(Fault::Io(e).into());
        }
        wal.bytes += frame.len() as u64;
        self.apply(&batch, Durability::None)?;
        if wal.bytes >= WAL_CHECKPOINT_BYTES {
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
        let read = self.db.begin_read().map_err(txn_fault)?;
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
        // ValueTooLarge cannot happen (VALUE_BYTES_MAX is far below redb's
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
