//! chorus-storage: the node's durable store.
//!
//! The protocol core encodes its own records to bytes; this crate stores those
//! bytes in named keyspaces and guarantees that an acknowledged commit survives
//! a crash. The contract every backend honours is written on [`Storage`]; the
//! [`conformance`] suite (cargo feature `conformance`) checks it.
//!
//! Backends:
//! - [`MemoryStorage`]: a `BTreeMap`, for the deterministic simulator and tests.
//! - [`RedbStorage`]: a redb 4.x file, one table per keyspace, every commit
//!   `fsync`ed (`docs/design/storage.md`, "Backends").
//!
//! [`GroupCommitter`] wraps any backend with a dedicated writer thread that
//! merges concurrently submitted batches into one transaction and one `fsync`
//! (group commit, described in the 1980s and used by every WAL since; see
//! `docs/design/storage.md`, "References").
//!
//! The on-disk layout, the crash assumptions and measured numbers are in
//! `docs/design/storage.md`.

mod batch;
mod error;
mod group;
mod memory;
mod range;
mod redb_store;
mod storage;
pub mod wal;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use batch::{
    BATCH_BYTES_MAX, BATCH_OPS_MAX, BatchOp, SPACE_NAME_BYTES_MAX, STORE_KEY_BYTES_MAX, STORE_VALUE_BYTES_MAX,
    WriteBatch, validate_space_name,
};
pub use error::{CommitError, InvalidInput, OpenError, ReadError};
pub use group::{
    CommitTicket, GROUP_COMMIT_BYTES_MAX, GROUP_COMMIT_OPS_MAX, GROUP_COMMIT_QUEUE_CAPACITY, GroupCommitConfig,
    GroupCommitter,
};
pub use memory::MemoryStorage;
pub use range::KeyRange;
pub use redb_store::{REDB_FORMAT_VERSION, RedbStorage};
pub use storage::{EntryVisitor, SCAN_LIMIT_MAX, ScanPage, Storage};
