//! Which voters this node can reach, and what follows from it: the
//! reachability probe, the `NoQuorum` refusal a node on the minority side
//! answers at once instead of waiting for a deadline, and the status reported
//! to `/health` and `/v1/status` (`docs/design/strong.md`, section "Client
//! semantics (`node`)", item "No quorum, fast").

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use openraft::{RaftMetrics, ServerState};
use serde::{Deserialize, Serialize};

use super::{Inner, StrongNode, lock};
use crate::error::StrongError;
use crate::network::{self, RpcRequest, RpcResponse};
use crate::types::{PeerNode, StrongTypes};

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
    /// Why the Raft group stopped on this node, or `None` while it runs.
    pub stopped: Option<String>,
}

impl StrongNode {
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
            stopped: metrics.running_state.as_ref().err().map(|fatal| fatal.to_string()),
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

    pub(super) fn check_quorum(&self) -> Result<(), StrongError> {
        let status = self.quorum_status();
        if status.voters.is_empty() || status.has_quorum {
            return Ok(());
        }
        Err(StrongError::NoQuorum { reachable_voters: status.reachable_voters, voters: status.voters })
    }
}

/// Pings every other voter each `probe_interval_ms` and records answers:
/// the basis of `NoQuorum` and of `/health`.
pub(super) async fn probe_loop(inner: std::sync::Weak<Inner>) {
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
