//! A strong-namespace Raft node: openraft wired to chorus storage and
//! transport, plus the client API (write, linearizable query, membership).
//!
//! This is an I/O layer: it spawns tasks and reads the clock through the
//! injected [`WallClock`]; the replicated logic is in [`crate::kv`].
//!
//! This module builds a [`StrongNode`] (opening the Raft log and state
//! machine, starting openraft and the background tasks) and shuts it down;
//! the rest is split along the node's seams (see `docs/design/strong.md`,
//! section "Client semantics (`node`)"):
//!
//! - `config`: [`StrongConfig`] and the [`WallClock`] it injects;
//! - `client`: the client API (write, query, read) and its local execution
//!   on the leader;
//! - `routing`: running a request where it must run, forwarding it to the
//!   leader and following leadership changes;
//! - `membership`: cluster initialization and voter changes;
//! - `quorum`: reachability of the voters, the `NoQuorum` refusal and the
//!   node's status;
//! - `serve`: the handler of Raft RPCs and forwarded requests from peers;
//! - `leases`: the leader's lease refresh and expiry task.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use chorus_net::Transport;
use chorus_storage::Storage;
use openraft::async_runtime::WatchReceiver;
use openraft::{Raft, RaftMetrics};
use tokio::task::JoinHandle;

use crate::error::StartError;
use crate::network::NetworkFactory;
use crate::store::{LogStore, SmSettings, SmShared, SmStore, SnapshotStatus, SnapshotStore};
use crate::types::{LogId, PeerNode, StrongTypes};

mod client;
mod config;
mod leases;
mod membership;
mod quorum;
mod routing;
mod serve;

pub use client::{Query, QueryResponse, QueryResult};
pub use config::{
    IDEMPOTENCY_WINDOW_MS_DEFAULT, SNAPSHOT_CHUNK_BYTES_DEFAULT, SNAPSHOT_CHUNK_BYTES_MAX, SNAPSHOT_CHUNK_BYTES_MIN,
    StrongConfig, SystemClock, WallClock,
};
pub use quorum::{QuorumStatus, StrongStatus};

use leases::lease_loop;
use quorum::probe_loop;

/// Allowed numbers of voters at initialization (`docs/design/strong.md`,
/// "Client semantics (`node`)").
pub const VOTER_COUNTS: [usize; 4] = [1, 3, 5, 7];
/// Most voters at any time.
pub const VOTERS_MAX: usize = 7;
/// Most times a write or read follows a `NotLeader` answer before giving up.
pub const FORWARD_HOPS_MAX: usize = 3;

struct Inner {
    id: u64,
    config: StrongConfig,
    raft: Raft<StrongTypes, SmStore>,
    sm: Arc<RwLock<SmShared>>,
    sm_store: SmStore,
    snapshots: Arc<SnapshotStore>,
    /// The snapshot transfer this node is receiving from a leader, if any
    /// (one at a time; `serve`).
    receiving: tokio::sync::Mutex<Option<serve::Receiving>>,
    transport: Transport,
    /// Last successful probe answer per voter.
    reach: Mutex<BTreeMap<u64, Instant>>,
    /// The last log id this node held when it started: no linearizable
    /// read is answered here before the state machine applied past it
    /// (`docs/design/strong.md`, "Reads after a restart").
    read_floor: Option<LogId>,
    /// Set once the applied log id reached `read_floor`: later reads skip
    /// the check.
    read_floor_passed: AtomicBool,
    started: Instant,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A strong-namespace Raft node. Cheap to clone.
#[derive(Clone)]
pub struct StrongNode {
    inner: Arc<Inner>,
}

impl fmt::Debug for StrongNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrongNode").field("id", &self.inner.id).finish_non_exhaustive()
    }
}

impl StrongNode {
    /// Loads the log and snapshot from `storage` (keyspaces `raft.*`),
    /// starts Raft over `transport` and the background tasks (reachability
    /// probe, lease expiry). Incoming strong requests must be fed to
    /// [`StrongNode::handle_request`] (or use [`StrongNode::serve`]).
    ///
    /// `storage` should be the node's `GroupCommitter` (as `Arc<dyn
    /// Storage>`) so Raft appends share fsyncs with other writers.
    pub async fn start(
        config: StrongConfig,
        storage: Arc<dyn Storage>,
        transport: Transport,
    ) -> Result<StrongNode, StartError> {
        let raft_config = Arc::new(config.raft_config()?);
        let log = LogStore::open(Arc::clone(&storage)).await?;
        let read_floor = log.last_log_id();
        let settings = SmSettings {
            chunk_bytes: config.snapshot_chunk_bytes,
            history: config.watch_history,
            #[cfg(feature = "test-knobs")]
            fail_builds: config.fail_snapshot_builds,
        };
        let sm = SmStore::open(storage, settings).await?;
        let shared = sm.shared();
        let sm_store = sm.clone();
        let snapshots = sm.snapshots();
        let network =
            NetworkFactory { transport: transport.clone(), id: config.node_id, snapshots: Arc::clone(&snapshots) };
        let raft = Raft::new(config.node_id, raft_config, network, log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let node = StrongNode {
            inner: Arc::new(Inner {
                id: config.node_id,
                config,
                raft,
                sm: shared,
                sm_store,
                snapshots,
                receiving: tokio::sync::Mutex::new(None),
                transport,
                reach: Mutex::new(BTreeMap::new()),
                read_floor,
                read_floor_passed: AtomicBool::new(read_floor.is_none()),
                started: Instant::now(),
                tasks: Mutex::new(Vec::new()),
            }),
        };
        let probe = tokio::spawn(probe_loop(Arc::downgrade(&node.inner)));
        let leases = tokio::spawn(lease_loop(Arc::downgrade(&node.inner)));
        lock(&node.inner.tasks).extend([probe, leases]);
        Ok(node)
    }

    /// This node's Raft id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// This node's address record (name and transport address).
    pub fn peer_node(&self) -> PeerNode {
        let addr = self
            .inner
            .config
            .advertise_addr
            .or_else(|| self.inner.transport.local_addr().ok())
            .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        PeerNode { name: self.inner.transport.node_name().to_owned(), addr }
    }

    /// This node's current snapshot and snapshot counters.
    pub fn snapshot_status(&self) -> SnapshotStatus {
        self.inner.sm_store.snapshot_status()
    }

    /// Why the Raft group stopped on this node (a fatal storage error, a
    /// shutdown), or `None` while it runs. A stopped group serves no strong
    /// request until the node restarts.
    pub fn stopped(&self) -> Option<String> {
        self.metrics().running_state.err().map(|fatal| fatal.to_string())
    }

    /// The openraft handle, for metrics and advanced use.
    pub fn raft(&self) -> &Raft<StrongTypes, SmStore> {
        &self.inner.raft
    }

    fn metrics(&self) -> RaftMetrics<StrongTypes> {
        self.inner.raft.metrics().borrow_watched().clone()
    }

    /// Stops the background tasks and Raft. The transport is the caller's.
    pub async fn shutdown(&self) {
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        let _ = self.inner.raft.shutdown().await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
