//! Errors, one enum per operation. Each variant says whether state changed
//! and whether the store is still usable ("fatal" means: stop using this
//! handle, reopen the store or stop the node).

use std::io;

/// Why an argument was refused before the store was touched. State never
/// changes when this is returned; the store stays usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInput {
    /// A keyspace name was empty.
    #[error("keyspace name is empty")]
    EmptySpaceName,
    /// A keyspace name was longer than [`crate::SPACE_NAME_BYTES_MAX`].
    #[error("keyspace name is {len} bytes; the limit is {max}")]
    SpaceNameTooLong {
        /// Length of the refused name.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A key (or a range bound) was longer than [`crate::STORE_KEY_BYTES_MAX`].
    #[error("key is {len} bytes; the limit is {max}")]
    KeyTooLarge {
        /// Length of the refused key.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value was longer than [`crate::STORE_VALUE_BYTES_MAX`].
    #[error("value is {len} bytes; the limit is {max}")]
    ValueTooLarge {
        /// Length of the refused value.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A batch had more than [`crate::BATCH_OPS_MAX`] operations.
    #[error("batch has {count} operations; the limit is {max}")]
    TooManyOps {
        /// Operations in the refused batch.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A batch carried more than [`crate::BATCH_BYTES_MAX`] payload bytes.
    #[error("batch carries {bytes} bytes; the limit is {max}")]
    BatchTooLarge {
        /// Payload bytes of the refused batch.
        bytes: usize,
        /// The limit.
        max: usize,
    },
}

/// Failure of [`crate::Storage::commit`]. On every variant, nothing of the
/// batch is visible to reads through this handle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// The batch was refused before anything was written. State unchanged;
    /// the store stays usable; retrying the same batch fails the same way.
    #[error("invalid batch: {0}")]
    Invalid(#[from] InvalidInput),
    /// The disk failed during the commit. Nothing of the batch is visible
    /// through this handle, but part of it may have reached the disk: after a
    /// failed `fsync` the kernel may have dropped dirty pages (see
    /// `docs/design/storage.md`, "References"), so the batch's fate is unknown
    /// until the store is reopened, where it is either wholly present or
    /// wholly absent. Fatal: the handle refuses further commits
    /// ([`CommitError::Poisoned`]).
    #[error("I/O error during commit: {0}")]
    Io(#[source] io::Error),
    /// The store found data that fails its checksums or structure checks.
    /// Nothing of the batch was applied. Fatal: the file needs repair or
    /// restore from a peer.
    #[error("storage is corrupted: {0}")]
    Corrupted(String),
    /// An earlier failure (an I/O error, or a panic while writing) left the
    /// handle unusable. Nothing was written. Fatal: reopen the store.
    #[error("storage is poisoned by an earlier failure; reopen it")]
    Poisoned,
    /// The store, or the group-commit writer in front of it, has shut down.
    /// A batch handed to a writer that stopped before committing it was not
    /// applied; one whose writer died mid-commit is as for [`CommitError::Io`].
    #[error("storage is closed")]
    Closed,
    /// The backend failed in a way this crate does not classify. Treat as
    /// [`CommitError::Io`]: fatal, the batch's fate known only after reopen.
    #[error("storage backend error: {0}")]
    Backend(String),
}

impl CommitError {
    /// Whether the handle must be abandoned (reopened, or the node stopped).
    /// Only [`CommitError::Invalid`] leaves the store usable.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, CommitError::Invalid(_))
    }
}

/// Failure of a read ([`crate::Storage::get`], `scan`, `spaces`, `for_each`).
/// Reads never change state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// A keyspace name or range bound was refused. The store stays usable.
    #[error("invalid read: {0}")]
    Invalid(#[from] InvalidInput),
    /// The disk failed while reading. Fatal for this handle.
    #[error("I/O error during read: {0}")]
    Io(#[source] io::Error),
    /// Data failed checksums or structure checks. Fatal.
    #[error("storage is corrupted: {0}")]
    Corrupted(String),
    /// An earlier failure left the handle unusable. Fatal: reopen.
    #[error("storage is poisoned by an earlier failure; reopen it")]
    Poisoned,
    /// The store has been closed.
    #[error("storage is closed")]
    Closed,
    /// An unclassified backend failure. Fatal.
    #[error("storage backend error: {0}")]
    Backend(String),
}

impl ReadError {
    /// Whether the handle must be abandoned. Only [`ReadError::Invalid`]
    /// leaves the store usable.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, ReadError::Invalid(_))
    }
}

/// Failure of [`crate::RedbStorage::open`]. Nothing was changed on disk except
/// possibly redb's own crash repair, which only makes the file consistent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The file could not be created, read or locked.
    #[error("I/O error opening storage: {0}")]
    Io(#[source] io::Error),
    /// Another process (or another handle in this one) holds the database.
    #[error("storage file is already open elsewhere")]
    AlreadyOpen,
    /// The file failed checksums or structure checks and redb could not repair it.
    #[error("storage file is corrupted: {0}")]
    Corrupted(String),
    /// The file was written by an older redb file format.
    #[error("storage file uses redb file format {0}, which needs an upgrade")]
    UpgradeRequired(u8),
    /// The file was written by a chorus-storage layout this build does not read.
    #[error("storage file has chorus-storage format {found}; this build reads {expected}")]
    UnknownFormat {
        /// Version recorded in the file.
        found: u32,
        /// Version this build writes and reads.
        expected: u32,
    },
    /// An unclassified backend failure.
    #[error("storage backend error: {0}")]
    Backend(String),
}

/// Classification of a backend failure, shared by the conversions into the
/// per-operation enums.
#[derive(Debug)]
pub(crate) enum Fault {
    Io(io::Error),
    Corrupted(String),
    Poisoned,
    Closed,
    Backend(String),
}

impl From<Fault> for CommitError {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::Io(err) => CommitError::Io(err),
            Fault::Corrupted(msg) => CommitError::Corrupted(msg),
            Fault::Poisoned => CommitError::Poisoned,
            Fault::Closed => CommitError::Closed,
            Fault::Backend(msg) => CommitError::Backend(msg),
        }
    }
}

impl From<Fault> for ReadError {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::Io(err) => ReadError::Io(err),
            Fault::Corrupted(msg) => ReadError::Corrupted(msg),
            Fault::Poisoned => ReadError::Poisoned,
            Fault::Closed => ReadError::Closed,
            Fault::Backend(msg) => ReadError::Backend(msg),
        }
    }
}

impl From<Fault> for OpenError {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::Io(err) => OpenError::Io(err),
            Fault::Corrupted(msg) => OpenError::Corrupted(msg),
            Fault::Poisoned | Fault::Closed => OpenError::Backend("database became unusable while opening".to_owned()),
            Fault::Backend(msg) => OpenError::Backend(msg),
        }
    }
}
