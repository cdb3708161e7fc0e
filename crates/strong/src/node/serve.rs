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
use crate::node::SNAPSHOT_CHUNK_BYTES_MAX;
use crate::store::SnapshotData;
use crate::types::{Snapshot, SnapshotMeta, Vote};

/// A snapshot transfer being received from a leader: its chunks go to the
/// store under a fresh snapshot id as they arrive.
pub(crate) struct Receiving {
    transfer: u64,
    id: u64,
    next_index: u32,
    bytes: u64,
}

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
            RpcRequest::LegacySnapshot { .. } => {
                RpcResponse::Refused("whole-snapshot transfers are not accepted; upgrade the sender".into())
            }
            RpcRequest::SnapshotChunk { transfer, index, data } => {
                RpcResponse::SnapshotChunk(self.receive_chunk(transfer, index, data).await)
            }
            RpcRequest::SnapshotInstall { vote, transfer, meta, chunks, bytes } => {
                self.install_received(vote, transfer, meta, chunks, bytes).await
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

    /// Stores one chunk of a snapshot a leader is sending. Chunks come in
    /// order; index 0 of a new transfer replaces the one being received
    /// (its leader gave up on it), so at most one transfer is staged.
    async fn receive_chunk(&self, transfer: u64, index: u32, data: Vec<u8>) -> Result<(), String> {
        if data.is_empty() || data.len() > SNAPSHOT_CHUNK_BYTES_MAX {
            return Err(format!("chunk of {} bytes; chunks have 1 to {SNAPSHOT_CHUNK_BYTES_MAX}", data.len()));
        }
        let snapshots = &self.inner.snapshots;
        let mut receiving = self.inner.receiving.lock().await;
        if receiving.as_ref().is_none_or(|r| r.transfer != transfer) {
            if index != 0 {
                return Err(format!("chunk {index} of a transfer not being received; start again at 0"));
            }
            if let Some(old) = receiving.take() {
                snapshots.delete_parts(old.id).await.map_err(|e| e.to_string())?;
            }
            *receiving = Some(Receiving { transfer, id: snapshots.allocate_id(), next_index: 0, bytes: 0 });
        }
        let Some(current) = receiving.as_mut() else { return Err("no transfer".into()) };
        if index < current.next_index {
            // A retry of a chunk already stored (its answer was lost).
            return Ok(());
        }
        if index > current.next_index {
            return Err(format!("chunk {index} out of order; expected {}", current.next_index));
        }
        let len = data.len() as u64;
        snapshots.write_part(current.id, index, data).await.map_err(|e| e.to_string())?;
        current.next_index += 1;
        current.bytes += len;
        snapshots.count_received_chunk();
        Ok(())
    }

    /// Installs a completely received snapshot. It is decoded (and so
    /// checked) first: a damaged transfer is refused to the leader, which
    /// sends it again, instead of failing inside openraft, where a failed
    /// install stops the group. The receiving lock is held throughout, so a
    /// new transfer cannot delete these chunks while they are installed.
    async fn install_received(
        &self,
        vote: Vote,
        transfer: u64,
        meta: SnapshotMeta,
        chunks: u32,
        bytes: u64,
    ) -> RpcResponse {
        let snapshots = &self.inner.snapshots;
        let mut receiving = self.inner.receiving.lock().await;
        let Some(received) = receiving.take_if(|r| r.transfer == transfer) else {
            return RpcResponse::Refused(format!("snapshot transfer {transfer} is not being received"));
        };
        if received.next_index != chunks || received.bytes != bytes {
            let _ = snapshots.delete_parts(received.id).await;
            return RpcResponse::Refused(format!(
                "received {} chunks of {} bytes; the leader sent {chunks} of {bytes}",
                received.next_index, received.bytes
            ));
        }
        let data = SnapshotData { id: received.id, chunks, bytes };
        if let Err(e) = snapshots.prepare(&data).await {
            tracing::warn!(error = %e, "a received snapshot is damaged; refused");
            let _ = snapshots.delete_parts(received.id).await;
            return RpcResponse::Refused(format!("received snapshot refused: {e}"));
        }
        let result = self.inner.raft.install_full_snapshot(vote, Snapshot { meta, snapshot: data }).await;
        snapshots.discard_prepared(received.id);
        // openraft keeps a snapshot older than what this node has, or from a
        // stale leader, out: its chunks are not needed.
        if self.inner.sm_store.current_snapshot_id() != Some(received.id) {
            let _ = snapshots.delete_parts(received.id).await;
        }
        drop(receiving);
        match result {
            Ok(response) => RpcResponse::Snapshot(response),
            Err(e) => RpcResponse::Refused(e.to_string()),
        }
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
