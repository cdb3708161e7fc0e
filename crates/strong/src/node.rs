//! A strong-namespace Raft node: openraft wired to chorus storage and
//! transport, plus the client API (write, linearizable query, membership).
//!
//! This is an I/O layer: it spawns tasks and reads the clock through the
//! injected [`WallClock`]; the replicated logic is in [`crate::kv`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus_net::{Incoming, Transport};
use chorus_storage::Storage;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, ForwardToLeader, LinearizableReadError, RaftError};
use openraft::{ChangeMembers, Raft, RaftMetrics, ReadPolicy, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{StartError, StrongError};
use crate::kv::{Command, KeyValue, KvError, Lease, LeaseId, LockState, Response, WatchEvent};
use crate::network::{self, CallError, NetworkFactory, RpcRequest, RpcResponse};
use crate::store::{LogStore, SmShared, SmStore};
use crate::types::{PeerNode, StrongTypes};

/// Allowed numbers of voters at initialization (SPEC §4).
pub const VOTER_COUNTS: [usize; 4] = [1, 3, 5, 7];
/// Most voters at any time.
pub const VOTERS_MAX: usize = 7;
/// Most times a write or read follows a `NotLeader` answer before giving up.
pub const FORWARD_HOPS_MAX: usize = 3;

/// The only source of wall-clock time of this crate: lease deadlines are
/// stamped with it by the leader. The daemon passes its corrected clock.
pub trait WallClock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// Settings of a strong node. [`StrongConfig::new`] gives LAN defaults.
#[derive(Clone)]
pub struct StrongConfig {
    /// This node's Raft id (stable across restarts, unique in the cluster).
    pub node_id: u64,
    /// Address peers reach this node at; `None`: the transport's bound address.
    pub advertise_addr: Option<std::net::SocketAddr>,
    /// Leader heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// Election timeout range; followers wait a random time in it without
    /// hearing from a leader before campaigning.
    pub election_timeout_min_ms: u64,
    /// Upper end of the election timeout range.
    pub election_timeout_max_ms: u64,
    /// Run a pre-vote round before a real election (Ongaro's thesis §9.6), so
    /// a partitioned node that rejoins does not depose a healthy leader.
    pub pre_vote: bool,
    /// Deadline of a client write or linearizable read, forwarding included.
    pub request_timeout_ms: u64,
    /// Period of the reachability probe to every voter.
    pub probe_interval_ms: u64,
    /// A voter counts as reachable if it answered a probe within this window.
    pub reachable_window_ms: u64,
    /// Period at which the leader checks for expired leases.
    pub lease_tick_ms: u64,
    /// Build a snapshot (and purge the log) every this many applied entries.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind a snapshot, so slightly lagging
    /// followers catch up from the log rather than a snapshot.
    pub log_kept_behind_snapshot: u64,
    /// The wall clock for lease time.
    pub clock: Arc<dyn WallClock>,
}

impl fmt::Debug for StrongConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrongConfig")
            .field("node_id", &self.node_id)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("election_timeout_min_ms", &self.election_timeout_min_ms)
            .field("election_timeout_max_ms", &self.election_timeout_max_ms)
            .field("pre_vote", &self.pre_vote)
            .finish_non_exhaustive()
    }
}

impl StrongConfig {
    /// LAN defaults: heartbeat 50 ms, election timeout 150–300 ms, pre-vote on.
    pub fn new(node_id: u64) -> Self {
        Self {
            node_id,
            advertise_addr: None,
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            pre_vote: true,
            request_timeout_ms: 2_000,
            probe_interval_ms: 100,
            reachable_window_ms: 1_500,
            lease_tick_ms: 100,
            snapshot_every_entries: 100_000,
            log_kept_behind_snapshot: 5_000,
            clock: Arc::new(SystemClock),
        }
    }

    fn raft_config(&self) -> Result<openraft::Config, StartError> {
        if self.heartbeat_interval_ms == 0
            || self.election_timeout_min_ms <= self.heartbeat_interval_ms
            || self.election_timeout_max_ms <= self.election_timeout_min_ms
        {
            return Err(StartError::Config(
                "need 0 < heartbeat_interval_ms < election_timeout_min_ms < election_timeout_max_ms".into(),
            ));
        }
        if self.request_timeout_ms == 0 || self.probe_interval_ms == 0 || self.lease_tick_ms == 0 {
            return Err(StartError::Config("timeouts and periods must be > 0".into()));
        }
        if self.reachable_window_ms <= self.probe_interval_ms {
            return Err(StartError::Config("reachable_window_ms must exceed probe_interval_ms".into()));
        }
        let config = openraft::Config {
            cluster_name: "chorus-strong".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            enable_pre_vote: Some(self.pre_vote),
            // Reconnect attempts to a dead peer: start quickly (a restarted
            // node is back within a heartbeat or two), cap at one second.
            backoff: "50ms 100ms ...1s".into(),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.log_kept_behind_snapshot,
            install_snapshot_timeout: 10_000,
            ..openraft::Config::default()
        };
        config.validate().map_err(|e| StartError::Config(e.to_string()))
    }
}

/// A read served by the state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Query {
    /// One key.
    Get {
        /// Key.
        key: Vec<u8>,
    },
    /// Keys in `[start, end)`, at most `limit`.
    Range {
        /// First key.
        start: Vec<u8>,
        /// End (exclusive); `None`: unbounded.
        end: Option<Vec<u8>>,
        /// Most keys returned.
        limit: usize,
    },
    /// Watch events from a revision on (poll with the next revision).
    Events {
        /// First revision wanted.
        from_revision: u64,
        /// Most events returned.
        limit: usize,
    },
    /// A lease.
    Lease {
        /// Its id.
        lease: LeaseId,
    },
    /// A lock's holders.
    Lock {
        /// Lock name.
        name: Vec<u8>,
    },
    /// How many keys lie in `[start, end)`.
    Count {
        /// First key.
        start: Vec<u8>,
        /// End (exclusive); `None`: unbounded.
        end: Option<Vec<u8>>,
    },
}

/// The answer to a [`Query`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum QueryResult {
    /// For `Get`.
    Get(Option<KeyValue>),
    /// For `Range`.
    Range(Vec<KeyValue>),
    /// For `Events`.
    Events(Vec<WatchEvent>),
    /// For `Lease`.
    Lease(Option<Lease>),
    /// For `Lock`.
    Lock(Option<LockState>),
    /// For `Count`.
    Count(u64),
    /// For `Events` when `from_revision` has left the bounded history:
    /// the oldest revision still kept.
    Compacted {
        /// Oldest kept revision.
        oldest: u64,
    },
}

/// A [`QueryResult`] with the revision it was read at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryResponse {
    /// The store revision the read observed.
    pub revision: u64,
    /// The data.
    pub result: QueryResult,
}

/// Which voters this node can reach (itself included).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumStatus {
    /// All voters of the current membership.
    pub voters: Vec<u64>,
    /// Voters that answered a probe within `reachable_window_ms`.
    pub reachable_voters: Vec<u64>,
    /// Whether the reachable voters form a majority.
    pub has_quorum: bool,
}

/// A summary of the node's Raft state, for `/health` and `/v1/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrongStatus {
    /// This node.
    pub id: u64,
    /// "leader", "follower", "candidate", "learner" or "shutdown".
    pub state: String,
    /// The current leader, if known.
    pub leader: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Last applied log index.
    pub last_applied: Option<u64>,
    /// Voters and learners with their addresses.
    pub voters: BTreeMap<u64, PeerNode>,
    /// Learners.
    pub learners: BTreeMap<u64, PeerNode>,
    /// Reachability.
    pub quorum: QuorumStatus,
}

struct Inner {
    id: u64,
    config: StrongConfig,
    raft: Raft<StrongTypes, SmStore>,
    sm: Arc<RwLock<SmShared>>,
    transport: Transport,
    /// Last successful probe answer per voter.
    reach: Mutex<BTreeMap<u64, Instant>>,
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

fn forward_error(forward: ForwardToLeader<StrongTypes>) -> StrongError {
    StrongError::NotLeader { leader_id: forward.leader_id, leader: forward.leader_node }
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
        let sm = SmStore::open(storage).await?;
        let shared = sm.shared();
        let network = NetworkFactory { transport: transport.clone(), id: config.node_id };
        let raft = Raft::new(config.node_id, raft_config, network, log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let node = StrongNode {
            inner: Arc::new(Inner {
                id: config.node_id,
                config,
                raft,
                sm: shared,
                transport,
                reach: Mutex::new(BTreeMap::new()),
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

    /// The openraft handle, for metrics and advanced use.
    pub fn raft(&self) -> &Raft<StrongTypes, SmStore> {
        &self.inner.raft
    }

    /// Forms a new cluster with `voters` (1, 3, 5 or 7 of them, this node
    /// among them). Call on one node of a pristine cluster; fails with
    /// `Membership` if this node already has state.
    pub async fn initialize(&self, voters: BTreeMap<u64, PeerNode>) -> Result<(), StrongError> {
        if !VOTER_COUNTS.contains(&voters.len()) {
            return Err(StrongError::Membership(format!("{} voters; allowed: {VOTER_COUNTS:?}", voters.len())));
        }
        self.inner.raft.initialize(voters).await.map_err(|e| match e {
            RaftError::APIError(e) => StrongError::Membership(e.to_string()),
            RaftError::Fatal(e) => StrongError::Shutdown(e.to_string()),
        })
    }

    /// Adds `id` as a learner and waits until it has caught up. Leader only.
    pub async fn add_learner(&self, id: u64, node: PeerNode) -> Result<(), StrongError> {
        let write = self.inner.raft.add_learner(id, node, true);
        self.membership_result(write).await
    }

    /// Adds `id` as a learner, waits for it to catch up, then makes it a
    /// voter (joint consensus). Runs on the leader; a follower forwards it.
    pub async fn add_voter(&self, id: u64, node: PeerNode) -> Result<(), StrongError> {
        let deadline = self.membership_deadline();
        self.route(
            deadline,
            || self.add_voter_local(id, node.clone()),
            || RpcRequest::AddVoter { id, node: node.clone() },
            membership_answer,
        )
        .await
    }

    async fn add_voter_local(&self, id: u64, node: PeerNode) -> Result<(), StrongError> {
        let voters = self.status().voters;
        if !voters.contains_key(&id) && voters.len() >= VOTERS_MAX {
            return Err(StrongError::Membership(format!("at most {VOTERS_MAX} voters")));
        }
        self.add_learner(id, node).await?;
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        let write = self.inner.raft.change_membership(change, false);
        self.membership_result(write).await
    }

    /// Removes voter `id` from the cluster (it stops receiving the log).
    /// Runs on the leader; a follower forwards it.
    pub async fn remove_voter(&self, id: u64) -> Result<(), StrongError> {
        let deadline = self.membership_deadline();
        self.route(deadline, || self.remove_voter_local(id), || RpcRequest::RemoveVoter { id }, membership_answer).await
    }

    async fn remove_voter_local(&self, id: u64) -> Result<(), StrongError> {
        let voters = self.status().voters;
        if !voters.contains_key(&id) {
            return Err(StrongError::Membership(format!("{id} is not a voter")));
        }
        if voters.len() == 1 {
            return Err(StrongError::Membership("cannot remove the last voter".into()));
        }
        let change = ChangeMembers::RemoveVoters(BTreeSet::from([id]));
        let write = self.inner.raft.change_membership(change, false);
        self.membership_result(write).await
    }

    /// Catching up a learner may legitimately take longer than a write.
    fn membership_deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.inner.config.request_timeout_ms.saturating_mul(10))
    }

    async fn membership_result<T>(
        &self,
        write: impl Future<Output = Result<T, RaftError<StrongTypes, ClientWriteError<StrongTypes>>>>,
    ) -> Result<(), StrongError> {
        // Catching up a learner may legitimately take longer than a write.
        let deadline = Duration::from_millis(self.inner.config.request_timeout_ms.saturating_mul(10));
        match tokio::time::timeout(deadline, write).await {
            Err(_) => Err(StrongError::Timeout),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => Err(forward_error(forward)),
            Ok(Err(RaftError::APIError(e))) => Err(StrongError::Membership(e.to_string())),
            Ok(Err(RaftError::Fatal(e))) => Err(StrongError::Shutdown(e.to_string())),
        }
    }

    fn metrics(&self) -> RaftMetrics<StrongTypes> {
        self.inner.raft.metrics().borrow_watched().clone()
    }

    /// Raft state and reachability, for health checks.
    pub fn status(&self) -> StrongStatus {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let node = |id: u64| membership.get_node(&id).cloned().map(|n| (id, n));
        let state = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        StrongStatus {
            id: self.inner.id,
            state: state.to_owned(),
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_applied: metrics.last_applied.map(|log_id| log_id.index),
            voters: membership.voter_ids().filter_map(node).collect(),
            learners: membership.learner_ids().filter_map(node).collect(),
            quorum: self.quorum_status_from(&metrics),
        }
    }

    /// Which voters are reachable right now.
    pub fn quorum_status(&self) -> QuorumStatus {
        self.quorum_status_from(&self.metrics())
    }

    fn quorum_status_from(&self, metrics: &RaftMetrics<StrongTypes>) -> QuorumStatus {
        let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
        let window = Duration::from_millis(self.inner.config.reachable_window_ms);
        let now = Instant::now();
        // Until one window has passed no probe could have answered yet:
        // assume reachable rather than refuse writes at startup.
        let warming_up = now.duration_since(self.inner.started) < window;
        let reach = lock(&self.inner.reach);
        let reachable_voters: Vec<u64> = voters
            .iter()
            .copied()
            .filter(|id| {
                *id == self.inner.id
                    || warming_up
                    || reach.get(id).is_some_and(|seen| now.duration_since(*seen) <= window)
            })
            .collect();
        // A leader whose followers acknowledged it within the window has a
        // quorum by Raft's own account, whatever the probes say: probes are
        // only a fast way to refuse early, and a starved probe task (a
        // loaded machine) must not refuse writes Raft would commit.
        let raft_quorum_ack =
            metrics.last_quorum_acked.as_ref().is_some_and(|acked| openraft::Instant::elapsed(&**acked) <= window);
        let has_quorum = !voters.is_empty() && (raft_quorum_ack || reachable_voters.len() * 2 > voters.len());
        QuorumStatus { voters, reachable_voters, has_quorum }
    }

    fn check_quorum(&self) -> Result<(), StrongError> {
        let status = self.quorum_status();
        if status.voters.is_empty() || status.has_quorum {
            return Ok(());
        }
        Err(StrongError::NoQuorum { reachable_voters: status.reachable_voters, voters: status.voters })
    }

    /// Proposes `command` and returns the state machine's answer once it is
    /// committed and applied. A follower forwards to the leader over the
    /// transport. Fails fast with `NoQuorum` when a majority of voters is
    /// unreachable from here.
    pub async fn write(&self, command: Command) -> Result<Response, StrongError> {
        command.validate()?;
        let deadline = Instant::now() + Duration::from_millis(self.inner.config.request_timeout_ms);
        self.route(
            deadline,
            || self.write_local(command.clone(), deadline),
            || RpcRequest::Write(command.clone()),
            |response| match response {
                RpcResponse::Write(result) => Ok(result),
                other => Err(other),
            },
        )
        .await
    }

    /// Reads through the state machine. `linearizable`: the leader confirms
    /// its leadership with a quorum (ReadIndex, via openraft's
    /// `ensure_linearizable`) and waits until it has applied that index;
    /// followers forward the read to the leader. Otherwise the local state
    /// machine answers at once (possibly stale).
    pub async fn query(&self, query: Query, linearizable: bool) -> Result<QueryResponse, StrongError> {
        if !linearizable {
            return Ok(self.read_local(&query));
        }
        let deadline = Instant::now() + Duration::from_millis(self.inner.config.request_timeout_ms);
        self.route(
            deadline,
            || self.query_local(&query, deadline),
            || RpcRequest::Read(query.clone()),
            |response| match response {
                RpcResponse::Read(result) => Ok(result),
                other => Err(other),
            },
        )
        .await
    }

    /// Reads this node's replica at once (possibly stale): `query(q, false)`
    /// without the `async`.
    pub fn query_stale(&self, query: Query) -> QueryResponse {
        self.read_local(&query)
    }

    /// Runs a request where it must run: locally on the leader, otherwise
    /// forwarded to it. Fails fast without a quorum; follows a `NotLeader`
    /// answer (leadership moved meanwhile) at most `FORWARD_HOPS_MAX` times
    /// before `deadline`. `answer` picks the expected variant out of the
    /// leader's reply and hands any other back.
    async fn route<T, Local, LocalFut>(
        &self,
        deadline: Instant,
        local: Local,
        request: impl Fn() -> RpcRequest,
        answer: impl Fn(RpcResponse) -> Result<Result<T, StrongError>, RpcResponse>,
    ) -> Result<T, StrongError>
    where
        Local: Fn() -> LocalFut,
        LocalFut: std::future::Future<Output = Result<T, StrongError>>,
    {
        let mut hops = 0;
        loop {
            self.check_quorum()?;
            let outcome = match self.leader_target(deadline).await? {
                None => local().await,
                Some(leader) => self.forward(&leader, request(), deadline).await.and_then(|response| {
                    answer(response)
                        .unwrap_or_else(|other| Err(StrongError::Protocol(format!("unexpected answer {other:?}"))))
                }),
            };
            match outcome {
                Err(StrongError::NotLeader { .. }) if hops < FORWARD_HOPS_MAX && Instant::now() < deadline => {
                    hops += 1;
                    self.wait_for_metrics_change(deadline).await;
                }
                other => return other,
            }
        }
    }

    /// Reads one key (see [`StrongNode::query`]).
    pub async fn read(&self, key: &[u8], linearizable: bool) -> Result<Option<KeyValue>, StrongError> {
        match self.query(Query::Get { key: key.to_vec() }, linearizable).await?.result {
            QueryResult::Get(kv) => Ok(kv),
            other => Err(StrongError::Protocol(format!("unexpected answer {other:?}"))),
        }
    }

    /// `None` when this node is the leader, else the leader to forward to;
    /// waits (until `deadline`) while no leader is known.
    async fn leader_target(&self, deadline: Instant) -> Result<Option<PeerNode>, StrongError> {
        loop {
            let metrics = self.metrics();
            match metrics.current_leader {
                Some(leader) if leader == self.inner.id => return Ok(None),
                Some(leader) => {
                    if let Some(node) = metrics.membership_config.membership().get_node(&leader) {
                        return Ok(Some(node.clone()));
                    }
                }
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(StrongError::NoLeader);
            }
            self.check_quorum()?;
            self.wait_for_metrics_change(deadline).await;
        }
    }

    /// Waits for the Raft metrics to change (a new leader, a new term), at
    /// most one election timeout and never past `deadline`.
    async fn wait_for_metrics_change(&self, deadline: Instant) {
        let mut metrics = self.inner.raft.metrics();
        let cap = Instant::now() + Duration::from_millis(self.inner.config.election_timeout_min_ms);
        let until = deadline.min(cap);
        let _ = tokio::time::timeout(until.saturating_duration_since(Instant::now()), metrics.changed()).await;
    }

    async fn forward(
        &self,
        leader: &PeerNode,
        request: RpcRequest,
        deadline: Instant,
    ) -> Result<RpcResponse, StrongError> {
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(StrongError::Timeout);
            }
            // A leader that dies mid-request never answers; once another
            // node leads, stop waiting for it. A read is retried at the new
            // leader; a write's fate is unknown (it may have been appended
            // before the crash), so the client hears `Timeout` at once
            // rather than at its deadline.
            let call = network::call(&self.inner.transport, leader, &request, remaining);
            let outcome = tokio::select! {
                outcome = call => outcome,
                () = self.leader_moved_from(&leader.name) => {
                    return Err(match request {
                        RpcRequest::Read(_) => StrongError::NotLeader { leader_id: None, leader: None },
                        _ => StrongError::Timeout,
                    });
                }
            };
            match outcome {
                Ok(RpcResponse::Refused(reason)) => return Err(StrongError::Shutdown(reason)),
                Ok(response) => return Ok(response),
                // Never sent: safe to retry once leadership settles.
                Err(e) if e.not_sent() => {
                    self.check_quorum()?;
                    self.wait_for_metrics_change(deadline).await;
                    match self.leader_target(deadline).await? {
                        Some(next) if next != *leader => {
                            return Err(StrongError::NotLeader { leader_id: None, leader: Some(next) });
                        }
                        None => return Err(StrongError::NotLeader { leader_id: Some(self.inner.id), leader: None }),
                        Some(_) => {}
                    }
                }
                Err(CallError::Transport(chorus_net::RequestError::Timeout)) => return Err(StrongError::Timeout),
                Err(e) => return Err(StrongError::Protocol(e.to_string())),
            }
        }
    }

    /// Resolves once this node knows a leader other than `name`.
    async fn leader_moved_from(&self, name: &str) {
        let mut metrics = self.inner.raft.metrics();
        loop {
            let moved = {
                let m = metrics.borrow_and_update();
                m.current_leader.is_some_and(|id| {
                    m.membership_config.membership().get_node(&id).is_some_and(|node| node.name != name)
                })
            };
            if moved {
                return;
            }
            if metrics.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Proposes `command` on this node, which must be the leader.
    async fn write_local(&self, command: Command, deadline: Instant) -> Result<Response, StrongError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, self.inner.raft.client_write(command)).await {
            Err(_) => Err(StrongError::Timeout),
            Ok(Ok(response)) => response.data.map_err(StrongError::Rejected),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => Err(forward_error(forward)),
            Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => Err(StrongError::Timeout),
            Ok(Err(RaftError::APIError(e))) => Err(StrongError::Protocol(e.to_string())),
            Ok(Err(RaftError::Fatal(e))) => Err(StrongError::Shutdown(e.to_string())),
        }
    }

    async fn query_local(&self, query: &Query, deadline: Instant) -> Result<QueryResponse, StrongError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let linearize = self.inner.raft.ensure_linearizable(ReadPolicy::ReadIndex);
        match tokio::time::timeout(remaining, linearize).await {
            Err(_) => Err(StrongError::Timeout),
            Ok(Ok(_)) => Ok(self.read_local(query)),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(forward)))) => {
                Err(forward_error(forward))
            }
            Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_)))) => {
                let status = self.quorum_status();
                Err(StrongError::NoQuorum { reachable_voters: status.reachable_voters, voters: status.voters })
            }
            Ok(Err(RaftError::Fatal(e))) => Err(StrongError::Shutdown(e.to_string())),
        }
    }

    fn read_local(&self, query: &Query) -> QueryResponse {
        let shared = self.inner.sm.read().unwrap_or_else(PoisonError::into_inner);
        let kv = &shared.kv;
        let result = match query {
            Query::Get { key } => QueryResult::Get(kv.get(key).cloned()),
            Query::Range { start, end, limit } => QueryResult::Range(kv.range(start, end.as_deref(), *limit)),
            Query::Events { from_revision, limit } => match kv.events_since(*from_revision, *limit) {
                Ok(events) => QueryResult::Events(events),
                Err(KvError::Compacted { oldest, .. }) => QueryResult::Compacted { oldest },
                Err(_) => QueryResult::Events(Vec::new()),
            },
            Query::Lease { lease } => QueryResult::Lease(kv.lease(*lease).cloned()),
            Query::Lock { name } => QueryResult::Lock(kv.lock(name).cloned()),
            Query::Count { start, end } => QueryResult::Count(kv.count(start, end.as_deref())),
        };
        QueryResponse { revision: kv.revision(), result }
    }

    /// Handles one strong request from a peer (payload starting with
    /// [`crate::STRONG_RPC_TAG`]) and returns the response bytes.
    pub async fn handle_request(&self, payload: &[u8]) -> Bytes {
        let Some(request) = network::decode_request(payload) else {
            return network::encode_response(&RpcResponse::Refused("malformed request".into()));
        };
        let raft = &self.inner.raft;
        let refused = |e: &dyn fmt::Display| RpcResponse::Refused(e.to_string());
        let response = match request {
            RpcRequest::Append(rpc) => raft.append_entries(rpc).await.map_or_else(|e| refused(&e), RpcResponse::Append),
            RpcRequest::Vote(rpc) => raft.vote(rpc).await.map_or_else(|e| refused(&e), RpcResponse::Vote),
            RpcRequest::PreVote(rpc) => raft.pre_vote(rpc).await.map_or_else(|e| refused(&e), RpcResponse::Vote),
            RpcRequest::Snapshot { vote, meta, data } => {
                let snapshot = crate::types::Snapshot { meta, snapshot: data };
                raft.install_full_snapshot(vote, snapshot).await.map_or_else(|e| refused(&e), RpcResponse::Snapshot)
            }
            RpcRequest::Write(command) => {
                let deadline = Instant::now() + Duration::from_millis(self.inner.config.request_timeout_ms);
                RpcResponse::Write(match command.validate() {
                    Ok(()) => self.write_local(command, deadline).await,
                    Err(e) => Err(StrongError::Rejected(e)),
                })
            }
            RpcRequest::Read(query) => {
                let deadline = Instant::now() + Duration::from_millis(self.inner.config.request_timeout_ms);
                RpcResponse::Read(self.query_local(&query, deadline).await)
            }
            RpcRequest::Ping => RpcResponse::Pong,
            RpcRequest::AddVoter { id, node } => RpcResponse::Membership(self.add_voter_local(id, node).await),
            RpcRequest::RemoveVoter { id } => RpcResponse::Membership(self.remove_voter_local(id).await),
        };
        network::encode_response(&response)
    }

    /// Serves every strong request arriving on `incoming` (one task per
    /// request); other traffic is dropped. For nodes whose transport carries
    /// only strong traffic (tests, a dedicated port); the daemon instead
    /// routes requests with [`crate::is_strong_request`].
    pub fn serve(&self, mut incoming: mpsc::Receiver<Incoming>) -> JoinHandle<()> {
        let node = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            while let Some(message) = incoming.recv().await {
                let Incoming::Request { payload, respond, .. } = message else { continue };
                if !network::is_strong_request(&payload) {
                    continue;
                }
                let Some(inner) = node.upgrade() else { break };
                let node = StrongNode { inner };
                tokio::spawn(async move {
                    let response = node.handle_request(&payload).await;
                    let _ = respond.send(response);
                });
            }
        })
    }

    /// Stops the background tasks and Raft. The transport is the caller's.
    pub async fn shutdown(&self) {
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        let _ = self.inner.raft.shutdown().await;
    }
}

fn membership_answer(response: RpcResponse) -> Result<Result<(), StrongError>, RpcResponse> {
    match response {
        RpcResponse::Membership(result) => Ok(result),
        other => Err(other),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Pings every other voter each `probe_interval_ms` and records answers:
/// the basis of `NoQuorum` and of `/health`.
async fn probe_loop(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let node = StrongNode { inner: strong };
        let interval = Duration::from_millis(node.inner.config.probe_interval_ms);
        let metrics = node.metrics();
        let membership = metrics.membership_config.membership();
        let peers: Vec<(u64, PeerNode)> = membership
            .voter_ids()
            .filter(|id| *id != node.inner.id)
            .filter_map(|id| membership.get_node(&id).cloned().map(|n| (id, n)))
            .collect();
        let pings = peers.into_iter().map(|(id, peer)| {
            let transport = node.inner.transport.clone();
            async move {
                let answer = network::call(&transport, &peer, &RpcRequest::Ping, interval).await;
                (id, matches!(answer, Ok(RpcResponse::Pong)))
            }
        });
        let started = Instant::now();
        let results = futures_util::future::join_all(pings).await;
        {
            let now = Instant::now();
            let mut reach = lock(&node.inner.reach);
            for (id, ok) in results {
                if ok {
                    reach.insert(id, now);
                }
            }
        }
        drop(node);
        tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
    }
}

/// On the leader: after winning an election, refresh every lease (a full
/// TTL from now, so clients can find the new leader); then, each tick,
/// propose `ExpireLeases` when some lease's deadline has passed.
async fn lease_loop(inner: std::sync::Weak<Inner>) {
    let mut refreshed_term = None;
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let node = StrongNode { inner: strong };
        let tick = Duration::from_millis(node.inner.config.lease_tick_ms);
        let metrics = node.metrics();
        if metrics.state == ServerState::Leader && metrics.current_leader == Some(node.inner.id) {
            let now_ms = node.inner.config.clock.now_ms();
            let deadline = Instant::now() + Duration::from_millis(node.inner.config.request_timeout_ms);
            if refreshed_term != Some(metrics.current_term) {
                if node.write_local(Command::RefreshLeases { now_ms }, deadline).await.is_ok() {
                    refreshed_term = Some(metrics.current_term);
                }
            } else {
                let expired = {
                    let shared = node.inner.sm.read().unwrap_or_else(PoisonError::into_inner);
                    shared.kv.has_expired_leases(now_ms)
                };
                if expired && let Err(e) = node.write_local(Command::ExpireLeases { now_ms }, deadline).await {
                    tracing::debug!(error = %e, "lease expiry proposal failed");
                }
            }
        } else {
            refreshed_term = None;
        }
        drop(node);
        tokio::time::sleep(tick).await;
    }
}
