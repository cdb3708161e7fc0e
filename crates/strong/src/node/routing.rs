//! Running a request where it must run: on this node when it leads, otherwise
//! forwarded to the leader over the transport, following a `NotLeader` answer
//! a bounded number of times ([`super::FORWARD_HOPS_MAX`]) before the
//! deadline. A forwarded write whose leader dies is answered `Timeout`, never
//! guessed (`docs/design/strong.md`, section "Client semantics (`node`)",
//! item "Forwarding across a leader crash").

use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::error::ForwardToLeader;

use super::{FORWARD_HOPS_MAX, StrongNode};
use crate::error::StrongError;
use crate::network::{self, CallError, RpcRequest, RpcResponse};
use crate::types::{PeerNode, StrongTypes};

pub(super) fn forward_error(forward: ForwardToLeader<StrongTypes>) -> StrongError {
    StrongError::NotLeader { leader_id: forward.leader_id, leader: forward.leader_node }
}

impl StrongNode {
    /// Runs a request where it must run: locally on the leader, otherwise
    /// forwarded to it. Fails fast without a quorum; follows a `NotLeader`
    /// answer (leadership moved meanwhile) at most `FORWARD_HOPS_MAX` times
    /// before `deadline`. `answer` picks the expected variant out of the
    /// leader's reply and hands any other back.
    pub(super) async fn route<T, Local, LocalFut>(
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
                // Sent, but no usable answer came back: a read is simply
                // lost, a write may have been applied, so it is `Timeout`
                // (the one "may have applied" answer), never a 5xx that a
                // client would take as "not applied" and send again.
                Err(e) => {
                    return Err(match request {
                        RpcRequest::Read(_) => StrongError::Protocol(e.to_string()),
                        _ => StrongError::Timeout,
                    });
                }
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
}
