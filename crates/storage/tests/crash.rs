//! kill -9 crash test: a child process commits numbered batches through a
//! `GroupCommitter` over redb from several threads and prints each id once
//! its commit is acknowledged; the parent SIGKILLs it mid-stream, reopens the
//! file and checks that every acknowledged batch is there, whole.
//!
//! The child is this same test binary, re-run with `CHILD_DB_ENV` set.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::ops::ControlFlow;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use chorus_storage::{GroupCommitter, RedbStorage, Storage, WriteBatch};

const TEST_NAME: &str = "acknowledged_commits_survive_sigkill_of_the_writer_process";
const CHILD_DB_ENV: &str = "CHORUS_STORAGE_CRASH_CHILD_DB";
const CHILD_ROUND_ENV: &str = "CHORUS_STORAGE_CRASH_CHILD_ROUND";
const CHILD_THREADS: u64 = 4;
/// Commits per child thread if nobody kills it, so a lost child ends by itself.
const CHILD_COMMITS_PER_THREAD_MAX: u64 = 20_000;
/// Acknowledgements to wait for before each kill: early, middle, later.
const KILL_AFTER_ACKS: [usize; 4] = [5, 60, 300, 800];
const ROUND_DEADLINE: Duration = Duration::from_secs(20);

fn batch_id(round: u64, thread: u64, sequence: u64) -> u64 {
    (round << 48) | (thread << 32) | sequence
}

fn payload(id: u64) -> Vec<u8> {
    id.to_le_bytes().repeat(12)
}

/// The child's workload: never returns normally before being killed.
fn run_child(db_path: &str, round: u64) {
    let store = RedbStorage::open(db_path).expect("child opens redb");
    let group = Arc::new(GroupCommitter::start(Arc::new(store)).expect("writer thread"));
    std::thread::scope(|scope| {
        for thread in 0..CHILD_THREADS {
            let group = Arc::clone(&group);
            scope.spawn(move || {
                for sequence in 0..CHILD_COMMITS_PER_THREAD_MAX {
                    let id = batch_id(round, thread, sequence);
                    // Two keyspaces per batch, so a torn batch would show.
                    let mut batch = WriteBatch::new();
                    batch.put("acks", id.to_be_bytes().to_vec(), payload(id));
                    batch.put("mirror", id.to_be_bytes().to_vec(), payload(id));
                    group.commit(batch).expect("child commit");
                    // Printed (one write(2) per line) only after the fsync.
                    println!("ack {id}");
                }
            });
        }
    });
}

/// Kills the child if the parent panics, so no process outlives the test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_round(db_path: &Path, round: u64, kill_after: usize) -> BTreeSet<u64> {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = KillOnDrop(
        Command::new(exe)
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_DB_ENV, db_path)
            .env(CHILD_ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child"),
    );
    let stdout = child.0.stdout.take().expect("child stdout");
    let (lines_tx, lines_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + ROUND_DEADLINE;
    let mut acked = BTreeSet::new();
    let parse = |line: &str| line.strip_prefix("ack ").map(|id| id.parse::<u64>());
    while acked.len() < kill_after {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = lines_rx.recv_timeout(remaining).expect("the child must acknowledge commits before the deadline");
        if let Some(id) = parse(&line) {
            acked.insert(id.expect("well-formed ack"));
        }
    }
    // SIGKILL: no destructor, no flush, no clean shutdown of redb.
    child.0.kill().expect("kill child");
    let status = child.0.wait().expect("reap child");
    assert!(!status.success(), "the child must die by the signal");
    // Every line already in the pipe was printed after its commit returned.
    reader.join().expect("reader thread");
    for line in lines_rx.try_iter() {
        if let Some(id) = parse(&line) {
            acked.insert(id.expect("well-formed ack"));
        }
    }
    acked
}

#[test]
fn acknowledged_commits_survive_sigkill_of_the_writer_process() {
    if let Ok(db_path) = std::env::var(CHILD_DB_ENV) {
        let round = std::env::var(CHILD_ROUND_ENV).ok().and_then(|round| round.parse().ok()).expect("round number");
        run_child(&db_path, round);
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let db_path = dir.path().join("crash.redb");
    let started = Instant::now();
    let mut acked_total = BTreeSet::new();
    for (round, kill_after) in KILL_AFTER_ACKS.into_iter().enumerate() {
        let acked = run_round(&db_path, round as u64, kill_after);
        assert!(acked.len() >= kill_after);
        acked_total.extend(acked);

        let store = RedbStorage::open(&db_path).expect("the database opens cleanly after kill -9");
        for id in &acked_total {
            let key = id.to_be_bytes();
            assert_eq!(
                store.get("acks", &key).expect("get"),
                Some(payload(*id)),
                "acknowledged batch {id:#x} is missing after round {round}"
            );
        }
        // Atomicity: each batch is in both keyspaces or in neither,
        // including batches that were in flight at the kill.
        let mut acks = Vec::new();
        let mut mirror = Vec::new();
        for (space, into) in [("acks", &mut acks), ("mirror", &mut mirror)] {
            store
                .for_each(space, &mut |key, value| {
                    into.push((key.to_vec(), value.to_vec()));
                    ControlFlow::Continue(())
                })
                .expect("for_each");
        }
        assert_eq!(acks, mirror, "a batch was torn by the crash");
        assert!(acks.len() >= acked_total.len());
        eprintln!("round {round}: {} acked in total, {} batches on disk", acked_total.len(), acks.len());
    }
    assert!(started.elapsed() < Duration::from_secs(30), "the crash test took {:?}", started.elapsed());
}
