//! The entry point of strong requests from peers: Raft RPCs (append, vote,
//! snapshot) and the writes, reads and membership changes other nodes forward
//! to this one, decoded, run and answered as bytes (`docs/design/strong.md`,
//! section "RPC mapping (`network`)").

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus_net::Incoming;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::StrongNode;
use crate::error::StrongError;
use crate::network::{self, RpcRequest, RpcResponse};

impl StrongNode {
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
}
