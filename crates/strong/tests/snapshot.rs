//! Snapshots larger than the old one-buffer cap: built in chunks, persisted,
//! reloaded by every voter after a restart, and streamed to a new learner
//! (`docs/design/strong.md`, "Snapshot format"). The limits are configured
//! small so the state is many chunks while the test stays fast.

mod common;

use std::time::{Duration, Instant};

use chorus_strong::kv::{HistoryLimits, KeyValue, KvCommand};
use chorus_strong::{Query, QueryResult, StrongConfig, StrongNode};
use common::Cluster;

/// Bytes of one snapshot chunk in this test.
const CHUNK_BYTES: usize = 4 * 1024;
/// The old layout refused any snapshot above 12 chunks (48 MiB of 4 MiB
/// chunks); this state is about ten times that, relative to the chunk.
const OLD_CAP_CHUNKS: u32 = 12;
const KEYS: usize = 120;
const VALUE_BYTES: usize = 4 * 1024;

fn tune(config: &mut StrongConfig) {
    config.snapshot_chunk_bytes = CHUNK_BYTES;
    config.snapshot_every_entries = 20;
    config.log_kept_behind_snapshot = 0;
    config.watch_history = HistoryLimits { events_max: 50, bytes_max: 64 * 1024 };
}

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("value-{i}-").into_bytes();
    v.resize(VALUE_BYTES, b'a' + (i % 26) as u8);
    v
}

fn all_keys(node: &StrongNode) -> Vec<KeyValue> {
    match node.query_stale(Query::Range { start: Vec::new(), end: None, limit: 10_000 }).result {
        QueryResult::Range(kvs) => kvs,
        other => panic!("range answer expected, got {other:?}"),
    }
}

async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_many_times_the_old_cap_survive_restarts_and_reach_a_new_learner() {
    let mut cluster = Cluster::start(3, tune).await;
    for i in 0..KEYS {
        let put = KvCommand::Put { key: format!("k{i:04}").into_bytes(), value: value(i), lease: None };
        cluster.node((i % 3) as u64 + 1).write(put).await.expect("put");
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let expected = {
        let node = cluster.node(leader);
        node.read(b"k0000", true).await.expect("linearizable read");
        all_keys(node)
    };
    assert_eq!(expected.len(), KEYS);
    // Every voter snapshots on its own (every 20 entries); wait for one that
    // covers all the keys, far above the old cap.
    for id in 1..=3 {
        node_snapshot_covers_everything(cluster.node(id)).await;
    }

    // Restart every voter: each reloads its snapshot chunk by chunk.
    for id in 1..=3 {
        cluster.stop(id).await;
    }
    for id in 1..=3 {
        cluster.restart(id).await;
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    cluster.node(leader).read(b"k0000", true).await.expect("read after restart");
    for id in 1..=3 {
        // A follower applies the entries after its snapshot once the leader
        // tells it they are committed: poll for that.
        let node = cluster.node(id).clone();
        wait_until(&format!("node {id} to hold every key after its restart"), Duration::from_secs(20), || {
            all_keys(&node) == expected
        })
        .await;
        assert!(cluster.node(id).stopped().is_none(), "node {id} stopped: {:?}", cluster.node(id).stopped());
    }

    // A new learner: the log behind the snapshots is purged, so it can only
    // catch up by the chunked snapshot transfer.
    cluster.add_process(4).await;
    let learner = cluster.node(4).peer_node();
    cluster.node(leader).add_learner(4, learner).await.expect("add learner");
    let node4 = cluster.node(4).clone();
    wait_until("the learner installs a snapshot and has every key", Duration::from_secs(20), || {
        node4.snapshot_status().installed_total >= 1 && all_keys(&node4) == expected
    })
    .await;
    let status = node4.snapshot_status();
    println!("learner snapshot: {status:?}");
    assert!(status.chunks_received_total > u64::from(OLD_CAP_CHUNKS), "{status:?}");
    assert!(cluster.node(leader).snapshot_status().sent_total >= 1);
    cluster.shutdown().await;
}

async fn node_snapshot_covers_everything(node: &StrongNode) {
    // The policy (every 20 entries) may leave the last few keys after the
    // newest snapshot: ask for one until a snapshot holds all of them.
    let min_bytes = (KEYS * VALUE_BYTES) as u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = node.snapshot_status();
        if status.bytes >= min_bytes && status.chunks > OLD_CAP_CHUNKS * 8 {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot of all the keys within 20 s: {status:?}");
        let _ = node.raft().trigger().snapshot().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The watch history is bounded in bytes (64 KiB: 16 events of 4 KiB
    // values), well before its 50-event bound.
    match node.query_stale(Query::Events { from_revision: 1, limit: 100 }).result {
        QueryResult::Compacted { oldest } => {
            let kept = KEYS as u64 - oldest + 1;
            assert!(kept <= 16, "{kept} events of {VALUE_BYTES} bytes kept under a 64 KiB bound");
        }
        other => panic!("the history should be compacted, got {other:?}"),
    }
}
