//! Writes signed by their origin (`docs/design/signing.md`): signed state
//! converges through pushes, anti-entropy, reconciliation and restarts, and
//! a relay that alters a third node's writes before forwarding them is
//! refused and reported, with the honest state unchanged. Every message
//! goes through the real codec; signatures are real ed25519.

use chorus_core::crdt::{Entry, Op, ReadValue, ValueType};
use chorus_core::node::{Action, LocalWrite, Member, MemberState, Misbehavior, Node, NodeConfig};
use chorus_core::persist::RecoveryImage;
use chorus_core::signing::{self, Ed25519Signing, Signing, VerifiedBlocks};
use chorus_core::wire::{self, Message};
use chorus_core::{NodeId, RequestId, limits};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

const T0: u64 = 1_000_000_000;
const NAMESPACES: [(&str, ValueType); 4] =
    [("l", ValueType::Lww), ("m", ValueType::Mv), ("c", ValueType::Counter), ("s", ValueType::Set)];

type Tamper = Box<dyn FnMut(NodeId, NodeId, &mut Message)>;

fn secret(n: u64) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&n.to_le_bytes());
    s[31] = 0x5a;
    s
}

/// Every node knows every node's public key (the daemon learns them from
/// certificates the cluster CA signed).
fn signer(me: u64, all: &[u64]) -> Arc<Ed25519Signing> {
    let s = Ed25519Signing::new(NodeId(me), &secret(me));
    for &o in all {
        let public = Ed25519Signing::new(NodeId(o), &secret(o)).public_key();
        assert!(s.learn(NodeId(o), &public));
    }
    Arc::new(s)
}

struct Cluster {
    ids: Vec<u64>,
    /// Who may send to whom (a missing pair drops the message).
    links: BTreeMap<u64, Vec<u64>>,
    nodes: BTreeMap<u64, Node>,
    images: BTreeMap<u64, RecoveryImage>,
    signed: BTreeMap<u64, bool>,
    signers: BTreeMap<u64, Arc<Ed25519Signing>>,
    queue: VecDeque<(NodeId, NodeId, Message)>,
    tamper: Option<Tamper>,
    /// (reporter, accused, reason)
    reports: Vec<(u64, u64, Misbehavior)>,
    next_request: u64,
    now: u64,
}

impl Cluster {
    /// Nodes `ids`, each knowing the peers `links` gives it; signing on for
    /// the nodes in `signed`.
    fn new(ids: &[u64], links: &[(u64, u64)], unsigned: &[u64]) -> Cluster {
        let mut l: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for &(a, b) in links {
            l.entry(a).or_default().push(b);
            l.entry(b).or_default().push(a);
        }
        let mut c = Cluster {
            ids: ids.to_vec(),
            links: l,
            nodes: BTreeMap::new(),
            images: BTreeMap::new(),
            signed: ids.iter().map(|&i| (i, !unsigned.contains(&i))).collect(),
            signers: BTreeMap::new(),
            queue: VecDeque::new(),
            tamper: None,
            reports: Vec::new(),
            next_request: 1,
            now: T0,
        };
        for &i in ids {
            let mut node = Node::new(NodeId(i), NodeConfig::default(), i);
            if c.signed[&i] {
                let s = signer(i, ids);
                c.signers.insert(i, s.clone());
                node.enable_signing(s);
            }
            for (name, ty) in NAMESPACES {
                node.create_namespace(name, ty).expect("valid namespace");
            }
            c.nodes.insert(i, node);
            c.images.insert(i, RecoveryImage::new());
            c.set_members(i);
        }
        c.settle();
        c
    }

    fn set_members(&mut self, i: u64) {
        let mut members: Vec<Member> =
            self.links.get(&i).cloned().unwrap_or_default().into_iter().map(member).collect();
        members.push(member(i));
        let now = self.now;
        self.nodes.get_mut(&i).expect("node").set_members(now, &members);
    }

    /// Execute every node's actions; messages go into the queue.
    fn run_actions(&mut self) {
        for (&i, node) in self.nodes.iter_mut() {
            let image = self.images.get_mut(&i).expect("image");
            while let Some(action) = node.poll_action() {
                match action {
                    Action::Persist { id, batch } => {
                        for op in batch.ops {
                            let space = image.entry(op.space).or_default();
                            match op.value {
                                Some(v) => space.insert(op.key, v),
                                None => space.remove(&op.key),
                            };
                        }
                        node.handle_persisted(id);
                    }
                    Action::Send { to, message } => self.queue.push_back((NodeId(i), to, message)),
                    Action::WriteDone { result, .. } => {
                        result.expect("write accepted");
                    }
                    Action::PeerMisbehaved { peer, reason } => self.reports.push((i, peer.0, reason)),
                    _ => {}
                }
            }
        }
    }

    /// Deliver messages (through the codec, and the tamperer) until quiet.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            self.run_actions();
            let Some((from, to, mut message)) = self.queue.pop_front() else { return };
            if !self.links.get(&from.0).is_some_and(|l| l.contains(&to.0)) {
                continue;
            }
            if let Some(t) = self.tamper.as_mut() {
                t(from, to, &mut message);
            }
            let decoded = wire::decode(&wire::encode(&message), limits::VALUE_BYTES_DEFAULT).expect("valid frame");
            self.now += 10;
            let now = self.now;
            if let Some(node) = self.nodes.get_mut(&to.0) {
                node.handle_message(now, from, decoded);
            }
        }
        panic!("the cluster did not go quiet");
    }

    fn write(&mut self, on: u64, ns: &str, key: &str, op: Op) {
        self.next_request += 1;
        self.now += 1_000;
        let now = self.now;
        let w = LocalWrite::new(ns, key.as_bytes().to_vec(), op);
        self.nodes.get_mut(&on).expect("node").handle_local_writes(now, vec![(RequestId(self.next_request), w)]);
        self.run_actions();
    }

    /// One anti-entropy exchange from every node with each of its peers.
    fn anti_entropy(&mut self) {
        for i in self.ids.clone() {
            for p in self.links.get(&i).cloned().unwrap_or_default() {
                self.now += 1_000;
                let now = self.now;
                self.nodes.get_mut(&i).expect("node").start_sync(now, NodeId(p));
                self.settle();
            }
        }
    }

    fn restart(&mut self, i: u64) {
        let image = self.images[&i].clone();
        let mut node = Node::recover(NodeId(i), NodeConfig::default(), i + 100, &image).expect("recovers");
        if self.signed[&i] {
            node.enable_signing(signer(i, &self.ids.clone()));
        }
        self.nodes.insert(i, node);
        self.set_members(i);
        self.settle();
    }

    fn read(&self, on: u64, ns: &str, key: &str) -> Option<ReadValue> {
        let e = self.nodes[&on].namespace(ns)?.get(key.as_bytes())?;
        Some(e.read())
    }

    /// Every entry of every signed node has a proof that checks.
    fn assert_every_entry_proven(&self) {
        let checker = signer(0, &self.ids);
        for (&i, node) in &self.nodes {
            if !self.signed[&i] {
                continue;
            }
            for (name, _) in NAMESPACES {
                let ns = node.namespace(name).expect("namespace");
                for (k, e) in ns.entries() {
                    let proof = ns.proof(k).unwrap_or_else(|| panic!("node {i} {name}/{k:?} has no proof"));
                    let mut verified = VerifiedBlocks::default();
                    signing::check_entry(name, k, e, proof, checker.as_ref() as &dyn Signing, &mut verified)
                        .unwrap_or_else(|err| panic!("node {i} {name}/{k:?}: {err}"));
                }
            }
        }
    }
}

fn member(i: u64) -> Member {
    Member { id: NodeId(i), tier: 0, state: MemberState::Alive }
}

fn put(v: &str) -> Op {
    Op::Put { value: v.as_bytes().to_vec(), context: None }
}

fn mixed_writes(c: &mut Cluster, on: u64, round: u64) {
    c.write(on, "l", &format!("k{}", round % 3), put(&format!("v{on}.{round}")));
    c.write(on, "m", &format!("k{}", round % 2), put(&format!("m{on}.{round}")));
    c.write(on, "c", "hits", Op::Increment { amount: (round as i64 % 5) - 1 });
    c.write(on, "s", "tags", Op::Add { member: format!("t{on}.{round}").into_bytes() });
    if round % 3 == 2 {
        c.write(on, "s", "tags", Op::Remove { member: format!("t{on}.{}", round - 1).into_bytes(), context: None });
        c.write(on, "l", &format!("k{}", (round + 1) % 3), Op::Delete { context: None });
    }
}

#[test]
fn signed_writes_of_every_type_converge_through_push_anti_entropy_and_restarts() {
    let ids = [1, 2, 3];
    let mut c = Cluster::new(&ids, &[(1, 2), (2, 3), (1, 3)], &[]);
    for round in 0..6 {
        for &i in &ids {
            mixed_writes(&mut c, i, round);
        }
        c.settle();
        if round == 2 {
            // A restart must keep proofs, heads and the block chain.
            c.restart(2);
        }
    }
    c.anti_entropy();
    c.anti_entropy();
    assert!(c.reports.is_empty(), "honest signed nodes were accused: {:?}", c.reports);
    for (name, _) in NAMESPACES {
        let keys: Vec<Vec<u8>> = c.nodes[&1].namespace(name).expect("ns").entries().map(|(k, _)| k.clone()).collect();
        assert!(!keys.is_empty());
        for k in keys {
            let k = String::from_utf8(k).expect("utf-8 key");
            let on1 = c.read(1, name, &k);
            assert_eq!(on1, c.read(2, name, &k), "{name}/{k}");
            assert_eq!(on1, c.read(3, name, &k), "{name}/{k}");
        }
    }
    c.assert_every_entry_proven();
    for (&i, node) in &c.nodes {
        let s = node.stats();
        assert_eq!(s.rejected_signature, 0, "node {i}");
        assert_eq!(s.unprovable_entries, 0, "node {i}");
        assert!(node.stats().signatures_checked > 0, "node {i} checked no signature");
    }
    // One signature per turn, not per write: 2 of the 3 nodes wrote 6
    // rounds of 4-6 single-write turns since their last restart.
    assert!(c.nodes[&1].stats().blocks_signed >= 24);
}

/// Node 1 (the origin) reaches node 3 only through node 2 (the relay).
fn relay_cluster(unsigned: &[u64]) -> Cluster {
    Cluster::new(&[1, 2, 3], &[(1, 2), (2, 3)], unsigned)
}

/// Forge what node 2 forwards to node 3 with `f`, write on node 1, and
/// return the cluster after pushes and two anti-entropy rounds.
fn forge(unsigned: &[u64], write: impl Fn(&mut Cluster), f: impl FnMut(&mut Message) + 'static) -> Cluster {
    let mut c = relay_cluster(unsigned);
    let mut f = f;
    c.tamper = Some(Box::new(move |from, to, m| {
        if from == NodeId(2) && to == NodeId(3) {
            f(m)
        }
    }));
    write(&mut c);
    c.settle();
    c.anti_entropy();
    c.anti_entropy();
    c
}

/// Apply `f` to every entry (with its key) a message carries.
fn each_entry(m: &mut Message, mut f: impl FnMut(&[u8], &mut Entry)) {
    match m {
        Message::Push(p) => {
            for it in &mut p.items {
                f(&it.key, &mut it.entry);
            }
        }
        Message::SyncReply(r) => {
            for d in &mut r.deltas {
                for (k, e) in &mut d.entries {
                    f(k, e);
                }
            }
        }
        Message::SyncPush(p) => {
            for d in &mut p.deltas {
                for (k, e) in &mut d.entries {
                    f(k, e);
                }
            }
        }
        _ => {}
    }
}

fn alter_lww(m: &mut Message) {
    each_entry(m, |_, e| {
        if let Entry::Lww(r) = e
            && r.value.is_some()
        {
            r.value = Some(b"forged".to_vec());
        }
    });
}

fn alter_counter(m: &mut Message) {
    each_entry(m, |_, e| {
        if let Entry::Counter(c) = e
            && let Some(t) = c.totals.get_mut(&NodeId(1))
        {
            t.0 += 1_000;
        }
    });
}

fn lww_and_counter_writes(c: &mut Cluster) {
    c.write(1, "l", "k", put("honest"));
    c.write(1, "c", "hits", Op::Increment { amount: 5 });
    c.write(1, "c", "hits", Op::Increment { amount: 2 });
}

#[test]
fn a_relay_that_alters_a_third_nodes_lww_value_is_refused_and_reported() {
    let c = forge(&[], lww_and_counter_writes, alter_lww);
    assert_eq!(c.read(2, "l", "k"), Some(ReadValue::Lww(Some(b"honest".to_vec()))));
    assert_ne!(c.read(3, "l", "k"), Some(ReadValue::Lww(Some(b"forged".to_vec()))), "forged value applied");
    assert_eq!(c.read(3, "l", "k"), None, "node 3 can only get the key from the relay, which always forges it");
    assert!(c.reports.contains(&(3, 2, Misbehavior::BadSignature)), "relay not reported: {:?}", c.reports);
    assert!(c.reports.iter().all(|r| r.1 == 2), "an honest node was accused: {:?}", c.reports);
    assert!(c.nodes[&3].stats().rejected_signature > 0);
    // The counter was not altered: it arrives, proven.
    assert_eq!(c.read(3, "c", "hits"), Some(ReadValue::Counter(7)));
    c.assert_every_entry_proven();
}

#[test]
fn a_relay_that_alters_a_third_nodes_counter_contribution_is_refused_and_reported() {
    let c = forge(&[], lww_and_counter_writes, alter_counter);
    assert_eq!(c.read(2, "c", "hits"), Some(ReadValue::Counter(7)));
    assert_eq!(c.read(3, "c", "hits"), None, "forged counter applied: {:?}", c.read(3, "c", "hits"));
    assert!(c.reports.contains(&(3, 2, Misbehavior::BadSignature)), "relay not reported: {:?}", c.reports);
    assert_eq!(c.read(3, "l", "k"), Some(ReadValue::Lww(Some(b"honest".to_vec()))));
    c.assert_every_entry_proven();
}

#[test]
fn a_relay_that_inflates_a_third_nodes_seen_entry_is_refused_and_reported() {
    let c = forge(&[], lww_and_counter_writes, |m| {
        // Pushes are dropped so that node 1's writes reach node 3 by
        // anti-entropy, whose deltas carry seen sets.
        if let Message::Push(p) = m {
            p.items.clear();
        }
        let deltas = match m {
            Message::SyncReply(r) => &mut r.deltas,
            Message::SyncPush(p) => &mut p.deltas,
            _ => return,
        };
        for d in deltas {
            for (n, counter) in &mut d.seen.contiguous {
                if *n == NodeId(1) {
                    *counter += 50;
                }
            }
        }
    });
    assert!(c.reports.contains(&(3, 2, Misbehavior::BadSignature)), "relay not reported: {:?}", c.reports);
    // Node 3's seen set claims nothing of node 1 beyond what it signed.
    for (name, _) in NAMESPACES {
        let issued = c.nodes[&1].namespace(name).expect("ns").seen().contiguous().get(NodeId(1));
        let seen = c.nodes[&3].namespace(name).expect("ns").seen().contiguous().get(NodeId(1));
        assert!(seen <= issued, "{name}: node 3 folded an inflated seen entry {seen} (node 1 issued {issued})");
    }
    // The real data still arrives.
    assert_eq!(c.read(3, "c", "hits"), Some(ReadValue::Counter(7)));
}

#[test]
fn a_relay_that_raises_a_third_nodes_clock_entry_or_adds_a_set_member_is_refused() {
    let c = forge(
        &[],
        |c| {
            c.write(1, "s", "tags", Op::Add { member: b"a".to_vec() });
            c.write(1, "m", "k", put("one"));
        },
        |m| {
            each_entry(m, |_, e| match e {
                Entry::Set(s) => {
                    let dot = *s.members.values().next().and_then(|d| d.iter().next()).expect("a member dot");
                    s.members.insert(b"forged".to_vec(), [dot].into());
                }
                Entry::Mv(r) => {
                    // Claim node 1 wrote 10 more times to this key.
                    let c1 = r.clock.get(NodeId(1));
                    r.clock.raise(NodeId(1), c1 + 10);
                }
                _ => {}
            })
        },
    );
    assert_eq!(c.read(3, "s", "tags"), None, "forged set applied");
    assert_eq!(c.read(3, "m", "k"), None, "forged clock applied");
    assert!(c.reports.contains(&(3, 2, Misbehavior::BadSignature)));
    assert!(c.nodes[&3].stats().rejected_signature >= 2);
}

/// The check is what refuses the forgeries: with signing off on node 3,
/// the same relay's forgeries are applied.
#[test]
fn without_signing_the_same_forgeries_are_applied() {
    let c = forge(&[1, 2, 3], lww_and_counter_writes, |m| {
        alter_lww(m);
        alter_counter(m);
    });
    assert_eq!(c.read(3, "l", "k"), Some(ReadValue::Lww(Some(b"forged".to_vec()))));
    assert!(matches!(c.read(3, "c", "hits"), Some(ReadValue::Counter(n)) if n > 1_000));
    assert!(c.reports.is_empty());
}

/// A signature that does not verify (a relay re-signing with its own key,
/// or flipping a bit of the origin's) is refused like altered data.
#[test]
fn a_relay_that_replaces_the_origins_signature_is_refused() {
    let c = forge(
        &[],
        |c| c.write(1, "l", "k", put("honest")),
        |m| {
            let flip = |p: &mut chorus_core::signing::KeyProof| {
                for a in &mut p.attestations {
                    std::sync::Arc::make_mut(&mut a.block).signature[0] ^= 1;
                }
            };
            match m {
                Message::Push(p) => p.items.iter_mut().filter_map(|it| it.proof.as_mut()).for_each(flip),
                Message::SyncReply(r) => r.deltas.iter_mut().flat_map(|d| d.proofs.iter_mut()).for_each(flip),
                Message::SyncPush(p) => p.deltas.iter_mut().flat_map(|d| d.proofs.iter_mut()).for_each(flip),
                _ => {}
            }
        },
    );
    assert_eq!(c.read(3, "l", "k"), None);
    assert!(c.reports.contains(&(3, 2, Misbehavior::BadSignature)));
}

/// A revoked origin's writes made after its revocation are refused even
/// when a relay that has not heard of the revocation forwards them; what it
/// wrote before stays. The relay is not blamed (it may simply not have the
/// list yet).
#[test]
fn a_revoked_origins_later_writes_forwarded_by_a_relay_are_refused_and_its_earlier_ones_stay() {
    let mut c = relay_cluster(&[]);
    c.write(1, "l", "before", put("kept"));
    c.settle();
    assert_eq!(c.read(3, "l", "before"), Some(ReadValue::Lww(Some(b"kept".to_vec()))));
    c.signers[&3].revoke_after(NodeId(1), c.now);
    c.write(1, "l", "after", put("refused"));
    c.write(1, "l", "before", put("overwritten"));
    c.settle();
    c.anti_entropy();
    assert_eq!(c.read(2, "l", "after"), Some(ReadValue::Lww(Some(b"refused".to_vec()))), "the relay took it");
    assert_eq!(c.read(3, "l", "after"), None, "a write after the revocation was applied");
    assert_eq!(c.read(3, "l", "before"), Some(ReadValue::Lww(Some(b"kept".to_vec()))));
    assert!(c.nodes[&3].stats().rejected_revoked > 0);
    assert!(c.reports.is_empty(), "the relay was blamed: {:?}", c.reports);
}
