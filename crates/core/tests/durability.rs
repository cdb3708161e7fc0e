//! The driver contract's durability half (`chorus_core::node`,
//! `docs/design/replication.md` "The driver contract"): the core holds back
//! every Send and every answer until the batches it depends on are durable,
//! several batches may be in flight, a failed batch halts the node, and a
//! namespace creation is answered only when every reachable node holds it.

use chorus_core::node::NamespaceError;
use chorus_core::wire::Message;
use chorus_core::{
    Action, LocalWrite, Member, MemberState, NamespaceCreated, Node, NodeConfig, NodeId, Op, PersistId, RequestId,
    ValueType, WriteError,
};
use std::collections::{BTreeMap, BTreeSet};

const NS: &str = "ns";
const T0: u64 = 1_000_000;

fn id(n: u64) -> NodeId {
    NodeId(n)
}

fn put(key: &str) -> LocalWrite {
    LocalWrite::new(NS, key.as_bytes().to_vec(), Op::Put { value: b"v".to_vec(), context: None })
}

fn members(of: &[(u64, u8)]) -> Vec<Member> {
    of.iter().map(|&(n, tier)| Member { id: id(n), tier, state: MemberState::Alive }).collect()
}

/// A node with namespace `NS` (durable) and three live peers.
fn node() -> Node {
    let mut node = Node::new(id(1), NodeConfig { fanout: 3, ..NodeConfig::default() }, 1);
    node.create_namespace(NS, ValueType::Lww).expect("valid");
    node.set_members(T0, &members(&[(1, 0), (2, 0), (3, 0), (4, 0)]));
    complete_all(&mut node);
    node
}

fn poll(node: &mut Node) -> Vec<Action> {
    std::iter::from_fn(|| node.poll_action()).collect()
}

/// Drain, completing every Persist at once, until quiet.
fn complete_all(node: &mut Node) -> Vec<Action> {
    let mut out = Vec::new();
    loop {
        let actions = poll(node);
        if actions.is_empty() {
            return out;
        }
        for a in &actions {
            if let Action::Persist { id, .. } = a {
                node.handle_persisted(*id);
            }
        }
        out.extend(actions);
    }
}

fn persist_ids(actions: &[Action]) -> Vec<PersistId> {
    actions.iter().filter_map(|a| if let Action::Persist { id, .. } = a { Some(*id) } else { None }).collect()
}

fn done_requests(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| if let Action::WriteDone { request, .. } = a { Some(request.0) } else { None })
        .collect()
}

fn send_count(actions: &[Action]) -> usize {
    actions.iter().filter(|a| matches!(a, Action::Send { .. })).count()
}

#[test]
fn sends_and_receipts_wait_for_their_batch_and_every_earlier_one() {
    let mut node = node();
    node.handle_local_writes(T0 + 1, vec![(RequestId(1), put("a"))]);
    let first = poll(&mut node);
    node.handle_local_writes(T0 + 2, vec![(RequestId(2), put("b"))]);
    let second = poll(&mut node);
    // Only the Persists leave; two batches are in flight.
    let (p1, p2) = match (&persist_ids(&first)[..], &persist_ids(&second)[..]) {
        ([p1], [p2]) => (*p1, *p2),
        other => panic!("one persist per write expected: {other:?}"),
    };
    assert!(p2 > p1, "ids grow");
    assert_eq!((first.len(), second.len()), (1, 1), "nothing but the persists: {first:?} {second:?}");
    assert_eq!(node.persists_in_flight(), 2);

    // The later batch alone releases nothing: its answers wait for the earlier one.
    node.handle_persisted(p2);
    assert_eq!(poll(&mut node), vec![]);
    node.handle_persisted(p1);
    let released = poll(&mut node);
    assert_eq!(done_requests(&released), vec![1, 2], "answers in order: {released:?}");
    assert_eq!(send_count(&released), 6, "three pushes per write");
    let first_done = released.iter().position(|a| matches!(a, Action::WriteDone { .. })).unwrap();
    let first_send = released.iter().position(|a| matches!(a, Action::Send { .. })).unwrap();
    assert!(first_done < first_send || first_send < first_done, "both present");
    assert_eq!(node.persists_in_flight(), 0);
}

#[test]
fn a_refusal_is_answered_in_order_behind_earlier_batches() {
    let mut node = node();
    node.handle_local_writes(T0 + 1, vec![(RequestId(1), put("a"))]);
    let p = persist_ids(&poll(&mut node))[0];
    let big = LocalWrite::new(NS, vec![b'k'; 5000], Op::Delete { context: None });
    node.handle_local_writes(T0 + 2, vec![(RequestId(2), big)]);
    assert_eq!(poll(&mut node), vec![], "even a refusal waits behind the earlier batch");
    node.handle_persisted(p);
    let released = poll(&mut node);
    assert_eq!(done_requests(&released), vec![1, 2]);
    assert!(released.iter().any(|a| matches!(
        a,
        Action::WriteDone { request: RequestId(2), result: Err(WriteError::KeyTooLarge { .. }) }
    )));
}

#[test]
fn a_read_waits_for_everything_the_state_it_saw_reflects() {
    let mut node = node();
    node.handle_local_writes(T0 + 1, vec![(RequestId(1), put("a"))]);
    let p = persist_ids(&poll(&mut node))[0];
    // The driver reads the state now (the write is visible in memory)…
    assert!(node.get(NS, b"a").is_some());
    node.handle_read(RequestId(7));
    // …but may answer only after the write is durable.
    assert_eq!(poll(&mut node), vec![]);
    node.handle_persisted(p);
    let released = poll(&mut node);
    assert!(released.contains(&Action::ReadReady { request: RequestId(7), result: Ok(()) }), "{released:?}");
    // With nothing in flight a read is released at once.
    node.handle_read(RequestId(8));
    assert_eq!(poll(&mut node), vec![Action::ReadReady { request: RequestId(8), result: Ok(()) }]);
}

#[test]
fn a_failed_batch_turns_its_outcomes_into_errors_drops_its_sends_and_halts_the_node() {
    let mut node = node();
    node.handle_local_writes(T0 + 1, vec![(RequestId(1), put("a"))]);
    let p1 = persist_ids(&poll(&mut node))[0];
    node.handle_local_writes(T0 + 2, vec![(RequestId(2), put("b"))]);
    let p2 = persist_ids(&poll(&mut node))[0];
    node.handle_read(RequestId(3));
    node.handle_persist_failed(p2, "disk full");
    assert_eq!(poll(&mut node), vec![], "the earlier batch is still in flight");
    node.handle_persisted(p1);
    let released = poll(&mut node);
    // Write 1 succeeded with its pushes; write 2's outcome is unknown, its
    // pushes never leave; the read is refused; Halted comes last.
    assert_eq!(send_count(&released), 3, "only write 1's pushes: {released:?}");
    assert!(matches!(released[..], [.., Action::Halted(ref h)] if h.batch == p2 && h.reason == "disk full"));
    assert!(released.iter().any(|a| matches!(a, Action::WriteDone { request: RequestId(1), result: Ok(_) })));
    assert!(
        released.iter().any(|a| matches!(
            a,
            Action::WriteDone { request: RequestId(2), result: Err(WriteError::PersistFailed(_)) }
        ))
    );
    assert!(released.iter().any(|a| matches!(a, Action::ReadReady { request: RequestId(3), result: Err(_) })));
    assert_eq!(node.halted().map(|h| h.batch), Some(p2));

    // Afterwards: writes are refused, nothing is persisted or sent.
    node.handle_local_writes(T0 + 3, vec![(RequestId(4), put("c"))]);
    let after = poll(&mut node);
    assert!(
        matches!(after[..], [Action::WriteDone { request: RequestId(4), result: Err(WriteError::Halted(_)) }]),
        "{after:?}"
    );
    node.handle_timeout(T0 + 60_000_000);
    node.handle_persisted(p2);
    assert_eq!(poll(&mut node), vec![]);
    node.handle_create_namespace(T0 + 4, RequestId(5), "other", ValueType::Lww);
    assert!(matches!(
        poll(&mut node)[..],
        [Action::NamespaceDone { request: RequestId(5), result: Err(NamespaceError::Halted(_)) }]
    ));
}

/// Nodes joined by an instant network whose disks complete at once, with a
/// set of links that drop everything.
struct Net {
    nodes: BTreeMap<NodeId, Node>,
    cut: BTreeSet<NodeId>,
    done: Vec<(NodeId, RequestId, Result<NamespaceCreated, NamespaceError>)>,
    /// For each NamespaceDone: which nodes held the namespace durably then.
    holders_at_done: Vec<BTreeSet<NodeId>>,
    durable: BTreeMap<NodeId, BTreeSet<String>>,
}

impl Net {
    fn new(tiers: &[(u64, u8)]) -> Net {
        let all = members(tiers);
        let mut nodes = BTreeMap::new();
        for &(n, tier) in tiers {
            let mut node = Node::new(id(n), NodeConfig { tier, ..NodeConfig::default() }, n);
            node.set_members(T0, &all);
            nodes.insert(id(n), node);
        }
        Net { nodes, cut: BTreeSet::new(), done: Vec::new(), holders_at_done: Vec::new(), durable: BTreeMap::new() }
    }

    fn run(&mut self, now: u64) {
        loop {
            let mut messages: Vec<(NodeId, NodeId, Message)> = Vec::new();
            for (&me, node) in self.nodes.iter_mut() {
                while let Some(action) = node.poll_action() {
                    match action {
                        Action::Persist { id: p, batch } => {
                            for op in &batch.ops {
                                if op.space == chorus_core::persist::NAMESPACES_SPACE {
                                    let name = String::from_utf8(op.key.clone()).expect("utf-8");
                                    self.durable.entry(me).or_default().insert(name);
                                }
                            }
                            node.handle_persisted(p);
                        }
                        Action::Send { to, message } => messages.push((me, to, message)),
                        Action::NamespaceDone { request, result } => {
                            let holders: BTreeSet<NodeId> = self
                                .durable
                                .iter()
                                .filter(|(_, names)| names.contains("fresh"))
                                .map(|(n, _)| *n)
                                .collect();
                            self.holders_at_done.push(holders);
                            self.done.push((me, request, result));
                        }
                        _ => {}
                    }
                }
            }
            if messages.is_empty() {
                return;
            }
            for (from, to, message) in messages {
                if self.cut.contains(&to) || self.cut.contains(&from) {
                    continue;
                }
                if let Some(node) = self.nodes.get_mut(&to) {
                    node.handle_message(now, from, message);
                }
            }
        }
    }
}

#[test]
fn a_namespace_created_at_tier_0_is_durable_two_tiers_away_before_the_create_returns() {
    // 1 and 2 at tier 0, 3 and 4 at tier 1, 5 at tier 2: node 5 hears of it
    // only through tier 1.
    let mut net = Net::new(&[(1, 0), (2, 0), (3, 1), (4, 1), (5, 2)]);
    net.run(T0);
    net.nodes.get_mut(&id(1)).unwrap().handle_create_namespace(T0, RequestId(9), "fresh", ValueType::Counter);
    net.run(T0 + 1);
    assert_eq!(net.done.len(), 1, "answered once: {:?}", net.done);
    let (at, request, result) = &net.done[0];
    assert_eq!((*at, *request), (id(1), RequestId(9)));
    assert_eq!(result, &Ok(NamespaceCreated { created: true, unconfirmed: vec![] }));
    let all: BTreeSet<NodeId> = (1..=5).map(id).collect();
    assert_eq!(net.holders_at_done[0], all, "every node held it durably when the create returned");
    for node in net.nodes.values() {
        assert_eq!(node.namespace("fresh").map(|n| n.value_type()), Some(ValueType::Counter));
    }
    // Re-creating it is answered the same way, without creating anything.
    net.nodes.get_mut(&id(3)).unwrap().handle_create_namespace(T0 + 2, RequestId(10), "fresh", ValueType::Counter);
    net.run(T0 + 3);
    assert_eq!(net.done[1].2, Ok(NamespaceCreated { created: false, unconfirmed: vec![] }));
}

#[test]
fn a_member_that_cannot_confirm_is_named_once_the_wait_is_over() {
    // Node 3 (tier 2) is reachable only through node 2 (tier 1).
    let mut net = Net::new(&[(1, 0), (2, 1), (3, 2)]);
    net.run(T0);
    net.cut.insert(id(3));
    net.nodes.get_mut(&id(1)).unwrap().handle_create_namespace(T0, RequestId(1), "fresh", ValueType::Lww);
    net.run(T0 + 1);
    assert!(net.done.is_empty(), "node 3 has not answered yet");
    let wait = NodeConfig::default().namespace_confirm_wait_us;
    // Node 2 passed it on to node 3 and gives up first (its budget is three
    // quarters of the origin's), answering with itself; that completes the
    // origin's wait early, naming node 3.
    let node2_gives_up = T0 + 1 + wait / 4 * 3;
    net.nodes.get_mut(&id(2)).unwrap().handle_timeout(node2_gives_up - 1);
    net.run(node2_gives_up - 1);
    assert!(net.done.is_empty(), "node 2 still waits for node 3");
    net.nodes.get_mut(&id(2)).unwrap().handle_timeout(node2_gives_up);
    net.run(node2_gives_up);
    assert_eq!(net.done.len(), 1);
    assert_eq!(net.done[0].2, Ok(NamespaceCreated { created: true, unconfirmed: vec![id(3)] }));
}

#[test]
fn a_push_of_the_most_items_a_message_may_carry_is_persisted_in_pieces_within_the_bounds() {
    use chorus_core::node::{PERSIST_BYTES_MAX, PERSIST_OPS_MAX};
    use chorus_core::wire::{ITEMS_PER_MESSAGE_MAX, Push};
    // Node 2 writes ITEMS_PER_MESSAGE_MAX keys; node 1 receives them as ONE
    // push (what a crafted or honest peer may send).
    let mut writer = Node::new(id(2), NodeConfig::default(), 2);
    writer.create_namespace(NS, ValueType::Lww).unwrap();
    complete_all(&mut writer);
    let writes: Vec<(RequestId, LocalWrite)> = (0..ITEMS_PER_MESSAGE_MAX)
        .map(|i| {
            (
                RequestId(i as u64),
                LocalWrite::new(NS, format!("k{i}").into_bytes(), Op::Put { value: vec![7; 8], context: None }),
            )
        })
        .collect();
    writer.handle_local_writes(T0, writes);
    complete_all(&mut writer);
    let items: Vec<_> = (0..ITEMS_PER_MESSAGE_MAX)
        .map(|i| {
            let key = format!("k{i}").into_bytes();
            let entry = writer.namespace(NS).unwrap().get(&key).unwrap().clone();
            let dot = chorus_core::Dot { node: id(2), counter: i as u64 + 1 };
            chorus_core::wire::PushItem {
                namespace: NS.into(),
                value_type: ValueType::Lww,
                dot,
                ts: entry.timestamp_max(),
                key,
                entry,
                proof: None,
            }
        })
        .collect();
    let mut node = node();
    node.handle_message(T0, id(2), Message::Push(Push { hops: 0, items, covered: Vec::new() }));
    let actions = poll(&mut node);
    let pieces: Vec<&chorus_core::PersistBatch> =
        actions.iter().filter_map(|a| if let Action::Persist { batch, .. } = a { Some(batch) } else { None }).collect();
    assert!(pieces.len() >= 2, "one push of {ITEMS_PER_MESSAGE_MAX} items is more than one store batch may hold");
    for p in &pieces {
        let bytes: usize =
            p.ops.iter().map(|o| o.space.len() + o.key.len() + o.value.as_ref().map_or(0, Vec::len)).sum();
        assert!(p.ops.len() <= PERSIST_OPS_MAX && bytes <= PERSIST_BYTES_MAX, "{} ops, {bytes} bytes", p.ops.len());
    }
    let ops: usize = pieces.iter().map(|p| p.ops.len()).sum();
    assert!(ops > ITEMS_PER_MESSAGE_MAX, "every entry and the HLC record are persisted");
    // The HLC record comes last, after every entry it covers.
    let last = pieces.last().unwrap().ops.last().unwrap();
    assert_eq!(last.space, chorus_core::persist::META_SPACE);
    // Nothing is forwarded before the last piece is durable.
    assert_eq!(send_count(&actions), 0);
    let ids = persist_ids(&actions);
    for p in &ids[..ids.len() - 1] {
        node.handle_persisted(*p);
    }
    assert_eq!(send_count(&poll(&mut node)), 0, "held until the last piece is durable");
    node.handle_persisted(*ids.last().unwrap());
    assert!(send_count(&poll(&mut node)) > 0, "forwarded once all pieces are durable");
    assert_eq!(node.namespace(NS).unwrap().len(), ITEMS_PER_MESSAGE_MAX);
}

#[test]
fn a_retry_with_the_same_request_id_returns_the_first_outcome_and_applies_nothing_even_after_a_restart() {
    use chorus_core::persist::RecoveryImage;
    let mut node = Node::new(id(1), NodeConfig::default(), 1);
    node.create_namespace(NS, ValueType::Lww).expect("valid");
    let created = complete_all(&mut node);
    let incr = || {
        LocalWrite::new(NS, b"c".to_vec(), Op::Put { value: b"v1".to_vec(), context: None })
            .with_request_id(b"req-1".to_vec())
    };
    node.handle_local_writes(T0 + 1, vec![(RequestId(1), incr())]);
    let first = complete_all(&mut node);
    let receipt = |actions: &[Action], r: u64| {
        actions
            .iter()
            .find_map(|a| match a {
                Action::WriteDone { request, result: Ok(w) } if request.0 == r => Some(w.clone()),
                _ => None,
            })
            .expect("answered")
    };
    let r1 = receipt(&first, 1);
    // A retry in the window: the same receipt, nothing persisted or pushed.
    node.handle_local_writes(T0 + 2, vec![(RequestId(2), incr())]);
    let retry = complete_all(&mut node);
    assert_eq!(receipt(&retry, 2), r1);
    assert!(persist_ids(&retry).is_empty() && send_count(&retry) == 0, "{retry:?}");
    assert_eq!(node.stats().local_writes, 1);
    // The same key for another write is refused.
    let other = LocalWrite::new(NS, b"d".to_vec(), Op::Put { value: b"x".to_vec(), context: None })
        .with_request_id(b"req-1".to_vec());
    node.handle_local_writes(T0 + 3, vec![(RequestId(3), other)]);
    assert!(
        complete_all(&mut node)
            .iter()
            .any(|a| matches!(a, Action::WriteDone { result: Err(WriteError::RequestIdReused { .. }), .. }))
    );
    // The key is durable with the write: a restarted node still knows it.
    let mut image = RecoveryImage::new();
    for a in created.iter().chain(first.iter()).chain(retry.iter()) {
        if let Action::Persist { batch, .. } = a {
            for op in &batch.ops {
                let space = image.entry(op.space.clone()).or_default();
                match &op.value {
                    Some(v) => space.insert(op.key.clone(), v.clone()),
                    None => space.remove(&op.key),
                };
            }
        }
    }
    let mut restarted = Node::recover(id(1), NodeConfig::default(), 9, &image).expect("recoverable");
    restarted.handle_local_writes(T0 + 4, vec![(RequestId(4), incr())]);
    let after = complete_all(&mut restarted);
    assert_eq!(receipt(&after, 4), r1, "the first outcome, from the store");
    assert!(persist_ids(&after).is_empty());
    // After the window the key is forgotten (and deleted from the store).
    let window = NodeConfig::default().idempotency_window_us;
    restarted.handle_timeout(T0 + 1 + window);
    let expired = complete_all(&mut restarted);
    assert!(expired.iter().any(|a| matches!(a, Action::Persist { batch, .. } if batch.ops.iter().any(|o| o.space == "idem" && o.value.is_none()))));
    restarted.handle_local_writes(T0 + 2 + window, vec![(RequestId(5), incr())]);
    let fresh = complete_all(&mut restarted);
    assert_ne!(receipt(&fresh, 5).dot, r1.dot, "applied again once forgotten");
}

#[test]
fn a_flipped_bit_in_the_hlc_or_a_namespace_record_refuses_recovery_naming_the_record() {
    use chorus_core::persist::{self, RecoverError, RecoveryImage};
    let mut node = Node::new(id(1), NodeConfig::default(), 1);
    node.create_namespace(NS, ValueType::Lww).expect("valid");
    let mut image = RecoveryImage::new();
    let mut actions = complete_all(&mut node);
    node.handle_local_writes(T0, vec![(RequestId(1), put("a"))]);
    actions.extend(complete_all(&mut node));
    for a in &actions {
        if let Action::Persist { batch, .. } = a {
            for op in &batch.ops {
                if let Some(v) = &op.value {
                    image.entry(op.space.clone()).or_default().insert(op.key.clone(), v.clone());
                }
            }
        }
    }
    assert!(Node::recover(id(1), NodeConfig::default(), 2, &image).is_ok());
    for (space, key) in
        [(persist::META_SPACE, persist::HLC_KEY.to_vec()), (persist::NAMESPACES_SPACE, NS.as_bytes().to_vec())]
    {
        let mut damaged = image.clone();
        let record = damaged.get_mut(space).and_then(|s| s.get_mut(&key)).expect("the record exists");
        let last = record.len() - 1;
        record[last] ^= 0x01;
        match Node::recover(id(1), NodeConfig::default(), 2, &damaged) {
            Err(RecoverError::Corrupt { space: s, key: k, reason }) => {
                assert_eq!((s.as_str(), k), (space, key), "{reason}");
                assert!(reason.contains("checksum"), "{reason}");
            }
            Ok(_) => panic!("a damaged {space} record was accepted"),
            Err(other) => panic!("unexpected error {other}"),
        }
    }
}

#[test]
fn a_peer_claiming_our_unissued_dots_is_reported_once_unless_we_started_empty() {
    use chorus_core::wire::{NamespaceDelta, SyncPush, WireSeen};
    use chorus_core::{Misbehavior, persist::RecoveryImage};
    let forged = Message::SyncPush(SyncPush {
        deltas: vec![
            NamespaceDelta {
                namespace: NS.into(),
                value_type: ValueType::Lww,
                entries: vec![],
                proofs: vec![],
                heads: vec![],
                complete: true,
                seen: WireSeen { contiguous: vec![(id(1), 1_000)], exceptions: vec![] },
            };
            3
        ],
    });
    let reports = |node: &mut Node| -> Vec<Action> {
        node.handle_message(T0, id(2), forged.clone());
        complete_all(node).into_iter().filter(|a| matches!(a, Action::PeerMisbehaved { .. })).collect()
    };
    // A node that started empty may be a wiped node whose peers honestly
    // remember its old writes: counted, not reported.
    let mut fresh = node();
    assert!(reports(&mut fresh).is_empty());
    assert!(fresh.stats().rejected_forged >= 1);
    // A node that recovered a store holding its writes: reported, once per message.
    let mut image = RecoveryImage::new();
    let mut writer = Node::new(id(1), NodeConfig::default(), 1);
    writer.create_namespace(NS, ValueType::Lww).unwrap();
    writer.handle_local_writes(T0, vec![(RequestId(1), put("a"))]);
    for a in complete_all(&mut writer) {
        if let Action::Persist { batch, .. } = a {
            for op in batch.ops {
                if let Some(v) = op.value {
                    image.entry(op.space).or_default().insert(op.key, v);
                }
            }
        }
    }
    let mut recovered = Node::recover(id(1), NodeConfig::default(), 1, &image).unwrap();
    recovered.set_members(T0, &members(&[(1, 0), (2, 0)]));
    complete_all(&mut recovered);
    assert_eq!(reports(&mut recovered), vec![Action::PeerMisbehaved { peer: id(2), reason: Misbehavior::ForgedDots }]);
}
