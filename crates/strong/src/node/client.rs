//! The client API of a strong node: [`StrongNode::write`],
//! [`StrongNode::query`] (linearizable or stale) and [`StrongNode::read`],
//! with the [`Query`] types they take and return, and their execution on the
//! leader (propose through Raft, ReadIndex, read the local replica). Where a
//! request runs is decided by `routing`; see `docs/design/strong.md`, section
//! "Client semantics (`node`)".

use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openraft::ReadPolicy;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::metrics::WaitError;
use serde::{Deserialize, Serialize};

use super::StrongNode;
use super::routing::forward_error;
use crate::error::StrongError;
use crate::kv::{KeyValue, KvCommand, KvError, KvResponse, Lease, LeaseId, LockState, WatchEvent};
use crate::network::{RpcRequest, RpcResponse};

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

impl StrongNode {
    /// Proposes `command` and returns the state machine's answer once it is
    /// committed and applied. A follower forwards to the leader over the
    /// transport. Fails fast with `NoQuorum` when a majority of voters is
    /// unreachable from here.
    pub async fn write(&self, command: KvCommand) -> Result<KvResponse, StrongError> {
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

    /// This replica's store revision, updated after every apply: watch
    /// streams and session reads wait on it rather than polling.
    pub fn applied_revisions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.sm_store.applied_revisions()
    }

    /// Reads one key (see [`StrongNode::query`]).
    pub async fn read(&self, key: &[u8], linearizable: bool) -> Result<Option<KeyValue>, StrongError> {
        match self.query(Query::Get { key: key.to_vec() }, linearizable).await?.result {
            QueryResult::Get(kv) => Ok(kv),
            other => Err(StrongError::Protocol(format!("unexpected answer {other:?}"))),
        }
    }

    /// Proposes `command` on this node, which must be the leader. Time is
    /// stamped here and nowhere else: lease time and idempotency windows
    /// come from the leader's clock as it proposes, whichever node took the
    /// client's call, and a leader whose clock is unsafe stamps no lease
    /// time (`docs/design/strong.md`, "Lease time").
    pub(super) async fn write_local(
        &self,
        mut command: KvCommand,
        deadline: Instant,
    ) -> Result<KvResponse, StrongError> {
        let clock = &self.inner.config.clock;
        let now_ms = clock.is_safe().then(|| clock.now_ms());
        command.stamp(now_ms, self.inner.config.idempotency_window_ms)?;
        // A group already stopped proposes nothing: `Shutdown` (503
        // `stopping`) then means "not applied", and the client may send the
        // write elsewhere. A group that stops while the write is in flight
        // may have appended and replicated it, so that case is `Timeout`
        // (`docs/design/strong.md`, "Client semantics (`node`)").
        if let Some(why) = self.stopped() {
            return Err(StrongError::Shutdown(why));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, self.inner.raft.client_write(command)).await {
            Err(_) => Err(StrongError::Timeout),
            Ok(Ok(response)) => response.data.map_err(StrongError::Rejected),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => Err(forward_error(forward)),
            Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => Err(StrongError::Timeout),
            Ok(Err(RaftError::APIError(e))) => Err(StrongError::Protocol(e.to_string())),
            Ok(Err(RaftError::Fatal(_))) => Err(StrongError::Timeout),
        }
    }

    pub(super) async fn query_local(&self, query: &Query, deadline: Instant) -> Result<QueryResponse, StrongError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let linearize = self.inner.raft.ensure_linearizable(ReadPolicy::ReadIndex);
        match tokio::time::timeout(remaining, linearize).await {
            Err(_) => Err(StrongError::Timeout),
            Ok(Ok(_)) => {
                self.wait_for_read_floor(deadline).await?;
                Ok(self.read_local(query))
            }
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

    /// Waits until this node applied past the last log id it held when it
    /// started (its read floor). openraft's read barrier is the later of
    /// the leader's no-op and its committed id; a leader that restarts into
    /// its own term (its vote was stored committed) proposes no new no-op,
    /// and its committed id comes from storage, where it lags the last
    /// acknowledged write. Every write acknowledged before the restart is
    /// at or below the floor, since a leader's log holds every committed
    /// entry. The floor compares as a log id, term first: once a later term
    /// applies anything, it is passed, whatever became of the entries
    /// above it (`docs/design/strong.md`, "Reads after a restart").
    async fn wait_for_read_floor(&self, deadline: Instant) -> Result<(), StrongError> {
        if self.inner.read_floor_passed.load(Ordering::Acquire) {
            return Ok(());
        }
        let floor = self.inner.read_floor;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let passed = self
            .inner
            .raft
            .wait(Some(remaining))
            .metrics(move |m| m.last_applied >= floor, "applied past the log held at start-up")
            .await;
        match passed {
            Ok(_) => {
                self.inner.read_floor_passed.store(true, Ordering::Release);
                Ok(())
            }
            Err(WaitError::Timeout(..)) => Err(StrongError::Timeout),
            Err(WaitError::ShuttingDown) => Err(StrongError::Shutdown("raft is shutting down".into())),
        }
    }

    fn read_local(&self, query: &Query) -> QueryResponse {
        let shared = self.inner.sm.read().unwrap_or_else(PoisonError::into_inner);
        let kv = &shared.kv;
        let result = match query {
            Query::Get { key } => QueryResult::Get(kv.get(key)),
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
}
