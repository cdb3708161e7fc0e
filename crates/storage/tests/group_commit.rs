//! Group-commit behaviour that the conformance suite cannot see: merging,
//! shared failure, bounds, ordering and shutdown.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use chorus_storage::{
    CommitError, EntryVisitor, GroupCommitConfig, GroupCommitter, KeyRange, MemoryStorage, ReadError, ScanPage,
    Storage, WriteBatch,
};

/// A store whose commits wait for a token, announcing first that they have
/// started, so a test knows the writer is inside a commit while it queues
/// more batches.
struct GatedStorage {
    inner: MemoryStorage,
    entered: Mutex<mpsc::Sender<()>>,
    gate: Mutex<mpsc::Receiver<()>>,
    commits: AtomicUsize,
    /// 1-based number of the commit that fails with an I/O error.
    failing_commit: Option<usize>,
}

struct Control {
    entered: mpsc::Receiver<()>,
    gate: mpsc::Sender<()>,
}

impl Control {
    fn wait_until_writer_is_committing(&self) {
        self.entered.recv_timeout(Duration::from_secs(10)).expect("the writer must start a commit");
    }

    fn release(&self, commits: usize) {
        for _ in 0..commits {
            self.gate.send(()).expect("gate open");
        }
    }
}

fn gated(failing_commit: Option<usize>) -> (GatedStorage, Control) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (gate_tx, gate_rx) = mpsc::channel();
    let store = GatedStorage {
        inner: MemoryStorage::new(),
        entered: Mutex::new(entered_tx),
        gate: Mutex::new(gate_rx),
        commits: AtomicUsize::new(0),
        failing_commit,
    };
    (store, Control { entered: entered_rx, gate: gate_tx })
}

impl Storage for GatedStorage {
    fn commit(&self, batch: WriteBatch) -> Result<(), CommitError> {
        self.entered.lock().map_err(|_| CommitError::Poisoned)?.send(()).ok();
        self.gate.lock().map_err(|_| CommitError::Poisoned)?.recv().map_err(|_| CommitError::Closed)?;
        let number = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        if Some(number) == self.failing_commit {
            return Err(CommitError::Io(std::io::Error::other("injected")));
        }
        self.inner.commit(batch)
    }

    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        self.inner.get(space, key)
    }

    fn scan(&self, space: &str, range: &KeyRange, limit: usize) -> Result<ScanPage, ReadError> {
        self.inner.scan(space, range, limit)
    }

    fn spaces(&self) -> Result<Vec<String>, ReadError> {
        self.inner.spaces()
    }

    fn for_each(&self, space: &str, visit: EntryVisitor<'_>) -> Result<(), ReadError> {
        self.inner.for_each(space, visit)
    }
}

fn put(key: u32) -> WriteBatch {
    let mut batch = WriteBatch::new();
    batch.put("s", key.to_be_bytes().to_vec(), vec![7; 100]);
    batch
}

#[test]
fn batches_queued_during_a_commit_share_the_next_single_commit() {
    let (store, control) = gated(None);
    let group = GroupCommitter::start(Arc::new(store)).expect("writer thread");
    let first = group.submit(put(0)).expect("submit");
    control.wait_until_writer_is_committing();
    let queued: Vec<_> = (1..=10).map(|i| group.submit(put(i)).expect("submit")).collect();
    control.release(2);
    first.wait().expect("first batch commits");
    for ticket in queued {
        ticket.wait().expect("queued batch commits");
    }
    assert_eq!(group.groups_committed(), 2, "ten queued batches make one group");
    assert_eq!(group.batches_committed(), 11);
    assert_eq!(group.storage().commits_seen(), 2);
    let page = group.scan("s", &KeyRange::all(), 100).expect("scan");
    assert_eq!(page.entries.len(), 11);
}

#[test]
fn a_failed_group_commit_fails_every_caller_in_it_and_no_other() {
    let (store, control) = gated(Some(2));
    let group = GroupCommitter::start(Arc::new(store)).expect("writer thread");
    let first = group.submit(put(0)).expect("submit");
    control.wait_until_writer_is_committing();
    let doomed: Vec<_> = (1..=5).map(|i| group.submit(put(i)).expect("submit")).collect();
    control.release(3);
    first.wait().expect("the first group succeeds");
    for ticket in doomed {
        assert!(matches!(ticket.wait(), Err(CommitError::Io(_))));
    }
    group.commit(put(99)).expect("a later group succeeds");
    let keys: Vec<Vec<u8>> =
        group.scan("s", &KeyRange::all(), 100).expect("scan").entries.into_iter().map(|(key, _)| key).collect();
    assert_eq!(keys, vec![0u32.to_be_bytes().to_vec(), 99u32.to_be_bytes().to_vec()]);
}

#[test]
fn an_invalid_batch_is_refused_at_submit_without_failing_the_group() {
    let store = Arc::new(MemoryStorage::new());
    let group = GroupCommitter::start(Arc::clone(&store)).expect("writer thread");
    let mut bad = WriteBatch::new();
    bad.put("", b"k".to_vec(), b"v".to_vec());
    assert!(matches!(group.submit(bad), Err(CommitError::Invalid(_))));
    group.commit(put(1)).expect("valid batch commits");
    assert_eq!(group.batches_committed(), 1);
}

#[test]
fn groups_never_exceed_the_configured_operation_bound() {
    let (store, control) = gated(None);
    let config = GroupCommitConfig { group_ops_max: 4, ..GroupCommitConfig::default() };
    let group = GroupCommitter::with_config(Arc::new(store), config).expect("writer thread");
    let first = group.submit(put(0)).expect("submit");
    control.wait_until_writer_is_committing();
    let queued: Vec<_> = (1..=10).map(|i| group.submit(put(i)).expect("submit")).collect();
    control.release(10);
    first.wait().expect("commit");
    for ticket in queued {
        ticket.wait().expect("commit");
    }
    // One lone first batch, then 10 queued batches in groups of at most 4.
    assert_eq!(group.groups_committed(), 4);
}

#[test]
fn a_full_queue_blocks_submitters_until_the_writer_catches_up() {
    let (store, control) = gated(None);
    let config = GroupCommitConfig { queue_capacity: 1, ..GroupCommitConfig::default() };
    let group = Arc::new(GroupCommitter::with_config(Arc::new(store), config).expect("writer"));
    let first = group.submit(put(0)).expect("submit");
    control.wait_until_writer_is_committing();
    let second = group.submit(put(1)).expect("the queue has room for one");
    let third_queued = Arc::new(AtomicBool::new(false));
    let blocked = std::thread::spawn({
        let group = Arc::clone(&group);
        let third_queued = Arc::clone(&third_queued);
        move || {
            let ticket = group.submit(put(2)).expect("submit");
            third_queued.store(true, Ordering::SeqCst);
            ticket.wait()
        }
    });
    // The writer is held inside the first commit, so the queue stays full.
    let observe_until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < observe_until {
        assert!(!third_queued.load(Ordering::SeqCst), "submit must block on a full queue");
        std::thread::yield_now();
    }
    control.release(3);
    first.wait().expect("commit");
    second.wait().expect("commit");
    blocked.join().expect("submitter thread").expect("commit");
    assert!(third_queued.load(Ordering::SeqCst));
}

#[test]
fn pipelined_batches_from_one_thread_apply_in_submission_order() {
    let store = Arc::new(MemoryStorage::new());
    let group = GroupCommitter::start(Arc::clone(&store)).expect("writer thread");
    let tickets: Vec<_> = (0u32..200)
        .map(|i| {
            let mut batch = WriteBatch::new();
            batch.put("s", b"k".to_vec(), i.to_be_bytes().to_vec());
            batch.put("log", i.to_be_bytes().to_vec(), vec![]);
            group.submit(batch).expect("submit")
        })
        .collect();
    for ticket in tickets {
        ticket.wait().expect("commit");
    }
    assert_eq!(store.get("s", b"k").expect("get"), Some(199u32.to_be_bytes().to_vec()));
    assert!(group.groups_committed() <= 200);
}

#[test]
fn dropping_the_committer_commits_everything_already_queued() {
    let (store, control) = gated(None);
    let store = Arc::new(store);
    let group = GroupCommitter::start(Arc::clone(&store)).expect("writer thread");
    let first = group.submit(put(0)).expect("submit");
    control.wait_until_writer_is_committing();
    let queued: Vec<_> = (1..=5).map(|i| group.submit(put(i)).expect("submit")).collect();
    control.release(10);
    drop(group);
    first.wait().expect("commit");
    for ticket in queued {
        ticket.wait().expect("queued batches are committed before the writer stops");
    }
    let page = store.scan("s", &KeyRange::all(), 100).expect("scan");
    assert_eq!(page.entries.len(), 6);
}

#[test]
fn async_callers_commit_through_the_same_writer() {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let store = Arc::new(MemoryStorage::new());
    let group = Arc::new(GroupCommitter::start(Arc::clone(&store)).expect("writer thread"));
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..32 {
            let group = Arc::clone(&group);
            tasks.push(tokio::spawn(async move { group.commit_async(put(i)).await }));
        }
        for task in tasks {
            task.await.expect("task").expect("commit");
        }
    });
    let page = store.scan("s", &KeyRange::all(), 100).expect("scan");
    assert_eq!(page.entries.len(), 32);
}

impl GatedStorage {
    fn commits_seen(&self) -> usize {
        self.commits.load(Ordering::SeqCst)
    }
}

#[test]
fn try_submit_queues_without_blocking_and_gives_the_batch_back_when_the_queue_is_full() {
    let (store, control) = gated(None);
    let config = GroupCommitConfig { queue_capacity: 1, ..GroupCommitConfig::default() };
    let group = GroupCommitter::with_config(Arc::new(store), config).expect("writer");
    let first = group.try_submit(put(0)).expect("an empty queue takes the batch");
    control.wait_until_writer_is_committing();
    let second = group.try_submit(put(1)).expect("the queue has room for one");
    // The writer is held inside the first commit: the queue is full, and the
    // batch comes back whole instead of blocking.
    let refused = group.try_submit(put(2)).expect_err("a full queue gives the batch back");
    assert_eq!(refused.len(), 1);
    control.release(2);
    first.wait().expect("commit");
    second.wait().expect("commit");
    assert_eq!(group.get("s", &1u32.to_be_bytes()).expect("get"), Some(vec![7; 100]));
    assert_eq!(group.get("s", &2u32.to_be_bytes()).expect("get"), None, "the refused batch was not committed");
}

#[test]
fn a_store_without_a_writer_gives_every_batch_back() {
    let store = MemoryStorage::new();
    let batch = store.try_submit(put(0)).expect_err("no writer");
    store.commit(batch).expect("commit");
    assert_eq!(store.get("s", &0u32.to_be_bytes()).expect("get"), Some(vec![7; 100]));
}
