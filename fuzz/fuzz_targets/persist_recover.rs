//! `Node::recover` rebuilds a node from whatever its store holds
//! (`docs/design/replication.md`, "Durability and restart"). On any small
//! image it must return a node or `RecoverError`, never panic, and a node
//! it returns must keep the restart promises: its next write in every
//! namespace gets a dot that namespace has not seen and that no stored
//! entry's clock reflects, and a timestamp above the stored HLC high-water
//! mark and above every stored timestamp of its own.
//!
//! The input is a list of records (at most `RECORDS_MAX`): a tag byte, a
//! key (length byte, bytes) and a value (little-endian `u16` length,
//! bytes). Tag bits 0–2 pick the space (`meta`, `namespaces`, two entry
//! spaces, `idem`, or one the core does not know); bit 3 seals the value
//! (first byte the version, then the correct checksum of the rest), so
//! records get past their checksums; bit 4 replaces the key by the one the
//! core reads in that space (`hlc`, or namespace `a`/`b` by bit 5).

#![no_main]

use chorus_core::persist::{self, RecoveryImage, fuzz_api};
use chorus_core::{Action, LocalWrite, Node, NodeConfig, NodeId, Op, RequestId, ValueType};
use libfuzzer_sys::fuzz_target;

/// Records one input makes at most: keeps images small and runs fast.
const RECORDS_MAX: usize = 32;
/// Steps of the driver loop at most: one write needs a handful of actions.
const ACTIONS_MAX: usize = 64;
const ME: NodeId = NodeId(1);
const NAMESPACES: [&str; 2] = ["a", "b"];

fn take(bytes: &[u8], len: usize) -> (&[u8], &[u8]) {
    bytes.split_at(len.min(bytes.len()))
}

fn image_from(mut data: &[u8]) -> RecoveryImage {
    let mut image = RecoveryImage::new();
    for _ in 0..RECORDS_MAX {
        let Some((&tag, rest)) = data.split_first() else { break };
        let Some((&key_len, rest)) = rest.split_first() else { break };
        let (key, rest) = take(rest, usize::from(key_len));
        let (len, rest) = take(rest, 2);
        let value_len = match len {
            [lo, hi] => usize::from(u16::from_le_bytes([*lo, *hi])),
            _ => 0,
        };
        let (value, rest) = take(rest, value_len);
        data = rest;
        let namespace = NAMESPACES[usize::from(tag >> 5 & 1)];
        let (space, canonical_key) = match tag & 7 {
            0 => (persist::META_SPACE.to_owned(), persist::HLC_KEY.to_vec()),
            1 => (persist::NAMESPACES_SPACE.to_owned(), namespace.as_bytes().to_vec()),
            2 => (persist::entries_space(NAMESPACES[0]), key.to_vec()),
            3 => (persist::entries_space(NAMESPACES[1]), key.to_vec()),
            4 => (persist::IDEMPOTENCY_SPACE.to_owned(), key.to_vec()),
            _ => ("daemon".to_owned(), key.to_vec()),
        };
        let key = if tag & 0x10 != 0 { canonical_key } else { key.to_vec() };
        let value = if tag & 8 != 0 { fuzz_api::seal(value) } else { value.to_vec() };
        image.entry(space).or_default().insert(key, value);
    }
    image
}

fn op_for(value_type: ValueType) -> Op {
    match value_type {
        ValueType::Lww | ValueType::Mv => Op::Put { value: b"v".to_vec(), context: None },
        ValueType::Counter => Op::Increment { amount: 1 },
        ValueType::Set => Op::Add { member: b"m".to_vec() },
    }
}

fuzz_target!(|data: &[u8]| {
    let image = image_from(data);
    let Ok(mut node) = Node::recover(ME, NodeConfig::default(), 0, &image) else { return };
    let stored_hlc = image
        .get(persist::META_SPACE)
        .and_then(|meta| meta.get(persist::HLC_KEY))
        .and_then(|bytes| persist::decode_hlc(bytes).ok());
    let names: Vec<String> = node.namespaces().map(|ns| ns.name().to_owned()).collect();
    for (i, name) in names.iter().enumerate() {
        let Some(ns) = node.namespace(name) else { continue };
        let seen = ns.seen().clone();
        let own_counter_max = ns.entries().map(|(_, e)| e.clock().get(ME)).max().unwrap_or(0);
        let own_ts_max = ns.entries().map(|(_, e)| e.timestamp_max()).filter(|ts| ts.node == ME).max();
        let write = LocalWrite::new(name.clone(), b"fuzz".to_vec(), op_for(ns.value_type()));
        let request = RequestId(i as u64 + 1);
        node.handle_local_writes(0, vec![(request, write)]);
        let mut receipt = None;
        for _ in 0..ACTIONS_MAX {
            match node.poll_action() {
                Some(Action::Persist { id, .. }) => node.handle_persisted(id),
                Some(Action::WriteDone { request: r, result }) if r == request => receipt = Some(result),
                Some(_) => {}
                None => break,
            }
        }
        let Some(Ok(receipt)) = receipt else { continue };
        assert_eq!(receipt.dot.node, ME);
        assert!(!seen.contains(receipt.dot), "dot {:?} reused: the recovered seen set has it", receipt.dot);
        assert!(receipt.dot.counter > own_counter_max, "dot {:?} reused: a stored entry reflects it", receipt.dot);
        if let Some(hw) = stored_hlc {
            assert!(receipt.ts > hw, "timestamp {:?} not above the stored high-water mark {hw:?}", receipt.ts);
        }
        if let Some(own) = own_ts_max {
            assert!(receipt.ts > own, "timestamp {:?} not above the stored own timestamp {own:?}", receipt.ts);
        }
    }
});
