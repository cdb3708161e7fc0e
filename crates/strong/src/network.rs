//! Raft RPCs and client forwarding over the chorus QUIC transport.
//!
//! Every strong-namespace request is one `Transport::request` (a QUIC
//! bidirectional stream, mutual TLS, with a deadline) whose payload starts
//! with [`STRONG_RPC_TAG`] followed by a postcard-encoded [`RpcRequest`];
//! the answer is a postcard-encoded [`RpcResponse`]. The tag lets a daemon
//! that multiplexes several protocols over one transport route requests
//! (see [`is_strong_request`]).

use std::future::Future;
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
use crate::types::{PeerNode, Snapshot, SnapshotMeta, StrongTypes, Vote};

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
    Snapshot {
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

    /// The state a snapshot install loads from a leader's bytes, decoded as
    /// the state machine's `install_snapshot` decodes them.
    pub fn decode_snapshot(data: &[u8]) -> std::io::Result<crate::kv::KvStateMachine> {
        crate::store::decode(data)
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
}

impl RaftNetworkFactory<StrongTypes> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> Self::Network {
        PeerClient { transport: self.transport.clone(), id: self.id, target, node: node.clone() }
    }
}

/// Sends Raft RPCs to one peer.
pub struct PeerClient {
    transport: Transport,
    id: u64,
    target: u64,
    node: PeerNode,
}

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
        let timeout = option.hard_ttl();
        match call(&self.transport, &self.node, &request, timeout).await {
            Ok(RpcResponse::Refused(reason)) => Err(RPCError::Unreachable(Unreachable::from_string(reason))),
            Ok(response) => Ok(response),
            Err(e) => Err(self.rpc_error(e, action, timeout)),
        }
    }
}

fn unexpected(response: &RpcResponse) -> RPCError<StrongTypes> {
    RPCError::Network(NetworkError::from_string(format!("unexpected response {response:?}")))
}

impl RaftNetworkV2<StrongTypes> for PeerClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<StrongTypes>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<StrongTypes>, RPCError<StrongTypes>> {
        match self.rpc(RpcRequest::Append(rpc), RPCTypes::AppendEntries, &option).await? {
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
        let request = RpcRequest::Snapshot { vote, meta: snapshot.meta, data: snapshot.snapshot };
        let send = self.rpc(request, RPCTypes::InstallSnapshot, &option);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            response = send => match response {
                Ok(RpcResponse::Snapshot(response)) => Ok(response),
                Ok(other) => Err(StreamingError::Network(NetworkError::from_string(format!("unexpected response {other:?}")))),
                Err(RPCError::Timeout(e)) => Err(StreamingError::Timeout(e)),
                Err(RPCError::Unreachable(e)) => Err(StreamingError::Unreachable(e)),
                Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
            },
        }
    }
}
