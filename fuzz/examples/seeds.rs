//! Writes the seed inputs of every fuzz target into `fuzz/corpus/TARGET/`:
//! bytes the real encoders produce for real states (a driven node's
//! messages and records, a reconciliation session, strong RPCs), so each
//! run starts from inputs that reach deep into its decoder instead of
//! first having to find the magic bytes, checksums and enum layouts.
//!
//! ```text
//! cargo +nightly run --manifest-path fuzz/Cargo.toml --example seeds
//! ```
//!
//! Seeds are named `seed-<blake3 prefix>`; running it again rewrites the
//! same files. The campaign minimises each corpus afterwards
//! (`docs/design/fault-injection.md`, "Fuzzing").

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // writes files: it is a tool, not protocol code

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chorus_core::persist::{self, RecoveryImage, fuzz_api};
use chorus_core::wire::{self, WIRE_MAGIC};
use chorus_core::{
    Action, LocalWrite, Member, MemberState, Node, NodeConfig, NodeId, Op, RequestId, ValueType, VersionVector,
};
use chorus_daemon::probe::{Probe, ProbeReply, encode_probe, encode_reply};
use chorus_net::frame::header;
use chorus_reconcile::{ItemIndex, Reconciler};
use chorus_storage::WriteBatch;
use chorus_strong::kv::{
    Compare, CompareOp, CompareTarget, KvCommand, KvError, KvResponse, KvStateMachine, LockMode, TxnOp,
};
use chorus_strong::network::fuzz_api::{RpcRequest, RpcResponse, encode_request, encode_response};
use chorus_strong::types::{CommittedLeaderId, Entry, LogId, SnapshotMeta, StoredMembership, Vote};
use chorus_strong::{PeerNode, Query, QueryResponse, QueryResult, StrongError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::vote::RaftLeaderIdExt;
use openraft::{EntryPayload, Membership};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
}

fn write_seeds(target: &str, seeds: &[Vec<u8>]) {
    let dir = corpus(target);
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    for seed in seeds {
        let name = format!("seed-{}", &blake3::hash(seed).to_hex()[..16]);
        std::fs::write(dir.join(name), seed).expect("write a seed");
    }
    println!("{target}: {} seeds", seeds.len());
}

/// Runs a node's ready actions: every Persist is durable at once. Returns
/// the Persists' batches and the Sends.
fn pump(node: &mut Node) -> (Vec<chorus_core::PersistBatch>, Vec<wire::Message>) {
    let (mut batches, mut sends) = (Vec::new(), Vec::new());
    while let Some(action) = node.poll_action() {
        match action {
            Action::Persist { id, batch } => {
                node.handle_persisted(id);
                batches.push(batch);
            }
            Action::Send { message, .. } => sends.push(message),
            _ => {}
        }
    }
    (batches, sends)
}

fn apply(image: &mut RecoveryImage, batches: &[chorus_core::PersistBatch]) {
    for op in batches.iter().flat_map(|b| &b.ops) {
        let space = image.entry(op.space.clone()).or_default();
        match &op.value {
            Some(v) => space.insert(op.key.clone(), v.clone()),
            None => space.remove(&op.key),
        };
    }
}

/// Two nodes, namespaces of every type, writes with and without request
/// ids, a sync round between them: their messages and node 1's store.
fn replication() -> (Vec<wire::Message>, RecoveryImage) {
    const T0: u64 = 1_000_000;
    let members = [
        Member { id: NodeId(1), tier: 0, state: MemberState::Alive },
        Member { id: NodeId(2), tier: 0, state: MemberState::Alive },
    ];
    let mut a = Node::new(NodeId(1), NodeConfig::default(), 1);
    let mut b = Node::new(NodeId(2), NodeConfig::default(), 2);
    // Signed, so messages and records carry proofs (the test signer: seeds
    // need no real keys).
    a.enable_signing(std::sync::Arc::new(chorus_core::signing::TestSigning::new(NodeId(1))));
    b.enable_signing(std::sync::Arc::new(chorus_core::signing::TestSigning::new(NodeId(2))));
    let (mut messages, mut image) = (Vec::new(), RecoveryImage::new());
    let kinds = [("a", ValueType::Lww), ("b", ValueType::Mv), ("c", ValueType::Counter), ("d", ValueType::Set)];
    for node in [&mut a, &mut b] {
        for (name, ty) in kinds {
            node.create_namespace(name, ty).expect("a valid namespace");
        }
        node.set_members(T0, &members);
    }
    let (batches, sends) = pump(&mut a);
    apply(&mut image, &batches);
    messages.extend(sends);
    pump(&mut b);
    let context = VersionVector::from_entries([(NodeId(1), 1), (NodeId(2), 3)]);
    let writes = vec![
        LocalWrite::new("a", b"k1".to_vec(), Op::Put { value: b"one".to_vec(), context: None }),
        LocalWrite::new("a", b"k2".to_vec(), Op::Delete { context: None }).with_request_id(b"req-1".to_vec()),
        LocalWrite::new("b", b"k1".to_vec(), Op::Put { value: b"mv".to_vec(), context: Some(context.clone()) }),
        LocalWrite::new("c", b"n".to_vec(), Op::Increment { amount: -7 }),
        LocalWrite::new("d", b"s".to_vec(), Op::Add { member: b"m1".to_vec() }),
        LocalWrite::new("d", b"s".to_vec(), Op::Remove { member: b"m0".to_vec(), context: Some(context) }),
    ];
    for (i, w) in writes.into_iter().enumerate() {
        a.handle_local_writes(T0 + i as u64, vec![(RequestId(i as u64), w)]);
        let (batches, sends) = pump(&mut a);
        apply(&mut image, &batches);
        messages.extend(sends);
    }
    b.handle_local_writes(
        T0,
        vec![(RequestId(99), LocalWrite::new("a", b"k3".to_vec(), Op::Put { value: b"b".to_vec(), context: None }))],
    );
    messages.extend(pump(&mut b).1);
    // A sync round: requests, replies and pushes both ways.
    let mut inbox: Vec<(NodeId, wire::Message)> = Vec::new();
    a.start_sync(T0 + 100, NodeId(2));
    inbox.extend(pump(&mut a).1.into_iter().map(|m| (NodeId(2), m)));
    for _ in 0..6 {
        let Some((to, message)) = inbox.pop() else { break };
        messages.push(message.clone());
        let node = if to == NodeId(1) { &mut a } else { &mut b };
        let from = if to == NodeId(1) { NodeId(2) } else { NodeId(1) };
        node.handle_message(T0 + 200, from, message);
        let (batches, sends) = pump(node);
        if to == NodeId(1) {
            apply(&mut image, &batches);
        }
        inbox.extend(sends.into_iter().map(|m| (from, m)));
    }
    messages.extend(inbox.into_iter().map(|(_, m)| m));
    (messages, image)
}

/// The input format of `persist_recover`: tag, key length, key, value
/// length (LE u16), value. Tags without the seal and canonical-key bits.
fn recover_input(image: &RecoveryImage) -> Vec<u8> {
    let mut out = Vec::new();
    for (space, records) in image {
        let tag = match space.as_str() {
            persist::META_SPACE => 0,
            persist::NAMESPACES_SPACE => 1,
            "e.a" => 2,
            "e.b" => 3,
            persist::IDEMPOTENCY_SPACE => 4,
            _ => continue,
        };
        for (key, value) in records {
            let (Ok(key_len), Ok(value_len)) = (u8::try_from(key.len()), u16::try_from(value.len())) else { continue };
            out.push(tag);
            out.push(key_len);
            out.extend_from_slice(key);
            out.extend_from_slice(&value_len.to_le_bytes());
            out.extend_from_slice(value);
        }
    }
    out
}

fn reconcile_messages() -> Vec<Vec<u8>> {
    let items = |range: std::ops::Range<u8>| range.map(|k| (vec![b'k', k], [k; 16]));
    let mine = ItemIndex::from_items(items(0..40)).expect("short keys");
    let theirs = ItemIndex::from_items(items(5..45)).expect("short keys");
    let (mut initiator, first) = Reconciler::initiate(&mine);
    let mut responder = Reconciler::responder();
    let mut out = vec![first.encode()];
    let mut next = Some(first);
    let mut to_responder = true;
    for _ in 0..16 {
        let Some(message) = next.take() else { break };
        let step = if to_responder { responder.handle(&theirs, message) } else { initiator.handle(&mine, message) };
        let Ok(step) = step else { break };
        if let Some(reply) = &step.reply {
            out.push(reply.encode());
        }
        next = step.reply;
        to_responder = !to_responder;
    }
    out
}

fn wal_logs() -> Vec<Vec<u8>> {
    let mut one = WriteBatch::new();
    one.put("e.a", b"k".to_vec(), b"v".to_vec());
    let mut two = WriteBatch::new();
    two.put("meta", b"hlc".to_vec(), vec![2; 20]).delete("e.a", b"k".to_vec());
    let frames: Vec<Vec<u8>> = [&one, &two].iter().map(|b| chorus_storage::wal::encode_frame(b)).collect();
    vec![frames[0].clone(), frames.concat(), frames[1][..frames[1].len() - 3].to_vec()]
}

fn peer(id: u64) -> PeerNode {
    PeerNode { name: format!("node{id}"), addr: format!("127.0.0.{id}:7000").parse().expect("an address") }
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new_committed(term, 1), index)
}

fn strong_commands() -> Vec<KvCommand> {
    vec![
        KvCommand::LeaseGrant { ttl_ms: 5_000, now_ms: 1_000 },
        KvCommand::Put { key: b"ns/a".to_vec(), value: b"1".to_vec(), lease: None },
        KvCommand::Put { key: b"ns/b".to_vec(), value: b"2".to_vec(), lease: Some(1) },
        KvCommand::CompareAndSwap { key: b"ns/a".to_vec(), expected: Some(b"1".to_vec()), value: b"3".to_vec() },
        KvCommand::Txn {
            compares: vec![Compare {
                key: b"ns/a".to_vec(),
                op: CompareOp::Greater,
                target: CompareTarget::Version(0),
            }],
            success: vec![TxnOp::Get { key: b"ns/a".to_vec() }, TxnOp::Delete { key: b"ns/b".to_vec() }],
            failure: vec![TxnOp::Put { key: b"ns/c".to_vec(), value: Vec::new(), lease: None }],
        },
        KvCommand::LockAcquire { name: b"lock".to_vec(), lease: 1, mode: LockMode::Exclusive },
        KvCommand::LeaseKeepAlive { lease: 1, now_ms: 2_000 },
        KvCommand::LockRelease { name: b"lock".to_vec(), lease: 1 },
        KvCommand::RefreshLeases { now_ms: 3_000 },
        KvCommand::ExpireLeases { now_ms: 9_000 },
        KvCommand::Delete { key: b"ns/a".to_vec() },
        KvCommand::LeaseRevoke { lease: 1 },
    ]
}

fn strong_requests() -> Vec<RpcRequest> {
    let vote = Vote::new(3, 1);
    let commands = strong_commands();
    let mut entries: Vec<Entry> = vec![Entry { log_id: log_id(3, 1), payload: EntryPayload::Blank }];
    let membership =
        Membership::new(vec![BTreeSet::from([1, 2, 3])], BTreeMap::from([(1, peer(1)), (2, peer(2)), (3, peer(3))]))
            .expect("a valid membership");
    entries.push(Entry { log_id: log_id(3, 2), payload: EntryPayload::Membership(membership.clone()) });
    for (i, command) in commands.iter().enumerate() {
        entries.push(Entry { log_id: log_id(3, i as u64 + 3), payload: EntryPayload::Normal(command.clone()) });
    }
    let mut state = KvStateMachine::new();
    for command in &commands[..6] {
        let _ = state.apply(command);
    }
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(3, 8)),
        last_membership: StoredMembership::new(Some(log_id(3, 2)), membership),
    };
    // The snapshot's record stream, as one chunk.
    let snapshot: Vec<u8> = chorus_strong::kv::snapshot::encode(&state).flatten().collect();
    let mut requests = vec![
        RpcRequest::Vote(VoteRequest::new(vote, Some(log_id(2, 7)))),
        RpcRequest::PreVote(VoteRequest::new(vote, None)),
        RpcRequest::Append(AppendEntriesRequest {
            vote,
            prev_log_id: None,
            entries,
            leader_commit: Some(log_id(3, 1)),
        }),
        RpcRequest::Append(AppendEntriesRequest {
            vote,
            prev_log_id: Some(log_id(3, 9)),
            entries: Vec::new(),
            leader_commit: None,
        }),
        RpcRequest::SnapshotChunk { transfer: 1, index: 0, data: snapshot.clone() },
        RpcRequest::SnapshotInstall { vote, transfer: 1, meta, chunks: 1, bytes: snapshot.len() as u64 },
        RpcRequest::Read(Query::Get { key: b"ns/a".to_vec() }),
        RpcRequest::Read(Query::Range { start: b"ns/".to_vec(), end: Some(b"ns0".to_vec()), limit: 10 }),
        RpcRequest::Read(Query::Events { from_revision: 1, limit: 100 }),
        RpcRequest::Read(Query::Lock { name: b"lock".to_vec() }),
        RpcRequest::Ping,
        RpcRequest::AddVoter { id: 4, node: peer(4) },
        RpcRequest::RemoveVoter { id: 2 },
    ];
    requests.extend(commands.into_iter().map(RpcRequest::Write));
    requests
}

fn strong_responses() -> Vec<RpcResponse> {
    let vote = Vote::new(3, 1);
    vec![
        RpcResponse::Append(AppendEntriesResponse::Success),
        RpcResponse::Append(AppendEntriesResponse::PartialSuccess(Some(log_id(3, 4)))),
        RpcResponse::Append(AppendEntriesResponse::Conflict),
        RpcResponse::Append(AppendEntriesResponse::HigherVote(Vote::new(4, 2))),
        RpcResponse::Vote(VoteResponse::new(vote, Some(log_id(3, 9)), true)),
        RpcResponse::Snapshot(SnapshotResponse::new(vote)),
        RpcResponse::Write(Ok(KvResponse::Put { revision: 7, prev: None })),
        RpcResponse::Write(Err(StrongError::Rejected(KvError::LeaseNotFound(9)))),
        RpcResponse::Write(Err(StrongError::NotLeader { leader_id: Some(2), leader: Some(peer(2)) })),
        RpcResponse::Read(Ok(QueryResponse { revision: 7, result: QueryResult::Count(3) })),
        RpcResponse::Read(Err(StrongError::NoQuorum { reachable_voters: vec![1], voters: vec![1, 2, 3] })),
        RpcResponse::Pong,
        RpcResponse::Membership(Ok(())),
        RpcResponse::Refused("malformed request".into()),
    ]
}

fn length_prefixed(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for payload in payloads {
        let Ok(len) = u16::try_from(payload.len()) else { continue };
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(payload);
    }
    out
}

fn main() {
    let (messages, image) = replication();
    let frames: Vec<Vec<u8>> = messages.iter().map(wire::encode).collect();
    write_seeds("wire_decode_message", &frames);
    // The body of a frame: after magic, version and length, before the checksum.
    let body_start = WIRE_MAGIC.len() + 1 + 4;
    let bodies: Vec<Vec<u8>> = frames.iter().map(|f| f[body_start..f.len() - 8].to_vec()).collect();
    write_seeds("wire_decode_body", &bodies);

    let mut records = Vec::new();
    let mut signing = Vec::new();
    for (space, keys) in &image {
        // Signed entries carry their proofs (record version 3).
        if let Some(namespace) = space.strip_prefix("e.") {
            for (key, bytes) in keys {
                let Ok(persist::EntryRecord { entry, proof: Some(proof), .. }) = persist::decode_entry(bytes) else {
                    continue;
                };
                signing.push([vec![0], fuzz_api::encode_proof(&proof)].concat());
                let tuple = postcard::to_stdvec(&(namespace, key, &entry, &proof)).expect("encodes");
                signing.push([vec![3], tuple.clone()].concat());
                // Bit 3: re-signed by the target (reaches the state checks).
                signing.push([vec![11], tuple].concat());
            }
        }
        if space == persist::META_SPACE {
            for (key, bytes) in keys {
                if key.starts_with(persist::HEADS_PREFIX.as_bytes()) {
                    signing.push([vec![1], bytes.clone()].concat());
                } else if key == persist::BLOCK_HEAD_KEY {
                    signing.push([vec![2], bytes.clone()].concat());
                }
            }
        }
        let mode = match space.as_str() {
            persist::NAMESPACES_SPACE => 1,
            persist::META_SPACE => 2,
            persist::IDEMPOTENCY_SPACE => 3,
            _ => 0,
        };
        records.extend(keys.values().map(|v| [vec![mode], v.clone()].concat()));
    }
    write_seeds("persist_record", &records);
    write_seeds("signing_proof", &signing);
    write_seeds("persist_recover", &[recover_input(&image), Vec::new()]);

    write_seeds("reconcile_decode_message", &reconcile_messages());
    write_seeds("wal_decode", &wal_logs());
    write_seeds("storage_model", &[vec![0; 16], (0u8..64).collect()]);

    let probes = vec![
        encode_probe(&Probe { tier: 1, t1_us: 1_700_000_000_000_000 }),
        encode_reply(&ProbeReply { tier: 2, t1_us: 1, t2_us: 2, t3_us: 3 }),
    ];
    write_seeds("probe_decode", &probes);

    let contexts = [
        VersionVector::new(),
        VersionVector::from_entries([(NodeId(1), 3)]),
        VersionVector::from_entries([(NodeId::from_name("node2"), 1 << 40), (NodeId(u64::MAX), 1)]),
    ];
    let mut tokens: Vec<Vec<u8>> =
        contexts.iter().map(|vv| [b"\0".to_vec(), chorus_daemon::token::encode(vv).into_bytes()].concat()).collect();
    // The odd mode: the bytes that the target base64-encodes.
    tokens.extend(contexts.iter().filter_map(|vv| {
        let text = chorus_daemon::token::encode(vv);
        URL_SAFE_NO_PAD.decode(text).ok().map(|raw| [vec![1], raw].concat())
    }));
    write_seeds("token_decode", &tokens);

    let requests: Vec<Vec<u8>> =
        strong_requests().iter().map(|r| encode_request(r).expect("a request encodes").to_vec()).collect();
    let mut inputs: Vec<Vec<u8>> = requests.iter().map(|r| length_prefixed(std::slice::from_ref(r))).collect();
    inputs.push(length_prefixed(&requests));
    write_seeds("strong_request", &inputs);
    let responses: Vec<Vec<u8>> = strong_responses().iter().map(|r| encode_response(r).to_vec()).collect();
    write_seeds("strong_response", &responses);

    let frame = |payload: &[u8]| [header(payload.len()).to_vec(), payload.to_vec()].concat();
    let mut stream = vec![16];
    stream.extend(frame(b"hello"));
    stream.extend(frame(&[]));
    stream.extend(frame(&[7; 40]));
    let mut too_large = vec![2];
    too_large.extend(frame(&[1; 9]));
    write_seeds("frame_split", &[stream, too_large, vec![255, 0, 0]]);
}
