//! Cluster membership: forming a cluster from its first voters, adding
//! learners and voters (joint consensus) and removing voters. Changes run on
//! the leader and are forwarded there like writes (`docs/design/strong.md`,
//! section "Client semantics (`node`)", item "Membership").

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};

use super::routing::forward_error;
use super::{StrongNode, VOTER_COUNTS, VOTERS_MAX};
use crate::error::StrongError;
use crate::network::{RpcRequest, RpcResponse};
use crate::types::{PeerNode, StrongTypes};

impl StrongNode {
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

    pub(super) async fn add_voter_local(&self, id: u64, node: PeerNode) -> Result<(), StrongError> {
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

    pub(super) async fn remove_voter_local(&self, id: u64) -> Result<(), StrongError> {
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
}

fn membership_answer(response: RpcResponse) -> Result<Result<(), StrongError>, RpcResponse> {
    match response {
        RpcResponse::Membership(result) => Ok(result),
        other => Err(other),
    }
}
