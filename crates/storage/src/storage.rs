//! The storage contract.

use std::ops::ControlFlow;

use crate::batch::WriteBatch;
use crate::error::{CommitError, ReadError};
use crate::group::CommitTicket;
use crate::range::KeyRange;

/// Most entries one [`Storage::scan`] call returns, whatever `limit` asks
/// for. Bounds the memory of one page; callers continue with
/// [`ScanPage::resume`].
pub const SCAN_LIMIT_MAX: usize = 10_000;

/// The callback of [`Storage::for_each`]: sees each key and value, returns
/// `ControlFlow::Break(())` to stop early.
pub type EntryVisitor<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> ControlFlow<()>;

/// One page of a [`Storage::scan`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// Entries in ascending key order.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// The first key of the range that this page did not return, if any: the
    /// (inclusive) start of the next page. `None` means the range is exhausted.
    pub resume: Option<Vec<u8>>,
}

/// A durable, ordered key-value store divided into named keyspaces.
///
/// # Data model
///
/// A keyspace is named by a non-empty UTF-8 string of at most
/// [`crate::SPACE_NAME_BYTES_MAX`] bytes ("meta", "ns/<name>/entries").
/// Keyspaces are independent: the same key in two keyspaces names two
/// entries, and no name is a prefix-scope of another ("a" and "a/b" share
/// nothing). A keyspace exists exactly while it holds at least one key; it is
/// created by the first put and disappears when its last key is deleted.
/// Keys and values are byte strings; keys are ordered lexicographically by
/// unsigned bytes, a proper prefix before its extensions (`[] < [0] < [0, 0] < [1]`).
///
/// # Commit: atomicity, durability, ordering
///
/// - **Atomic.** [`Storage::commit`] applies every operation of the batch, in
///   batch order, or none. No reader ever observes part of a batch.
/// - **Durable.** When `commit` returns `Ok`, the batch is on stable storage:
///   it survives a process crash or power loss, under the disk assumptions of
///   `docs/design/storage.md` (an honest `fsync`). [`crate::MemoryStorage`] is
///   the exception: it is durable only within the simulator's model of a crash.
/// - **Ordered.** Commits are serialised: there is one total order of batches,
///   consistent with real time (a commit that returned before another began
///   precedes it). A read that begins after `commit` returned sees the batch.
/// - **On `Err`**, nothing of the batch is visible through this handle. Only
///   [`CommitError::Invalid`] leaves the handle usable; every other error is
///   fatal and the batch's fate on disk is known only after reopening, where
///   it is whole or absent (see [`CommitError`]).
///
/// # Reads
///
/// Each read call observes one committed state: a page of [`Storage::scan`]
/// and a whole [`Storage::for_each`] see a consistent snapshot, never part of
/// a batch. Successive calls may see different states. Reads never change
/// state. Reading a keyspace that does not exist returns nothing, not an error.
///
/// # Concurrency
///
/// Implementations are `Send + Sync`; any number of threads may read and
/// commit at once (`Arc<dyn Storage>`). Methods block the calling thread on
/// disk I/O: call them from a plain thread or `spawn_blocking`, not from an
/// async task (use [`crate::GroupCommitter::commit_async`] there).
pub trait Storage: Send + Sync {
    /// Atomically and durably applies `batch`. See the trait documentation.
    fn commit(&self, batch: WriteBatch) -> Result<(), CommitError>;

    /// The value of `key` in `space`, or `None` if absent.
    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError>;

    /// Up to `min(limit, SCAN_LIMIT_MAX)` entries of `space` inside `range`,
    /// ascending. `resume` is set exactly when the range holds more entries
    /// than were returned; `limit == 0` returns no entries and the first key
    /// of the range as `resume`. Pages taken at different times may reflect
    /// different committed states.
    fn scan(&self, space: &str, range: &KeyRange, limit: usize) -> Result<ScanPage, ReadError>;

    /// Names of every keyspace holding at least one key, in ascending byte order.
    fn spaces(&self) -> Result<Vec<String>, ReadError>;

    /// Calls `visit` for every entry of `space` in ascending key order, from
    /// one consistent snapshot, until `visit` returns `ControlFlow::Break`.
    /// For loading a keyspace at recovery without holding it twice in memory.
    /// `visit` must not call back into this store (backends may hold a lock
    /// or a read transaction while it runs).
    fn for_each(&self, space: &str, visit: EntryVisitor<'_>) -> Result<(), ReadError>;

    /// Hands `batch` to this store's own writer without blocking, when it
    /// has one (a [`crate::GroupCommitter`]) and its queue has room: the
    /// ticket resolves exactly when [`Storage::commit`] would have
    /// returned, with the same result. Otherwise the batch comes back, to be
    /// committed with [`Storage::commit`] on a blocking thread. Async
    /// callers save a thread hop per commit this way (the Raft log appends
    /// on every write). The default has no writer and always gives the
    /// batch back.
    fn try_submit(&self, batch: WriteBatch) -> Result<CommitTicket, WriteBatch> {
        Err(batch)
    }
}

impl<S: Storage + ?Sized> Storage for std::sync::Arc<S> {
    fn commit(&self, batch: WriteBatch) -> Result<(), CommitError> {
        (**self).commit(batch)
    }

    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        (**self).get(space, key)
    }

    fn scan(&self, space: &str, range: &KeyRange, limit: usize) -> Result<ScanPage, ReadError> {
        (**self).scan(space, range, limit)
    }

    fn spaces(&self) -> Result<Vec<String>, ReadError> {
        (**self).spaces()
    }

    fn for_each(&self, space: &str, visit: EntryVisitor<'_>) -> Result<(), ReadError> {
        (**self).for_each(space, visit)
    }

    fn try_submit(&self, batch: WriteBatch) -> Result<CommitTicket, WriteBatch> {
        (**self).try_submit(batch)
    }
}
