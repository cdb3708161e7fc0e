//! Group commit: many callers, one writer thread, one transaction and one
//! `fsync` per group.
//!
//! The technique is as old as write-ahead logging (`docs/design/storage.md`,
//! "References"): a commit's cost is dominated by the `fsync`, which costs
//! about the same for one batch as for a thousand, so batches that arrive
//! while one `fsync` is in flight wait and share the next one. No timer is
//! involved: the group is whatever queued during the previous commit, so an
//! idle store commits a lone batch at once and a busy one amortises the
//! `fsync` over every waiting caller.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::batch::{BATCH_BYTES_MAX, BATCH_OPS_MAX, WriteBatch};
use crate::error::{CommitError, ReadError};
use crate::range::KeyRange;
use crate::storage::{EntryVisitor, ScanPage, Storage};

/// Batches that may wait for the writer. A full queue blocks
/// [`GroupCommitter::submit`] (and suspends [`GroupCommitter::submit_async`]):
/// backpressure instead of unbounded memory. 4096 is far above the largest
/// group a 64-client load forms, so the queue fills only when the disk cannot
/// keep up.
pub const GROUP_COMMIT_QUEUE_CAPACITY: usize = 4096;

/// Most operations merged into one transaction. Equal to the single-batch
/// limit, so every valid batch fits a group on its own. An empty batch counts
/// as one operation, so the number of batches per group is bounded too.
pub const GROUP_COMMIT_OPS_MAX: usize = BATCH_OPS_MAX;

/// Most payload bytes merged into one transaction.
pub const GROUP_COMMIT_BYTES_MAX: usize = BATCH_BYTES_MAX;

/// Bounds of a [`GroupCommitter`]. [`Default`] uses the named constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupCommitConfig {
    /// See [`GROUP_COMMIT_QUEUE_CAPACITY`]. At least 1.
    pub queue_capacity: usize,
    /// See [`GROUP_COMMIT_OPS_MAX`]. Values above it are lowered to it.
    pub group_ops_max: usize,
    /// See [`GROUP_COMMIT_BYTES_MAX`]. Values above it are lowered to it.
    pub group_bytes_max: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            queue_capacity: GROUP_COMMIT_QUEUE_CAPACITY,
            group_ops_max: GROUP_COMMIT_OPS_MAX,
            group_bytes_max: GROUP_COMMIT_BYTES_MAX,
        }
    }
}

struct Request {
    batch: WriteBatch,
    reply: oneshot::Sender<Result<(), CommitError>>,
}

#[derive(Default)]
struct Counters {
    groups: AtomicU64,
    batches: AtomicU64,
}

/// Runs a dedicated writer thread in front of a [`Storage`] and merges every
/// batch queued while the previous commit was in flight into ONE commit of
/// the underlying store (for [`crate::RedbStorage`]: one write transaction,
/// one `fsync`), then wakes every caller of the group.
///
/// Guarantees, on top of the [`Storage`] contract of the inner store:
/// - each submitted batch stays atomic (a group is committed whole or not at
///   all, so a fortiori each of its batches);
/// - `Ok` is reported only after the group's commit returned `Ok`, i.e. after
///   the `fsync`;
/// - batches are applied in queue order, so batches one thread submits are
///   applied in submission order even when it pipelines them with tickets;
/// - a failed group commit fails every caller in the group with the same
///   error; callers in later groups are unaffected unless the store is
///   poisoned.
///
/// It is itself a [`Storage`]: `commit` goes through the writer, reads go
/// straight to the inner store, so a daemon can hold `Arc<dyn Storage>` and
/// get group commit transparently.
///
/// Dropping it stops accepting batches, lets the writer commit everything
/// already queued, and joins the writer thread.
pub struct GroupCommitter<S: Storage + 'static> {
    storage: Arc<S>,
    sender: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl<S: Storage + 'static> std::fmt::Debug for GroupCommitter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitter")
            .field("groups_committed", &self.groups_committed())
            .field("batches_committed", &self.batches_committed())
            .finish_non_exhaustive()
    }
}

impl<S: Storage + 'static> GroupCommitter<S> {
    /// Starts the writer thread over `storage` with default bounds.
    pub fn start(storage: Arc<S>) -> std::io::Result<Self> {
        Self::with_config(storage, GroupCommitConfig::default())
    }

    /// Starts the writer thread over `storage`. Fails only if the OS refuses
    /// to create a thread.
    pub fn with_config(storage: Arc<S>, config: GroupCommitConfig) -> std::io::Result<Self> {
        let limits = GroupLimits {
            ops_max: config.group_ops_max.clamp(1, GROUP_COMMIT_OPS_MAX),
            bytes_max: config.group_bytes_max.min(GROUP_COMMIT_BYTES_MAX),
        };
        let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let writer = std::thread::Builder::new().name("chorus-storage-writer".to_owned()).spawn({
            let storage = Arc::clone(&storage);
            let counters = Arc::clone(&counters);
            move || run_writer(&*storage, receiver, limits, &counters)
        })?;
        Ok(Self { storage, sender: Some(sender), writer: Some(writer), counters })
    }

    /// The store behind the writer.
    pub fn storage(&self) -> &Arc<S> {
        &self.storage
    }

    /// Queues `batch`, blocking while the queue is full, and returns a ticket
    /// that resolves when the batch's group is durable. Invalid batches are
    /// refused here, so one caller's bad batch never fails a group. Must not
    /// be called from an async task (it blocks; use [`Self::submit_async`]).
    pub fn submit(&self, batch: WriteBatch) -> Result<CommitTicket, CommitError> {
        batch.validate()?;
        let (reply, receiver) = oneshot::channel();
        let sender = self.sender.as_ref().ok_or(CommitError::Closed)?;
        sender.blocking_send(Request { batch, reply }).map_err(|_| CommitError::Closed)?;
        Ok(CommitTicket { receiver })
    }

    /// Queues `batch`, waiting asynchronously while the queue is full.
    pub async fn submit_async(&self, batch: WriteBatch) -> Result<CommitTicket, CommitError> {
        batch.validate()?;
        let (reply, receiver) = oneshot::channel();
        let sender = self.sender.as_ref().ok_or(CommitError::Closed)?;
        sender.send(Request { batch, reply }).await.map_err(|_| CommitError::Closed)?;
        Ok(CommitTicket { receiver })
    }

    /// Queues `batch` and waits asynchronously until it is durable.
    pub async fn commit_async(&self, batch: WriteBatch) -> Result<(), CommitError> {
        self.submit_async(batch).await?.await
    }

    /// Group commits performed so far (successful or not).
    pub fn groups_committed(&self) -> u64 {
        self.counters.groups.load(Ordering::Relaxed)
    }

    /// Batches carried by those groups.
    pub fn batches_committed(&self) -> u64 {
        self.counters.batches.load(Ordering::Relaxed)
    }
}

impl<S: Storage + 'static> Drop for GroupCommitter<S> {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has drained it.
        self.sender = None;
        if let Some(writer) = self.writer.take() {
            // A writer that panicked has already failed its callers (their
            // reply senders were dropped); nothing is left to report here.
            let _ = writer.join();
        }
    }
}

impl<S: Storage + 'static> Storage for GroupCommitter<S> {
    fn commit(&self, batch: WriteBatch) -> Result<(), CommitError> {
        self.submit(batch)?.wait()
    }

    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        self.storage.get(space, key)
    }

    fn scan(&self, space: &str, range: &KeyRange, limit: usize) -> Result<ScanPage, ReadError> {
        self.storage.scan(space, range, limit)
    }

    fn spaces(&self) -> Result<Vec<String>, ReadError> {
        self.storage.spaces()
    }

    fn for_each(&self, space: &str, visit: EntryVisitor<'_>) -> Result<(), ReadError> {
        self.storage.for_each(space, visit)
    }

    fn try_submit(&self, batch: WriteBatch) -> Result<CommitTicket, WriteBatch> {
        // An invalid batch goes back: `commit` reports why.
        if batch.validate().is_err() {
            return Err(batch);
        }
        let Some(sender) = self.sender.as_ref() else {
            return Err(batch);
        };
        let (reply, receiver) = oneshot::channel();
        match sender.try_send(Request { batch, reply }) {
            Ok(()) => Ok(CommitTicket { receiver }),
            Err(mpsc::error::TrySendError::Full(request) | mpsc::error::TrySendError::Closed(request)) => {
                Err(request.batch)
            }
        }
    }
}

/// The outcome of one submitted batch: wait for it with [`CommitTicket::wait`]
/// or `.await` it. Dropping a ticket does not cancel the batch.
#[derive(Debug)]
pub struct CommitTicket {
    receiver: oneshot::Receiver<Result<(), CommitError>>,
}

impl CommitTicket {
    /// Blocks until the batch's group has committed. Must not be called from
    /// an async task.
    pub fn wait(self) -> Result<(), CommitError> {
        // A dropped reply means the writer thread died (a panic in the
        // store) before answering.
        self.receiver.blocking_recv().unwrap_or(Err(CommitError::Closed))
    }
}

impl Future for CommitTicket {
    type Output = Result<(), CommitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.receiver).poll(cx).map(|reply| reply.unwrap_or(Err(CommitError::Closed)))
    }
}

#[derive(Clone, Copy)]
struct GroupLimits {
    ops_max: usize,
    bytes_max: usize,
}

fn run_writer<S: Storage + ?Sized>(
    storage: &S,
    mut receiver: mpsc::Receiver<Request>,
    limits: GroupLimits,
    counters: &Counters,
) {
    // A request taken from the queue that did not fit the previous group.
    let mut carried: Option<Request> = None;
    loop {
        let first = match carried.take() {
            Some(request) => request,
            None => match receiver.blocking_recv() {
                Some(request) => request,
                None => return,
            },
        };
        let mut ops = first.batch.len().max(1);
        let mut bytes = first.batch.payload_bytes();
        let mut group = first.batch;
        let mut replies = vec![first.reply];
        // Take whatever queued while the previous commit was in flight; the
        // first batch always goes in, so an oversized batch is committed alone.
        while let Ok(request) = receiver.try_recv() {
            let next_ops = ops + request.batch.len().max(1);
            let next_bytes = bytes + request.batch.payload_bytes();
            if next_ops > limits.ops_max || next_bytes > limits.bytes_max {
                carried = Some(request);
                break;
            }
            ops = next_ops;
            bytes = next_bytes;
            group.append(request.batch);
            replies.push(request.reply);
        }
        let result = storage.commit(group);
        counters.groups.fetch_add(1, Ordering::Relaxed);
        counters.batches.fetch_add(replies.len() as u64, Ordering::Relaxed);
        match result {
            Ok(()) => {
                for reply in replies {
                    // A caller that dropped its ticket no longer listens.
                    let _ = reply.send(Ok(()));
                }
            }
            Err(err) => {
                for reply in replies {
                    let _ = reply.send(Err(duplicate(&err)));
                }
            }
        }
    }
}

/// A copy of `err` for each caller of a failed group (`io::Error` is not
/// `Clone`; its kind and message are kept).
fn duplicate(err: &CommitError) -> CommitError {
    match err {
        CommitError::Invalid(invalid) => CommitError::Invalid(invalid.clone()),
        CommitError::Io(io) => CommitError::Io(std::io::Error::new(io.kind(), io.to_string())),
        CommitError::Corrupted(msg) => CommitError::Corrupted(msg.clone()),
        CommitError::Poisoned => CommitError::Poisoned,
        CommitError::Closed => CommitError::Closed,
        CommitError::Backend(msg) => CommitError::Backend(msg.clone()),
    }
}
