//! Strong requests arrive from peers over the transport
//! (`docs/design/strong.md`, "RPC mapping (`network`)"): Raft RPCs and the
//! writes, reads and membership changes other nodes forward. The decoder
//! must refuse anything malformed (the node answers `Refused`), never
//! panic; what it accepts must re-encode to bytes that decode and encode to
//! the same bytes again, and must carry the tag the daemon routes by
//! (`is_strong_request`). Decoded requests then drive one state machine the
//! way a follower's does: a snapshot replaces it with the state decoded
//! from the leader's bytes, forwarded writes and appended entries are
//! applied in order; applying must refuse bad commands with an error, never
//! panic.
//!
//! The input is a list of payloads (at most `REQUESTS_MAX`), each a
//! little-endian `u16` length and that many bytes.

#![no_main]

use chorus_strong::is_strong_request;
use chorus_strong::kv::KvStateMachine;
use chorus_strong::kv::HistoryLimits;
use chorus_strong::network::fuzz_api::{RpcRequest, SnapshotDecoder, decode_request, decode_snapshot, encode_request};
use libfuzzer_sys::fuzz_target;
use openraft::EntryPayload;

/// Requests one input carries at most.
const REQUESTS_MAX: usize = 8;

fuzz_target!(|data: &[u8]| {
    let mut state = KvStateMachine::new();
    // Chunks of one snapshot transfer, fed in order as a receiver does.
    let mut transfer: Option<SnapshotDecoder> = None;
    let mut rest = data;
    for _ in 0..REQUESTS_MAX {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else { break };
        let (payload, tail) = tail.split_at(usize::from(u16::from_le_bytes(*len)).min(tail.len()));
        rest = tail;
        let Some(request) = decode_request(payload) else { continue };
        assert!(is_strong_request(payload), "a decoded request carries the strong tag");
        let bytes = encode_request(&request).expect("a decoded request encodes");
        let again = decode_request(&bytes).expect("a node decodes its own encoding");
        assert_eq!(encode_request(&again).expect("encodes"), bytes, "the encoding of a request is stable");
        match &request {
            RpcRequest::LegacySnapshot { data, .. } => {
                if let Ok(installed) = decode_snapshot(data) {
                    state = installed;
                }
            }
            RpcRequest::SnapshotChunk { index, data, .. } => {
                if *index == 0 {
                    transfer = Some(SnapshotDecoder::new(HistoryLimits::default()));
                }
                if let Some(decoder) = transfer.as_mut()
                    && decoder.push(data).is_err()
                {
                    transfer = None;
                }
            }
            RpcRequest::SnapshotInstall { .. } => {
                if let Some(Ok(installed)) = transfer.take().map(SnapshotDecoder::finish) {
                    state = installed;
                }
            }
            RpcRequest::Write(command) => {
                let _ = state.apply(command);
            }
            RpcRequest::Append(append) => {
                for entry in &append.entries {
                    if let EntryPayload::Normal(command) = &entry.payload {
                        let _ = state.apply(command);
                    }
                }
            }
            _ => {}
        }
    }
});
