//! The exact actions a [`Node`] emits for each input: drive the sans-IO state
//! machine by hand and assert the `Persist`/`Send` sequence it asks the driver
//! to execute (`docs/ARCHITECTURE.md`, "Testing layers", layer 1; the engine
//! tests this style follows are in `docs/design/replication.md`, "References").

use chorus_core::crdt::OpError;
use chorus_core::persist::{self, EntryRecord, NamespaceRecord};
use chorus_core::wire::{
    self, Message, NamespaceDelta, NamespaceSummary, Push, SyncPush, SyncReply, SyncRequest, WireSeen,
};
use chorus_core::{
    Action, Dot, Entry, LocalWrite, Member, MemberState, Node, NodeConfig, NodeId, Op, PersistBatch, ReadValue,
    RecoveryImage, Timestamp, ValueType, WriteError, WriteReceipt, limits,
};
use std::collections::BTreeSet;

mod common;
use common::Driven;

const NS: &str = "ns";
const T0: u64 = 1_000_000;

fn id(n: u64) -> NodeId {
    NodeId(n)
}

fn member(n: u64, tier: u8) -> Member {
    Member { id: id(n), tier, state: MemberState::Alive }
}

/// A node with namespace `NS` of type `ty`, knowing `peers` (all tier 0),
/// with its start-up actions drained.
fn node_with(me: u64, config: NodeConfig, ty: ValueType, peers: &[u64]) -> Driven {
    let mut node = Driven::from(Node::new(id(me), config, me));
    node.create_namespace(NS, ty).expect("valid name");
    let mut ms: Vec<Member> = peers.iter().map(|&p| member(p, 0)).collect();
    ms.push(member(me, 0));
    node.set_members(T0, &ms);
    drain(&mut node);
    node
}

fn drain(node: &mut Driven) -> Vec<Action> {
    node.drain()
}

fn put(key: &[u8], value: &[u8]) -> LocalWrite {
    LocalWrite::new(NS, key.to_vec(), Op::Put { value: value.to_vec(), context: None })
}

fn write(node: &mut Driven, now: u64, w: LocalWrite) -> WriteReceipt {
    let mut r = node.handle_local_writes(now, vec![w]);
    assert_eq!(r.len(), 1);
    r.pop().expect("one result").expect("write accepted")
}

fn persists(actions: &[Action]) -> Vec<&PersistBatch> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Persist { batch, .. } => Some(batch),
            _ => None,
        })
        .collect()
}

fn sends(actions: &[Action]) -> Vec<(NodeId, &Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, message } => Some((*to, message)),
            _ => None,
        })
        .collect()
}

fn the_push(actions: &[Action]) -> Push {
    match sends(actions).first() {
        Some((_, Message::Push(p))) => p.clone(),
        other => panic!("expected a push, got {other:?}"),
    }
}

/// Every message a node sends must survive the wire: encode and decode it.
fn over_the_wire(m: &Message) -> Message {
    wire::decode(&wire::encode(m), limits::VALUE_BYTES_DEFAULT).expect("a node only sends valid messages")
}

/// Deliver every `Send` addressed to `to` among `actions`, returning the
/// actions `to` emitted in response.
fn deliver(actions: &[Action], from: NodeId, to: &mut Driven, now: u64) -> Vec<Action> {
    let mut out = Vec::new();
    for (dest, m) in sends(actions) {
        if dest == to.id() {
            to.handle_message(now, from, over_the_wire(m));
            out.extend(drain(to));
        }
    }
    out
}

fn apply_to_image(image: &mut RecoveryImage, actions: &[Action]) {
    for batch in persists(actions) {
        for op in &batch.ops {
            let space = image.entry(op.space.clone()).or_default();
            match &op.value {
                Some(v) => {
                    space.insert(op.key.clone(), v.clone());
                }
                None => {
                    space.remove(&op.key);
                }
            }
        }
    }
}

fn digest(node: &Node, ns: &str) -> [u8; 32] {
    node.namespace(ns).expect("namespace exists").live_digest()
}

#[test]
fn a_local_write_persists_entry_namespace_and_clock_then_pushes_to_fanout_distinct_peers_at_hop_zero() {
    let config = NodeConfig { fanout: 2, ..NodeConfig::default() };
    let mut node = node_with(1, config, ValueType::Lww, &[2, 3, 4]);
    let receipt = write(&mut node, T0 + 5, put(b"k", b"v"));
    let actions = drain(&mut node);
    assert_eq!(actions.len(), 3, "one persist and two sends: {actions:?}");

    let Action::Persist { batch, .. } = &actions[0] else { panic!("the persist comes first: {actions:?}") };
    let entry = node.namespace(NS).unwrap().get(b"k").unwrap().clone();
    let entries_space = persist::entries_space(NS);
    let spaces: Vec<(&str, &[u8])> = batch.ops.iter().map(|o| (o.space.as_str(), o.key.as_slice())).collect();
    assert_eq!(spaces.first(), Some(&(entries_space.as_str(), &b"k"[..])), "{spaces:?}");
    assert_eq!(spaces.last(), Some(&(persist::META_SPACE, persist::HLC_KEY)), "{spaces:?}");
    let entry_rec: EntryRecord = persist::decode_entry(batch.ops[0].value.as_ref().unwrap()).unwrap();
    assert_eq!(entry_rec.entry, entry);
    // The namespace record is optional here (recovery rebuilds the seen set
    // from the entries' clocks), but if written it must be current.
    for op in batch.ops.iter().filter(|o| o.space == persist::NAMESPACES_SPACE) {
        assert_eq!(op.key, NS.as_bytes());
        let ns_rec: NamespaceRecord = persist::decode_namespace(op.value.as_ref().unwrap()).unwrap();
        assert_eq!(ns_rec.value_type, ValueType::Lww);
        assert_eq!(ns_rec.seen, WireSeen::from(node.namespace(NS).unwrap().seen()));
    }
    assert_eq!(batch.ops.len(), spaces.len());
    let hlc_bytes = batch.ops.last().unwrap().value.as_ref().unwrap();
    let hlc: Timestamp = persist::decode_hlc(hlc_bytes).unwrap();
    assert_eq!(hlc, receipt.ts, "the persisted high-water mark covers the write");

    let mut targets = BTreeSet::new();
    for action in &actions[1..] {
        let Action::Send { to, message: Message::Push(p) } = action else { panic!("expected a push: {action:?}") };
        assert!([id(2), id(3), id(4)].contains(to));
        assert!(targets.insert(*to), "targets are distinct");
        assert_eq!(p.hops, 0);
        assert_eq!(p.items.len(), 1);
        let item = &p.items[0];
        assert_eq!((item.namespace.as_str(), item.key.as_slice()), (NS, &b"k"[..]));
        assert_eq!((item.dot, item.ts, item.value_type), (receipt.dot, receipt.ts, ValueType::Lww));
        assert_eq!(item.entry, entry);
    }
    assert_eq!(receipt.dot, Dot { node: id(1), counter: 1 });
    assert_eq!(node.stats().local_writes, 1);
}

#[test]
fn the_default_fanout_is_ceil_log2_of_the_cluster_size() {
    // Three peers: ceil(log2(3 + 1)) = 2.
    let mut node = node_with(1, NodeConfig::default(), ValueType::Lww, &[2, 3, 4]);
    write(&mut node, T0, put(b"k", b"v"));
    let actions = drain(&mut node);
    let targets: BTreeSet<NodeId> = sends(&actions).into_iter().map(|(to, _)| to).collect();
    assert_eq!(targets.len(), 2);
}

#[test]
fn a_duplicate_push_is_neither_persisted_nor_forwarded() {
    let mut a = node_with(1, NodeConfig::default(), ValueType::Lww, &[2, 3, 4]);
    let mut b = node_with(2, NodeConfig::default(), ValueType::Lww, &[1, 3, 4]);
    write(&mut a, T0, put(b"k", b"v"));
    let mut push = the_push(&drain(&mut a));
    // As if the origin had sent it to b alone: b forwards to 3 or 4.
    push.covered = vec![id(2)];

    b.handle_message(T0, id(1), Message::Push(push.clone()));
    let first = drain(&mut b);
    assert_eq!(persists(&first).len(), 1, "the first copy is persisted");
    let forwarded = sends(&first);
    assert!(!forwarded.is_empty(), "the first copy is forwarded");
    for (to, m) in forwarded {
        assert!(to != id(1) && to != id(2), "never back to the sender or origin");
        assert!(matches!(m, Message::Push(p) if p.hops == 1));
    }

    b.handle_message(T0, id(3), Message::Push(push));
    assert_eq!(drain(&mut b), vec![], "a duplicate emits nothing");
    assert_eq!(b.stats().push_duplicates, 1);
    assert_eq!(b.get(NS, b"k").unwrap().value, ReadValue::Lww(Some(b"v".to_vec())));
}

#[test]
fn a_push_names_its_targets_and_relays_name_theirs() {
    // Five nodes: the origin's fanout is ceil(log2(5)) = 3 of its 4 peers.
    let mut a = node_with(1, NodeConfig::default(), ValueType::Lww, &[2, 3, 4, 5]);
    write(&mut a, T0, put(b"k", b"v"));
    let actions = drain(&mut a);
    let targets: BTreeSet<NodeId> = sends(&actions).into_iter().map(|(to, _)| to).collect();
    assert_eq!(targets.len(), 3);
    let push = the_push(&actions);
    assert_eq!(push.covered.iter().copied().collect::<BTreeSet<_>>(), targets, "the push names its targets");

    // One node is left uncovered, so a target forwards as before (covered
    // nodes stay candidates: that redundancy carries pushes past loss) and
    // adds its own targets to the list.
    let first = *targets.iter().next().unwrap();
    let mut b = node_with(first.0, NodeConfig::default(), ValueType::Lww, &[1, 2, 3, 4, 5]);
    b.handle_message(T0, id(1), Message::Push(push));
    let forwarded = drain(&mut b);
    let sent = sends(&forwarded);
    assert!(!sent.is_empty(), "forwarded");
    let mut want = targets.clone();
    for (to, m) in &sent {
        assert!(*to != id(1) && *to != first);
        want.insert(*to);
        assert!(matches!(m, Message::Push(p) if p.hops == 1));
    }
    for (_, m) in &sent {
        let Message::Push(p) = m else { unreachable!() };
        assert_eq!(p.covered.iter().copied().collect::<BTreeSet<_>>(), want);
    }
    assert_eq!(b.stats().push_items_forwarded, 1);
}

#[test]
fn a_push_that_reached_every_live_peer_is_not_forwarded() {
    // Three nodes: fanout ceil(log2(3)) = 2, so the origin reaches both
    // peers itself and forwarding would only send duplicates.
    let mut a = node_with(1, NodeConfig::default(), ValueType::Lww, &[2, 3]);
    write(&mut a, T0, put(b"k", b"v"));
    let actions = drain(&mut a);
    assert_eq!(sends(&actions).len(), 2);
    let push = the_push(&actions);
    let mut b = node_with(2, NodeConfig::default(), ValueType::Lww, &[1, 3]);
    b.handle_message(T0, id(1), Message::Push(push.clone()));
    let got = drain(&mut b);
    assert_eq!(persists(&got).len(), 1, "applied and persisted");
    assert_eq!(sends(&got), vec![], "not forwarded");
    assert_eq!(b.stats().push_items_forwarded, 0);

    // The same push without its covered list (as a relay that lost track
    // would send it) is forwarded to the third node.
    let mut c = node_with(2, NodeConfig::default(), ValueType::Lww, &[1, 3]);
    c.handle_message(T0, id(1), Message::Push(Push { covered: Vec::new(), ..push }));
    let got = drain(&mut c);
    let sent = sends(&got);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, id(3));
}

#[test]
fn a_push_at_the_last_hop_is_applied_but_not_forwarded() {
    let config = NodeConfig { hop_limit: 4, ..NodeConfig::default() };
    let mut a = node_with(1, config.clone(), ValueType::Lww, &[2, 3, 4, 5]);
    write(&mut a, T0, put(b"k", b"v"));
    let mut push = the_push(&drain(&mut a));

    let mut b = node_with(2, config.clone(), ValueType::Lww, &[1, 3, 4, 5]);
    push.hops = 2;
    push.covered.clear();
    b.handle_message(T0, id(3), Message::Push(push.clone()));
    let actions = drain(&mut b);
    assert!(!sends(&actions).is_empty(), "below the last hop it is forwarded");
    assert!(sends(&actions).iter().all(|(_, m)| matches!(m, Message::Push(p) if p.hops == 3)));

    let mut c = node_with(3, config, ValueType::Lww, &[1, 2, 4, 5]);
    push.hops = 3;
    c.handle_message(T0, id(2), Message::Push(push));
    let actions = drain(&mut c);
    assert_eq!(persists(&actions).len(), 1, "applied and persisted");
    assert_eq!(sends(&actions), vec![], "not forwarded");
    assert_eq!(c.get(NS, b"k").unwrap().value, ReadValue::Lww(Some(b"v".to_vec())));
}

#[test]
fn a_sync_request_with_an_empty_seen_set_is_answered_with_every_entry_and_complete() {
    let mut a = node_with(1, NodeConfig::default(), ValueType::Lww, &[2]);
    for i in 0..5u8 {
        write(&mut a, T0 + u64::from(i), put(&[b'k', i], &[i]));
    }
    write(&mut a, T0 + 9, LocalWrite::new(NS, b"gone".to_vec(), Op::Delete { context: None }));
    drain(&mut a);

    for summaries in [
        vec![],
        vec![NamespaceSummary {
            fingerprint: Default::default(),
            namespace: NS.into(),
            value_type: ValueType::Lww,
            seen: WireSeen { contiguous: vec![], exceptions: vec![] },
        }],
    ] {
        a.handle_message(T0 + 10, id(2), Message::SyncRequest(SyncRequest { summaries }));
        let actions = drain(&mut a);
        assert_eq!(actions.len(), 1, "{actions:?}");
        let Action::Send { to, message: Message::SyncReply(SyncReply { deltas, .. }) } = &actions[0] else {
            panic!("expected a sync reply: {actions:?}")
        };
        assert_eq!(*to, id(2));
        assert_eq!(deltas.len(), 1);
        let d = &deltas[0];
        assert_eq!((d.namespace.as_str(), d.value_type, d.complete), (NS, ValueType::Lww, true));
        let ns = a.namespace(NS).unwrap();
        let expected: Vec<(Vec<u8>, Entry)> = ns.entries().map(|(k, e)| (k.clone(), e.clone())).collect();
        let mut got = d.entries.clone();
        got.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(got, expected, "every entry, tombstones included");
        assert_eq!(d.seen, WireSeen::from(ns.seen()));
    }
}

/// Both nodes write to a shared namespace (concurrently to one key) and to
/// a namespace of their own; pushes are lost. One request/reply/push round
/// makes them equal.
#[test]
fn one_three_message_sync_makes_two_nodes_equal() {
    for ty in [ValueType::Lww, ValueType::Mv, ValueType::Counter, ValueType::Set] {
        let mut a = node_with(1, NodeConfig::default(), ty, &[2]);
        let mut b = node_with(2, NodeConfig::default(), ty, &[1]);
        let op = |i: u8| match ty {
            ValueType::Lww | ValueType::Mv => Op::Put { value: vec![i], context: None },
            ValueType::Counter => Op::Increment { amount: i64::from(i) - 3 },
            ValueType::Set => Op::Add { member: vec![i % 3] },
        };
        for i in 0..6u8 {
            let key = if i % 2 == 0 { b"shared".to_vec() } else { vec![b'a', i] };
            a.handle_local_writes(T0 + u64::from(i), vec![LocalWrite::new(NS, key, op(i))]);
            let key = if i % 3 == 0 { b"shared".to_vec() } else { vec![b'b', i] };
            b.handle_local_writes(T0 + u64::from(i), vec![LocalWrite::new(NS, key, op(i + 7))]);
        }
        a.create_namespace("only-a", ty).unwrap();
        a.handle_local_writes(T0 + 20, vec![LocalWrite::new("only-a", b"x".to_vec(), op(1))]);
        b.create_namespace("only-b", ty).unwrap();
        b.handle_local_writes(T0 + 20, vec![LocalWrite::new("only-b", b"y".to_vec(), op(2))]);
        drain(&mut a);
        drain(&mut b);
        assert_ne!(digest(&a, NS), digest(&b, NS));

        a.start_sync(T0 + 100, id(2));
        let request = drain(&mut a);
        assert!(matches!(sends(&request)[..], [(to, Message::SyncRequest(_))] if to == id(2)));
        let reply = deliver(&request, id(1), &mut b, T0 + 101);
        assert!(matches!(sends(&reply)[..], [(to, Message::SyncReply(_))] if to == id(1)), "{reply:?}");
        assert_eq!(persists(&reply).len(), 0, "answering a request writes nothing");
        let push = deliver(&reply, id(2), &mut a, T0 + 102);
        assert_eq!(persists(&push).len(), 1);
        assert!(matches!(sends(&push)[..], [(to, Message::SyncPush(_))] if to == id(2)), "{push:?}");
        let end = deliver(&push, id(1), &mut b, T0 + 103);
        assert_eq!(persists(&end).len(), 1);
        assert_eq!(sends(&end), vec![], "the exchange ends after three messages");

        for ns in [NS, "only-a", "only-b"] {
            assert_eq!(digest(&a, ns), digest(&b, ns), "{ty:?} namespace {ns} converged");
            assert_eq!(a.namespace(ns).unwrap().seen(), b.namespace(ns).unwrap().seen());
            let entries =
                |n: &Node| n.namespace(ns).unwrap().entries().map(|(k, e)| (k.clone(), e.clone())).collect::<Vec<_>>();
            assert_eq!(entries(&a), entries(&b), "{ty:?} namespace {ns}: equal states, clocks included");
        }
        assert_eq!(a.get(NS, b"shared"), b.get(NS, b"shared"));
    }
}

#[test]
fn recovery_from_the_persisted_batches_restores_state_and_never_reuses_a_dot_or_timestamp() {
    let config = NodeConfig::default();
    let mut a = Driven::from(Node::new(id(1), config.clone(), 1));
    let mut b = node_with(2, config.clone(), ValueType::Mv, &[1]);
    let mut image = RecoveryImage::new();
    a.create_namespace(NS, ValueType::Mv).unwrap();
    a.set_members(T0, &[member(1, 0), member(2, 0)]);
    apply_to_image(&mut image, &drain(&mut a));

    let mut issued: Vec<WriteReceipt> = Vec::new();
    for i in 0..4u8 {
        issued.push(write(&mut a, T0 + u64::from(i), put(&[b'k', i % 2], &[i])));
        apply_to_image(&mut image, &drain(&mut a));
    }
    // A remote write from a clock 400 ms ahead (inside the max offset).
    write(&mut b, T0 + 400_000, put(b"k\x00", b"remote"));
    let from_b = drain(&mut b);
    apply_to_image(&mut image, &deliver(&from_b, id(2), &mut a, T0 + 10));
    let remote_ts = b.hlc_high_water();
    issued.push(write(&mut a, T0 + 11, put(b"k\x01", b"after")));
    apply_to_image(&mut image, &drain(&mut a));
    let dot_max = issued.iter().map(|r| r.dot.counter).max().unwrap();
    let ts_max = issued.iter().map(|r| r.ts).max().unwrap().max(remote_ts);

    let mut r = Driven::from(Node::recover(id(1), config, 99, &image).expect("the image is valid"));
    assert_eq!(digest(&r, NS), digest(&a, NS));
    assert_eq!(r.namespace(NS).unwrap().seen(), a.namespace(NS).unwrap().seen());
    assert!(r.hlc_high_water() >= ts_max);
    // Restarted with the physical clock set back to zero.
    let next = write(&mut r, 0, put(b"k\x02", b"next"));
    assert!(next.dot.counter > dot_max, "dot {} reused (max {dot_max})", next.dot);
    assert!(next.ts > ts_max, "timestamp {} not above {ts_max}", next.ts);
}

#[test]
fn a_message_from_a_member_two_tiers_away_is_rejected_and_counted() {
    // Node 1 (tier 0) writes; the same push claimed to come from node 9
    // (tier 2) must be refused.
    let mut a = node_with(1, NodeConfig::default(), ValueType::Lww, &[2]);
    write(&mut a, T0, put(b"far", b"x"));
    let far_push = the_push(&drain(&mut a)).items;

    let mut b = Driven::from(Node::new(id(2), NodeConfig::default(), 2));
    b.create_namespace(NS, ValueType::Lww).unwrap();
    b.set_members(T0, &[member(2, 0), member(9, 2), member(1, 1)]);
    drain(&mut b);
    b.handle_message(T0, id(9), Message::Push(Push { hops: 0, items: far_push, covered: Vec::new() }));
    assert_eq!(drain(&mut b), vec![]);
    b.handle_message(T0, id(9), Message::SyncRequest(SyncRequest { summaries: vec![] }));
    assert_eq!(drain(&mut b), vec![], "no reply to a node two tiers away");
    assert_eq!(b.stats().rejected_tier, 2);
    assert_eq!(b.get(NS, b"far"), None);

    b.handle_message(T0, id(1), Message::SyncRequest(SyncRequest { summaries: vec![] }));
    assert_eq!(sends(&drain(&mut b)).len(), 1, "a neighbouring tier is answered");
    assert_eq!(b.stats().rejected_tier, 2);
}

#[test]
fn an_op_of_the_wrong_type_is_refused_with_a_write_error_and_no_actions() {
    let mut a = node_with(1, NodeConfig::default(), ValueType::Lww, &[2]);
    let r = a.handle_local_writes(T0, vec![LocalWrite::new(NS, b"k".to_vec(), Op::Increment { amount: 1 })]);
    assert_eq!(r, vec![Err(WriteError::Op(OpError::WrongType { op: "increment", ty: "lww" }))]);
    assert_eq!(drain(&mut a), vec![]);
    assert_eq!(a.get(NS, b"k"), None);
}

#[test]
fn a_key_over_4096_bytes_is_refused_and_one_of_4096_is_accepted() {
    let mut a = node_with(1, NodeConfig::default(), ValueType::Lww, &[2]);
    let r = a.handle_local_writes(T0, vec![put(&[7; 4097], b"v")]);
    assert_eq!(r, vec![Err(WriteError::KeyTooLarge { len: 4097, max: 4096 })]);
    assert_eq!(drain(&mut a), vec![]);
    let r = a.handle_local_writes(T0, vec![put(&[7; 4096], b"v")]);
    assert!(r[0].is_ok());
}

#[test]
fn a_push_from_a_clock_beyond_the_max_offset_is_dropped_and_counted() {
    let config = NodeConfig { offset_max_us: 1_000, ..NodeConfig::default() };
    let mut a = node_with(1, config.clone(), ValueType::Lww, &[2]);
    let mut b = node_with(2, config, ValueType::Lww, &[1]);
    write(&mut a, T0 + 5_000, put(b"k", b"future"));
    let push = the_push(&drain(&mut a));
    b.handle_message(T0, id(1), Message::Push(push));
    assert_eq!(drain(&mut b), vec![]);
    assert_eq!(b.stats().rejected_clock, 1);
    assert_eq!(b.get(NS, b"k"), None);
    assert!(b.hlc_high_water().physical_us < T0 + 5_000, "the clock was not dragged forward");
}

// ---- hostile-but-decodable inputs ------------------------------------------------

/// `wire::decode` accepts any u64 in a seen set. A peer whose summary claims
/// `u64::MAX` for an origin we have entries from must not crash us
/// (namespace.rs `missing_for`: `per.range(from + 1..)` overflows).
#[test]
fn a_sync_request_claiming_the_largest_counter_does_not_panic_the_responder() {
    let mut a = node_with(1, NodeConfig::default(), ValueType::Lww, &[2]);
    write(&mut a, T0, put(b"k", b"v"));
    drain(&mut a);
    let request = Message::SyncRequest(SyncRequest {
        summaries: vec![NamespaceSummary {
            fingerprint: Default::default(),
            namespace: NS.into(),
            value_type: ValueType::Lww,
            seen: WireSeen { contiguous: vec![(id(1), u64::MAX)], exceptions: vec![] },
        }],
    });
    let request = over_the_wire(&request);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        a.handle_message(T0, id(2), request);
        drain(&mut a)
    }));
    let actions = outcome.expect("the responder did not panic");
    let Some((_, Message::SyncReply(reply))) = sends(&actions).first().copied() else {
        panic!("expected a reply: {actions:?}")
    };
    assert!(reply.deltas.iter().all(|d| d.entries.is_empty()), "the peer claims to have everything");
}

/// A complete sync delta's seen set is folded into ours (sent here as the
/// third message, a `SyncPush`, which does not compute a reply), including what it
/// claims about *our own* dots; `Namespace::next_dot` then computes
/// `contiguous[me] + 1`, which overflows for a claim of `u64::MAX`
/// (namespace.rs `next_dot`). The next local write must not panic, and must
/// not issue dot counter 0 or reuse a dot (as the wrapping release build would).
#[test]
fn a_peer_claiming_our_own_dots_up_to_the_largest_counter_does_not_break_our_next_write() {
    let mut a = node_with(1, NodeConfig::default(), ValueType::Lww, &[2]);
    let first = write(&mut a, T0, put(b"k", b"v"));
    drain(&mut a);
    let reply = Message::SyncPush(SyncPush {
        deltas: vec![NamespaceDelta {
            namespace: NS.into(),
            value_type: ValueType::Lww,
            entries: vec![],
            proofs: vec![],
            heads: vec![],
            complete: true,
            seen: WireSeen { contiguous: vec![(id(1), u64::MAX)], exceptions: vec![] },
        }],
    });
    let reply = over_the_wire(&reply);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        a.handle_message(T0, id(2), reply);
        drain(&mut a);
        a.handle_local_writes(T0 + 1, vec![put(b"k2", b"v")])
    }));
    let results = outcome.expect("the next write did not panic");
    assert_eq!(results.len(), 1);
    if let Ok(receipt) = &results[0] {
        assert!(receipt.dot.counter > first.dot.counter, "dot {} reused", receipt.dot);
    }
}

/// Own dots must never be reused across a restart, even when the entry that
/// carried the greatest own dot was a tombstone that has since been
/// collected. Local writes do not rewrite the namespace record (recovery
/// rebuilds our counter from the entries' clocks), so collection must: if it
/// did not, the restarted node would re-issue dots its peers have already
/// seen, and they would drop the new writes as duplicates.
#[test]
fn a_restart_after_collecting_our_own_tombstone_does_not_reuse_its_dots() {
    let config = NodeConfig::default();
    let mut image = RecoveryImage::new();
    let mut a = Driven::from(Node::new(id(1), config.clone(), 1));
    a.create_namespace(NS, ValueType::Lww).unwrap();
    a.set_members(T0, &[member(1, 0), member(2, 0)]);
    apply_to_image(&mut image, &drain(&mut a));
    let mut b = node_with(2, config.clone(), ValueType::Lww, &[1]);

    write(&mut a, T0, put(b"x", b"v"));
    let w1 = drain(&mut a);
    apply_to_image(&mut image, &w1);
    deliver(&w1, id(1), &mut b, T0);
    let deleted = write(&mut a, T0 + 1, LocalWrite::new(NS, b"x".to_vec(), Op::Delete { context: None }));
    let w2 = drain(&mut a);
    apply_to_image(&mut image, &w2);
    deliver(&w2, id(1), &mut b, T0 + 1);
    drain(&mut b);

    // One anti-entropy round lets both nodes report; the next timeout
    // completes the GC epoch and collects the tombstone.
    a.start_sync(T0 + 10, id(2));
    let request = drain(&mut a);
    apply_to_image(&mut image, &request);
    let reply = deliver(&request, id(1), &mut b, T0 + 11);
    let push = deliver(&reply, id(2), &mut a, T0 + 12);
    apply_to_image(&mut image, &push);
    deliver(&push, id(1), &mut b, T0 + 13);
    a.handle_timeout(T0 + 60_000_000);
    apply_to_image(&mut image, &drain(&mut a));
    assert_eq!(a.namespace(NS).unwrap().get(b"x"), None, "precondition: the tombstone was collected");

    let mut r = Driven::from(Node::recover(id(1), config, 1, &image).expect("the image is valid"));
    r.set_members(T0 + 100, &[member(1, 0), member(2, 0)]);
    let next = write(&mut r, T0 + 100, put(b"y", b"new"));
    assert!(
        next.dot.counter > deleted.dot.counter,
        "dot {} re-issued after restart (b has seen {})",
        next.dot,
        deleted.dot
    );

    // The consequence: a peer that saw the old dot drops the new write.
    let pushed = drain(&mut r);
    deliver(&pushed, id(1), &mut b, T0 + 101);
    assert_eq!(b.get(NS, b"y").map(|r| r.value), Some(ReadValue::Lww(Some(b"new".to_vec()))));
}
