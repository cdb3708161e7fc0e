//! Raft RPCs and client forwarding over the chorus QUIC transport.
//!
//! Every strong-namespace request is one `Transport::request` (a QUIC
//! bidirectional stream, mutual TLS, with a deadline) whose payload starts
//! with [`STRONG_RPC_TAG`] followed by a postcard-encoded [`RpcRequest`];
//! the answer is a postcard-encoded [`RpcResponse`]. The tag lets a daemon
//! that multiplexes several protocols over one transport route requests
//! (see [`is_strong_request`]).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chorus_net::{PeerAddr, RequestError, Transport};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{OptionalSend, RPCTypes, RaftNetworkV2};
use serde::{Deserialize, Serialize};

use crate::error::StrongError;
use crate::kv::{KvCommand, KvResponse};
use crate::node::{Query, QueryResponse};
use crate::store::SnapshotStore;
use crate::types::{PeerNode, Snapshot, SnapshotMeta, StrongTypes, Vote};

/// Most bytes of entries in one AppendEntries request (by
/// [`crate::kv::KvCommand::payload_bytes`]): openraft bounds a request by
/// entry count only, and 300 entries of 1 MiB values would exceed the
/// transport's 16 MiB frame on every retry, so a lagging follower would
/// never catch up. A longer request is cut and answered as a partial
/// success; openraft sends the rest next. At least one entry always goes
/// (a command is at most `TXN_BYTES_MAX`, half a frame).
pub const APPEND_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Extra deadline of the request that installs a received snapshot, per
/// byte of it: the receiver decodes the whole stream before answering. At
/// 16 MiB a second, a slow disk's pace, with the chunk deadline on top.
const INSTALL_BYTES_PER_SECOND_MIN: u64 = 16 * 1024 * 1024;

/// Extra deadline of an AppendEntries request, per byte of its entries.
/// openraft gives every append one heartbeat interval (50 ms by default),
/// which a request of several MiB (a lagging follower or a new learner
/// catching up on 1 MiB values) cannot meet on a busy disk: the request
/// timed out and was sent again, the same size, forever. At 16 MiB a
/// second, an 8 MiB append ([`APPEND_BYTES_MAX`]) gets 500 ms more;
/// heartbeats (no entries) keep the interval.
const APPEND_BYTES_PER_SECOND_MIN: u64 = 16 * 1024 * 1024;

/// First byte of every strong-namespace request payload.
pub const STRONG_RPC_TAG: u8 = 0xA5;

/// Whether a transport request belongs to strong namespaces.
pub fn is_strong_request(payload: &[u8]) -> bool {
    payload.first() == Some(&STRONG_RPC_TAG)
}

/// A request between strong-namespace nodes. Public only for the fuzz
/// targets ([`fuzz_api`]).
#[doc(hidden)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum RpcRequest {
    Append(AppendEntriesRequest<StrongTypes>),
    Vote(VoteRequest<StrongTypes>),
    PreVote(VoteRequest<StrongTypes>),
    /// The whole snapshot in one message, as builds before the chunked
    /// transfer sent it. Kept in its place so the variants after it keep
    /// their encoding; refused by the receiver.
    LegacySnapshot {
        vote: Vote,
        meta: SnapshotMeta,
        data: Vec<u8>,
    },
    /// A client write forwarded to the leader.
    Write(KvCommand),
    /// A linearizable read forwarded to the leader.
    Read(Query),
    /// Reachability probe.
    Ping,
    /// A voter addition forwarded to the leader.
    AddVoter {
        id: u64,
        node: PeerNode,
    },
    /// A voter removal forwarded to the leader.
    RemoveVoter {
        id: u64,
    },
    /// Chunk `index` of snapshot transfer `transfer` (chunks come in order,
    /// one request each; a new transfer starts at index 0).
    SnapshotChunk {
        transfer: u64,
        index: u32,
        data: Vec<u8>,
    },
    /// Every chunk of `transfer` was sent: install it (openraft's
    /// `install_full_snapshot` with the leader's `vote`).
    SnapshotInstall {
        vote: Vote,
        transfer: u64,
        meta: SnapshotMeta,
        chunks: u32,
        bytes: u64,
    },
}

/// The answer to an [`RpcRequest`]. Public only for the fuzz targets
/// ([`fuzz_api`]).
#[doc(hidden)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum RpcResponse {
    Append(AppendEntriesResponse<StrongTypes>),
    Vote(VoteResponse<StrongTypes>),
    Snapshot(SnapshotResponse<StrongTypes>),
    Write(Result<KvResponse, StrongError>),
    Read(Result<QueryResponse, StrongError>),
    Pong,
    /// The outcome of a forwarded membership change.
    Membership(Result<(), StrongError>),
    /// The receiver could not handle the request (shutting down, malformed).
    Refused(String),
    /// A snapshot chunk was stored, or why not (the sender then restarts
    /// the transfer).
    SnapshotChunk(Result<(), String>),
}

#[doc(hidden)]
pub fn encode_request(request: &RpcRequest) -> Result<Bytes, postcard::Error> {
    let mut payload = vec![STRONG_RPC_TAG];
    postcard::to_io(request, &mut payload).map_err(|_| postcard::Error::SerializeBufferFull)?;
    Ok(Bytes::from(payload))
}

#[doc(hidden)]
pub fn decode_request(payload: &[u8]) -> Option<RpcRequest> {
    let body = payload.strip_prefix(&[STRONG_RPC_TAG])?;
    postcard::from_bytes(body).ok()
}

#[doc(hidden)]
pub fn encode_response(response: &RpcResponse) -> Bytes {
    match postcard::to_stdvec(response) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => {
            let fallback = RpcResponse::Refused(format!("response encoding failed: {e}"));
            Bytes::from(postcard::to_stdvec(&fallback).unwrap_or_default())
        }
    }
}

/// What a node decodes from the answer to one of its requests.
#[doc(hidden)]
pub fn decode_response(bytes: &[u8]) -> Result<RpcResponse, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// The strong codecs as the fuzz targets (`fuzz/`, see
/// `docs/design/fault-injection.md`, "Fuzzing") need them: the exact decoders
/// a peer's bytes reach, and the encoders for their round trips. Not an
/// interface: it follows the RPC types, which are private to the nodes of
/// one version.
#[doc(hidden)]
pub mod fuzz_api {
    pub use super::{RpcRequest, RpcResponse, decode_request, decode_response, encode_request, encode_response};

    pub use crate::kv::snapshot::SnapshotDecoder;

    /// The state a snapshot's bytes (its chunks concatenated) load, decoded
    /// as a snapshot install decodes them, with the default history limits.
    pub fn decode_snapshot(data: &[u8]) -> Result<crate::kv::KvStateMachine, crate::kv::snapshot::SnapshotError> {
        crate::kv::snapshot::decode(data, crate::kv::HistoryLimits::default())
    }
}

/// Sends one request and decodes the answer.
pub(crate) async fn call(
    transport: &Transport,
    peer: &PeerNode,
    request: &RpcRequest,
    timeout: Duration,
) -> Result<RpcResponse, CallError> {
    let payload = encode_request(request).map_err(|e| CallError::Protocol(e.to_string()))?;
    let peer_addr = PeerAddr { name: peer.name.clone(), addr: peer.addr };
    let bytes = transport.request(&peer_addr, payload, timeout).await.map_err(CallError::Transport)?;
    decode_response(&bytes).map_err(|e| CallError::Protocol(e.to_string()))
}

/// Why [`call`] failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("transport: {0}")]
    Transport(RequestError),
    #[error("protocol: {0}")]
    Protocol(String),
}

impl CallError {
    /// Whether the request certainly never reached the peer (so retrying a
    /// non-idempotent command elsewhere cannot apply it twice).
    pub(crate) fn not_sent(&self) -> bool {
        matches!(
            self,
            CallError::Transport(
                RequestError::Unreachable(_)
                    | RequestError::InvalidPeer(_)
                    | RequestError::Shutdown
                    | RequestError::TooLarge { .. }
            )
        )
    }
}

/// Creates one [`PeerClient`] per replication target.
#[derive(Clone)]
pub struct NetworkFactory {
    pub(crate) transport: Transport,
    pub(crate) id: u64,
    pub(crate) snapshots: Arc<SnapshotStore>,
}

impl RaftNetworkFactory<StrongTypes> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> Self::Network {
        PeerClient {
            transport: self.transport.clone(),
            id: self.id,
            target,
            node: node.clone(),
            snapshots: Arc::clone(&self.snapshots),
            append_bytes_max: APPEND_BYTES_MAX,
        }
    }
}

/// Sends Raft RPCs to one peer.
pub struct PeerClient {
    transport: Transport,
    id: u64,
    target: u64,
    node: PeerNode,
    snapshots: Arc<SnapshotStore>,
    /// Entry bytes of the next append to this peer at most; adapts to the
    /// peer's pace ([`next_append_bytes_max`]).
    append_bytes_max: usize,
}

/// Transfers started by this process, so a follower can tell a new one
/// from the one it is receiving.
static TRANSFERS_STARTED: AtomicU64 = AtomicU64::new(0);

impl PeerClient {
    /// Maps transport failures so that openraft backs off dead peers:
    /// anything that shows the peer is not connected is `Unreachable`.
    fn rpc_error(&self, error: CallError, action: RPCTypes, timeout: Duration) -> RPCError<StrongTypes> {
        match error {
            CallError::Transport(RequestError::Timeout) if self.transport.is_connected(&self.node.name) => {
                RPCError::Timeout(Timeout { action, id: self.id, target: self.target, timeout })
            }
            CallError::Transport(
                e @ (RequestError::Timeout
                | RequestError::Unreachable(_)
                | RequestError::Shutdown
                | RequestError::Connection(_)
                | RequestError::NoResponse),
            ) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Transport(e) => RPCError::Network(NetworkError::new(&e)),
            CallError::Protocol(e) => RPCError::Network(NetworkError::from_string(e)),
        }
    }

    async fn rpc(
        &self,
        request: RpcRequest,
        action: RPCTypes,
        option: &RPCOption,
    ) -> Result<RpcResponse, RPCError<StrongTypes>> {
        self.rpc_within(request, action, option.hard_ttl()).await
    }

    async fn rpc_within(
        &self,
        request: RpcRequest,
        action: RPCTypes,
        timeout: Duration,
    ) -> Result<RpcResponse, RPCError<StrongTypes>> {
        match call(&self.transport, &self.node, &request, timeout).await {
            Ok(RpcResponse::Refused(reason)) => Err(RPCError::Unreachable(Unreachable::from_string(reason))),
            Ok(response) => Ok(response),
            Err(e) => Err(self.rpc_error(e, action, timeout)),
        }
    }
}

/// The smallest per-peer append bound: after repeated timeouts an append
/// still carries this much (and always at least one entry).
const APPEND_BYTES_MIN: usize = 256 * 1024;

/// A peer's append bound after an append with entries: halved after a
/// failure (a follower slower than [`APPEND_BYTES_PER_SECOND_MIN`] would
/// otherwise time out on every same-sized retry), doubled back after a
/// success, within [`APPEND_BYTES_MIN`]..=[`APPEND_BYTES_MAX`].
fn next_append_bytes_max(current: usize, succeeded: bool) -> usize {
    let next = if succeeded { current.saturating_mul(2) } else { current / 2 };
    next.clamp(APPEND_BYTES_MIN, APPEND_BYTES_MAX)
}

/// An entry's size as [`APPEND_BYTES_MAX`] counts it.
fn entry_bytes(entry: &crate::types::Entry) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(command) => command.payload_bytes(),
        _ => 1024,
    }
}

/// How many leading `entries` fit in `bytes_max` (at least one, if any).
fn entries_within(entries: &[crate::types::Entry], bytes_max: usize) -> usize {
    let mut total = 0usize;
    for (i, entry) in entries.iter().enumerate() {
        total = total.saturating_add(entry_bytes(entry));
        if total > bytes_max && i > 0 {
            return i;
        }
    }
    entries.len()
}

fn unexpected(response: &RpcResponse) -> RPCError<StrongTypes> {
    RPCError::Network(NetworkError::from_string(format!("unexpected response {response:?}")))
}

fn streaming_error(error: RPCError<StrongTypes>) -> StreamingError<StrongTypes> {
    match error {
        RPCError::Timeout(e) => StreamingError::Timeout(e),
        RPCError::Unreachable(e) => StreamingError::Unreachable(e),
        e => StreamingError::Network(NetworkError::new(&e)),
    }
}

impl PeerClient {
    /// Sends the snapshot's chunks in order, one request each (read from
    /// the store one at a time), then asks the follower to install them.
    /// Any failure ends this transfer; openraft starts a new one.
    async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: Snapshot,
        timeout: Duration,
    ) -> Result<SnapshotResponse<StrongTypes>, StreamingError<StrongTypes>> {
        let data = &snapshot.snapshot;
        let started = TRANSFERS_STARTED.fetch_add(1, Ordering::Relaxed);
        let transfer = self.id.rotate_left(32) ^ data.id.rotate_left(16) ^ started;
        for index in 0..data.chunks {
            let chunk = self
                .snapshots
                .read_part(data, index)
                .await
                .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
            let request = RpcRequest::SnapshotChunk { transfer, index, data: chunk };
            match self.rpc_within(request, RPCTypes::InstallSnapshot, timeout).await.map_err(streaming_error)? {
                RpcResponse::SnapshotChunk(Ok(())) => {}
                RpcResponse::SnapshotChunk(Err(reason)) => {
                    return Err(StreamingError::Network(NetworkError::from_string(format!(
                        "chunk {index} refused: {reason}"
                    ))));
                }
                other => {
                    return Err(StreamingError::Network(NetworkError::from_string(format!("unexpected {other:?}"))));
                }
            }
        }
        let install_timeout = timeout + Duration::from_secs(data.bytes / INSTALL_BYTES_PER_SECOND_MIN);
        let request =
            RpcRequest::SnapshotInstall { vote, transfer, meta: snapshot.meta, chunks: data.chunks, bytes: data.bytes };
        match self.rpc_within(request, RPCTypes::InstallSnapshot, install_timeout).await.map_err(streaming_error)? {
            RpcResponse::Snapshot(response) => {
                self.snapshots.count_sent();
                Ok(response)
            }
            other => Err(StreamingError::Network(NetworkError::from_string(format!("unexpected response {other:?}")))),
        }
    }
}

impl RaftNetworkV2<StrongTypes> for PeerClient {
    type SnapshotData = crate::store::SnapshotData;

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<StrongTypes>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<StrongTypes>, RPCError<StrongTypes>> {
        let kept = entries_within(&rpc.entries, self.append_bytes_max);
        let cut = kept < rpc.entries.len();
        rpc.entries.truncate(kept);
        let last_sent = rpc.entries.last().map(|entry| entry.log_id);
        let bytes: u64 = rpc.entries.iter().map(|entry| entry_bytes(entry) as u64).sum();
        let timeout = option.hard_ttl() + Duration::from_millis(bytes * 1000 / APPEND_BYTES_PER_SECOND_MIN);
        let answer = self.rpc_within(RpcRequest::Append(rpc), RPCTypes::AppendEntries, timeout).await;
        if bytes > 0 {
            self.append_bytes_max = next_append_bytes_max(self.append_bytes_max, answer.is_ok());
        }
        match answer? {
            RpcResponse::Append(AppendEntriesResponse::Success) if cut => {
                Ok(AppendEntriesResponse::PartialSuccess(last_sent))
            }
            RpcResponse::Append(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<StrongTypes>,
        option: RPCOption,
    ) -> Result<VoteResponse<StrongTypes>, RPCError<StrongTypes>> {
        match self.rpc(RpcRequest::Vote(rpc), RPCTypes::Vote, &option).await? {
            RpcResponse::Vote(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<StrongTypes>,
        option: RPCOption,
    ) -> Result<VoteResponse<StrongTypes>, RPCError<StrongTypes>> {
        match self.rpc(RpcRequest::PreVote(rpc), RPCTypes::Vote, &option).await? {
            RpcResponse::Vote(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<StrongTypes>, StreamingError<StrongTypes>> {
        // Each chunk has the per-request deadline; the transfer as a whole
        // has none (its length follows the snapshot's size) but ends when
        // openraft cancels it.
        let send = self.send_snapshot(vote, snapshot, option.hard_ttl());
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            response = send => response,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_append_bound_halves_after_failures_down_to_its_floor_and_grows_back_after_successes() {
        let mut cap = APPEND_BYTES_MAX;
        let mut seen = vec![cap];
        for _ in 0..8 {
            cap = next_append_bytes_max(cap, false);
            seen.push(cap);
        }
        let mib = 1024 * 1024;
        assert_eq!(&seen[..7], &[8 * mib, 4 * mib, 2 * mib, mib, mib / 2, mib / 4, mib / 4]);
        assert_eq!(cap, APPEND_BYTES_MIN);
        for _ in 0..10 {
            cap = next_append_bytes_max(cap, true);
        }
        assert_eq!(cap, APPEND_BYTES_MAX);
    }
}
