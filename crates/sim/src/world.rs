//! The simulated world: nodes, disks, network, clients and the event loop.

use crate::check::{self, AckedWrite, MaybeWrite, WriteKind};
use crate::net::{self, Faults};
use chorus_core::crdt::Op;
#[cfg(feature = "test-knobs")]
use chorus_core::node::InjectedBug;
use chorus_core::node::{Action, LocalWrite, Member, MemberState, Node, NodeConfig};
use chorus_core::persist::{self, PersistBatch, RecoveryImage};
use chorus_core::wire::{self, Message};
use chorus_core::{Dot, NodeId, PersistId, RequestId, Rng, Timestamp, ValueType, WriteError, limits};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::rc::Rc;

/// Everything that determines a run. Equal configs give equal runs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: u32,
    pub seed: u64,
    /// Probability that a message is lost during chaos.
    pub loss: f64,
    /// Probability that a message is delivered twice during chaos.
    pub duplicate: f64,
    /// Partitions come and go during chaos.
    pub partitions: bool,
    /// Nodes crash (sometimes in the middle of a write) and restart.
    pub crashes: bool,
    /// Each node's clock is off by up to ± this much.
    pub skew_ms: u64,
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// Extra random delay per message; makes messages overtake each other.
    pub jitter_ms: u64,
    pub chaos_ms: u64,
    /// Heal phase deadline: not converged by then is a violation.
    pub heal_max_ms: u64,
    /// Client writes issued during chaos.
    pub writes: u32,
    pub keys_per_namespace: u32,
    pub anti_entropy_interval_ms: u64,
    /// How long the (oracle) failure detector takes to notice a change.
    pub detection_ms: u64,
    /// Fanout override (0: protocol default).
    pub fanout: u32,
    /// Writes issued in the broadcast probe phase (see [`SimReport`]).
    pub probe_writes: u32,
    /// A Persist completes after a seeded delay of up to this much (its
    /// completion never overtakes an earlier batch's), so several batches
    /// are in flight at once, as with the daemon's pipelined group commit.
    pub disk_delay_max_us: u64,
    /// Probability that a batch fails during chaos (a disk error): the node
    /// halts, saying why, and is restarted from its disk.
    pub disk_errors: f64,
    /// Exists only with the `test-knobs` feature.
    #[cfg(feature = "test-knobs")]
    pub injected_bug: Option<InjectedBug>,
}

impl SimConfig {
    /// A cluster of `nodes` with every fault off and defaults sized to the
    /// cluster (more nodes: more writes, longer phases).
    pub fn new(nodes: u32, seed: u64) -> Self {
        Self {
            nodes,
            seed,
            loss: 0.0,
            duplicate: 0.0,
            partitions: false,
            crashes: false,
            skew_ms: 0,
            latency_min_ms: 1,
            latency_max_ms: 20,
            jitter_ms: 5,
            chaos_ms: 10_000,
            heal_max_ms: 120_000,
            writes: nodes.clamp(100, 1000),
            keys_per_namespace: 32,
            anti_entropy_interval_ms: 1000,
            detection_ms: 1500,
            fanout: 0,
            probe_writes: 20,
            disk_delay_max_us: 4_000,
            disk_errors: 0.0,
            #[cfg(feature = "test-knobs")]
            injected_bug: None,
        }
    }

    /// Every fault type on (the checkers' hardest setting).
    pub fn with_all_faults(mut self) -> Self {
        self.loss = 0.05;
        self.duplicate = 0.02;
        self.partitions = true;
        self.crashes = true;
        self.skew_ms = 100;
        self.disk_errors = 0.0005;
        self
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!("chorus sim --nodes {} --seed {}", self.nodes, self.seed);
        if self.loss > 0.0 {
            cmd.push_str(&format!(" --loss {}", self.loss));
        }
        if self.duplicate > 0.0 {
            cmd.push_str(&format!(" --duplicate {}", self.duplicate));
        }
        if self.partitions {
            cmd.push_str(" --partitions");
        }
        if self.crashes {
            cmd.push_str(" --crashes");
        }
        if self.disk_errors > 0.0 {
            cmd.push_str(&format!(" --disk-errors {}", self.disk_errors));
        }
        if self.disk_delay_max_us != SimConfig::new(self.nodes, 0).disk_delay_max_us {
            cmd.push_str(&format!(" --disk-delay-max-us {}", self.disk_delay_max_us));
        }
        if self.skew_ms > 0 {
            cmd.push_str(&format!(" --skew-ms {}", self.skew_ms));
        }
        if self.writes != SimConfig::new(self.nodes, 0).writes {
            cmd.push_str(&format!(" --writes {}", self.writes));
        }
        if self.chaos_ms != 10_000 {
            cmd.push_str(&format!(" --chaos-ms {}", self.chaos_ms));
        }
        #[cfg(feature = "test-knobs")]
        if let Some(bug) = self.injected_bug {
            cmd.push_str(&format!(" --inject-bug {}", crate::bug_name(bug)));
        }
        cmd
    }
}

/// What a run measured. Field names are a stable interface (`chorus sim --json`).
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    pub nodes: u32,
    pub seed: u64,
    pub converged: bool,
    /// Gossip rounds (hops) a probe write needed to reach the last node,
    /// the maximum over the probe writes that reached every node by push.
    ///
    /// Broadcast is measured in a probe phase after the cluster converged:
    /// the chaos phase's loss is back on, anti-entropy messages are held
    /// (a node that got a write by anti-entropy first would not forward
    /// its push, confounding the measurement), and `probe_writes` writes
    /// are issued 500 ms apart. Then anti-entropy resumes, loss stops, and
    /// the checkers run after a second convergence.
    pub rounds_to_converge: u32,
    /// Virtual time from the start of the heal phase until every node held
    /// identical state.
    pub virtual_ms_to_converge: u64,
    pub messages_per_node: f64,
    pub bytes_per_node: f64,
    /// Checker failures, each `checker: what happened`; empty when every
    /// invariant held.
    pub violations: Vec<String>,
    /// How many violations each checker reported (names in `check`).
    pub violations_by_checker: BTreeMap<String, u64>,
    pub peak_rss_bytes: u64,
    pub writes_attempted: u64,
    pub writes_acked: u64,
    /// Fraction of probe writes that reached every node by push alone.
    pub push_complete_fraction: f64,
    pub probe_writes: u32,
    /// Propagation latencies are those of the probe writes' push
    /// deliveries, in virtual time.
    /// Push rounds allowed (the protocol's hop limit): log2(N) + 3.
    pub push_round_limit: u32,
    pub propagation_p50_ms: f64,
    pub propagation_p99_ms: f64,
    pub crashes: u32,
    pub partitions: u32,
    /// Batches that failed (injected disk errors); each halted its node.
    pub disk_errors: u32,
    /// Most batches one node had in flight at once.
    pub persists_in_flight_max: u64,
    pub virtual_ms_total: u64,
    pub replay: String,
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: u32,
        to: u32,
        bytes: Rc<Vec<u8>>,
    },
    /// The oldest in-flight batch of `node` completes (if the node is still
    /// the same incarnation).
    Persisted {
        node: u32,
        incarnation: u64,
    },
    Timeout {
        node: u32,
    },
    Write {
        node: u32,
    },
    Crash {
        node: u32,
    },
    Restart {
        node: u32,
    },
    PartitionStart,
    PartitionEnd,
    Membership,
    Heal,
    Check,
    ProbeEnd,
}

struct Scheduled {
    at_us: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at_us, self.seq) == (o.at_us, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at_us, self.seq).cmp(&(o.at_us, o.seq))
    }
}

struct SimNode {
    node: Option<Node>,
    /// What survives a crash.
    disk: RecoveryImage,
    /// Batches handed to the disk and not yet durable, oldest first.
    in_flight: VecDeque<(PersistId, PersistBatch)>,
    /// When the newest in-flight batch completes (completions keep order).
    last_completion_us: u64,
    /// Bumped at every crash, so completions of a dead process are ignored.
    incarnation: u64,
    /// Per namespace, the greatest own dot counter any durable record on
    /// this node's disk reflects: what `sent_before_durable` and
    /// `ack_before_durable` compare against.
    durable_own: HashMap<String, u64>,
    skew_us: i64,
    timeout_at: Option<u64>,
    last_issued: Option<Timestamp>,
    restarts: u64,
    /// Keys this node deleted from its disk: collected tombstones.
    collected: BTreeSet<(String, Vec<u8>)>,
}

/// A client write waiting for its outcome.
struct PendingWrite {
    node: usize,
    namespace: &'static str,
    namespace_type: ValueType,
    key: Vec<u8>,
    kind: WriteKind,
    at_us: u64,
    probe: bool,
}

/// Per-write propagation bookkeeping.
struct Propagation {
    at_us: u64,
    reached_by_push: u32,
    round_max: u32,
}

/// Virtual time starts here so that negative skews stay positive.
const EPOCH_US: u64 = 1_000_000_000_000;
/// Chance that a crash lands in the middle of a client write, after the
/// node accepted it but before its commit became durable.
const TORN_WRITE_CRASH_P: f64 = 0.002;
/// How often the heal phase looks for convergence.
const CHECK_INTERVAL_US: u64 = 100_000;
/// Spacing of the broadcast probe writes.
const PROBE_SPACING_US: u64 = 500_000;

struct World {
    cfg: SimConfig,
    rng: Rng,
    now_us: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<SimNode>,
    faults: Faults,
    healing: bool,
    probing: bool,
    probed: bool,
    probe_dots: BTreeSet<(String, Dot)>,
    heal_at_us: u64,
    converged_at_us: Option<u64>,
    final_converged: bool,
    acked: Vec<AckedWrite>,
    /// Writes whose outcome their client never learned.
    maybe: Vec<MaybeWrite>,
    violations: Vec<String>,
    propagation: HashMap<(String, Dot), Propagation>,
    latencies_us: Vec<u64>,
    messages: u64,
    bytes: u64,
    writes_attempted: u64,
    crashes: u32,
    partitions: u32,
    disk_errors: u32,
    persists_in_flight_max: u64,
    write_counter: u64,
    pending_writes: HashMap<u64, PendingWrite>,
    /// Own dots a node exposed (pushed or acknowledged): (node, namespace,
    /// counter) → the write's (key, timestamp). A dot exposed twice with
    /// different writes is a reused dot.
    exposed: HashMap<(usize, String, u64), (Vec<u8>, Timestamp)>,
}

fn node_id(i: usize) -> NodeId {
    NodeId(i as u64 + 1)
}

fn index_of(id: NodeId, n: usize) -> Option<usize> {
    let i = id.0.checked_sub(1)? as usize;
    (i < n).then_some(i)
}

impl World {
    fn new(cfg: SimConfig) -> Self {
        let mut rng = Rng::new(cfg.seed);
        let n = cfg.nodes as usize;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let skew = if cfg.skew_ms > 0 {
                let span = cfg.skew_ms * 1000;
                rng.below(2 * span + 1) as i64 - span as i64
            } else {
                0
            };
            let node = Node::new(node_id(i), node_config(&cfg), rng.next_u64());
            nodes.push(SimNode {
                node: Some(node),
                disk: RecoveryImage::new(),
                skew_us: skew,
                timeout_at: None,
                last_issued: None,
                restarts: 0,
                collected: BTreeSet::new(),
                in_flight: VecDeque::new(),
                last_completion_us: 0,
                incarnation: 0,
                durable_own: HashMap::new(),
            });
        }
        World {
            rng,
            now_us: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            faults: Faults::default(),
            healing: false,
            probing: false,
            probed: false,
            probe_dots: BTreeSet::new(),
            heal_at_us: cfg.chaos_ms * 1000,
            converged_at_us: None,
            final_converged: false,
            acked: Vec::new(),
            maybe: Vec::new(),
            violations: Vec::new(),
            propagation: HashMap::new(),
            latencies_us: Vec::new(),
            messages: 0,
            bytes: 0,
            writes_attempted: 0,
            crashes: 0,
            partitions: 0,
            disk_errors: 0,
            persists_in_flight_max: 0,
            write_counter: 0,
            pending_writes: HashMap::new(),
            exposed: HashMap::new(),
            cfg,
        }
    }

    fn schedule(&mut self, at_us: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled { at_us, seq: self.seq, event }));
    }

    fn physical_us(&self, i: usize) -> u64 {
        (EPOCH_US as i64 + self.now_us as i64 + self.nodes[i].skew_us) as u64
    }

    fn membership_for(&self, i: usize) -> Vec<Member> {
        (0..self.nodes.len())
            .map(|j| Member {
                id: node_id(j),
                tier: 0,
                state: if self.nodes[j].node.is_some() && self.faults.connected(i, j) {
                    MemberState::Alive
                } else {
                    MemberState::Down
                },
            })
            .collect()
    }

    fn refresh_membership(&mut self, i: usize) {
        let members = self.membership_for(i);
        let now = self.physical_us(i);
        if let Some(node) = self.nodes[i].node.as_mut() {
            node.set_members(now, &members);
        }
        self.after_input(i);
    }

    /// Execute the actions a node queued, in order, and re-arm its timer.
    /// The driver contract (`chorus_core::node`): a Persist goes to the
    /// disk and completes later; everything else runs as it comes out.
    fn after_input(&mut self, i: usize) {
        loop {
            let Some(node) = self.nodes[i].node.as_mut() else { return };
            let Some(action) = node.poll_action() else { break };
            let in_flight = node.persists_in_flight();
            match action {
                Action::Persist { id, batch } => {
                    self.persists_in_flight_max = self.persists_in_flight_max.max(in_flight);
                    let delay = self.rng.below(self.cfg.disk_delay_max_us + 1);
                    let at = (self.now_us + delay).max(self.nodes[i].last_completion_us);
                    self.nodes[i].last_completion_us = at;
                    self.nodes[i].in_flight.push_back((id, batch));
                    let incarnation = self.nodes[i].incarnation;
                    self.schedule(at, Event::Persisted { node: i as u32, incarnation });
                }
                Action::Send { to, message } => {
                    self.check_send(i, &message);
                    self.send(i, to, &message);
                }
                Action::WriteDone { request, result } => self.write_done(i, request, result),
                Action::NamespaceDone { .. } | Action::ReadReady { .. } => {}
                Action::Halted(h) => {
                    // A real driver stops the process; a supervisor restarts it.
                    let _ = h;
                    self.crash(i);
                    return;
                }
            }
        }
        let timeout = self.nodes[i].node.as_ref().and_then(|n| n.poll_timeout());
        if let Some(t) = timeout {
            // Node timeouts are in its own physical time; convert back.
            let at = (t as i64 - EPOCH_US as i64 - self.nodes[i].skew_us).max(self.now_us as i64) as u64;
            if self.nodes[i].timeout_at.is_none_or(|cur| at < cur || cur < self.now_us) {
                self.nodes[i].timeout_at = Some(at);
                self.schedule(at, Event::Timeout { node: i as u32 });
            }
        }
    }

    /// The oldest in-flight batch of node `i` completes: durable, or (an
    /// injected disk error) failed.
    fn persisted(&mut self, i: usize, incarnation: u64) {
        if self.nodes[i].incarnation != incarnation || self.nodes[i].node.is_none() {
            return;
        }
        let Some((id, batch)) = self.nodes[i].in_flight.pop_front() else { return };
        if !self.healing && self.rng.chance(self.cfg.disk_errors) {
            self.disk_errors += 1;
            // The batch did not reach the disk, and nothing after it will:
            // the node halts (its outcomes come out) and is restarted.
            self.nodes[i].in_flight.clear();
            if let Some(node) = self.nodes[i].node.as_mut() {
                node.handle_persist_failed(id, "injected disk error");
            }
        } else {
            self.write_to_disk(i, batch);
            if let Some(node) = self.nodes[i].node.as_mut() {
                node.handle_persisted(id);
            }
        }
        self.after_input(i);
    }

    /// Apply a batch to node `i`'s durable image.
    fn write_to_disk(&mut self, i: usize, batch: PersistBatch) {
        let me = node_id(i);
        for op in batch.ops {
            match op.value {
                Some(v) => {
                    // What our own dots the durable state reflects, decoded
                    // from the bytes (not taken from the node's word).
                    let own = if let Some(ns) = op.space.strip_prefix("e.") {
                        persist::decode_entry(&v).ok().map(|r| (ns.to_string(), r.entry.clock().get(me)))
                    } else if op.space == persist::NAMESPACES_SPACE {
                        persist::decode_namespace(&v).ok().map(|r| {
                            (String::from_utf8_lossy(&op.key).into_owned(), r.seen.to_seen().contiguous().get(me))
                        })
                    } else {
                        None
                    };
                    if let Some((ns, c)) = own {
                        let slot = self.nodes[i].durable_own.entry(ns).or_default();
                        *slot = (*slot).max(c);
                    }
                    self.nodes[i].disk.entry(op.space).or_default().insert(op.key, v);
                }
                None => {
                    if let Some(ns) = op.space.strip_prefix("e.") {
                        self.nodes[i].collected.insert((ns.to_string(), op.key.clone()));
                    }
                    let disk = &mut self.nodes[i].disk;
                    disk.entry(op.space).or_default().remove(&op.key);
                }
            }
        }
    }

    fn violation(&mut self, checker: &'static str, detail: String) {
        self.violations.push(format!("{checker}: {detail}"));
    }

    /// `sent_before_durable`: every claim about our own dots in a message
    /// (a pushed write, an entry's clock, a seen set) must already be on our
    /// disk; otherwise a crash lets the restarted node reuse a dot a peer
    /// has seen. Also records pushed own dots for `dot_reused`.
    fn check_send(&mut self, i: usize, message: &Message) {
        let me = node_id(i);
        let mut claims: Vec<(&str, u64)> = Vec::new();
        let mut pushed: Vec<(&str, u64, &[u8], Timestamp)> = Vec::new();
        match message {
            Message::Push(p) => {
                for item in &p.items {
                    claims.push((&item.namespace, item.entry.clock().get(me)));
                    if item.dot.node == me {
                        pushed.push((&item.namespace, item.dot.counter, &item.key, item.ts));
                    }
                }
            }
            Message::SyncRequest(r) => {
                for s in &r.summaries {
                    claims.push((&s.namespace, seen_claim(&s.seen, me)));
                }
            }
            Message::SyncReply(r) => deltas_claims(&r.deltas, me, &mut claims),
            Message::SyncPush(p) => deltas_claims(&p.deltas, me, &mut claims),
            _ => {}
        }
        let mut found = Vec::new();
        for (ns, c) in claims {
            let durable = self.nodes[i].durable_own.get(ns).copied().unwrap_or(0);
            if c > durable {
                found.push(format!(
                    "node {i} sent a message claiming its own dot {c} of {ns} while only {durable} was durable"
                ));
            }
        }
        let pushed: Vec<(String, u64, Vec<u8>, Timestamp)> =
            pushed.into_iter().map(|(n, c, k, t)| (n.to_string(), c, k.to_vec(), t)).collect();
        for d in found {
            self.violation(check::SENT_BEFORE_DURABLE, d);
        }
        for (ns, counter, key, ts) in pushed {
            self.expose(i, ns, counter, key, ts);
        }
    }

    /// `dot_reused`: an own dot exposed (pushed or acknowledged) must always
    /// name the same write.
    fn expose(&mut self, i: usize, ns: String, counter: u64, key: Vec<u8>, ts: Timestamp) {
        match self.exposed.get(&(i, ns.clone(), counter)) {
            Some((k, t)) if *k != key || *t != ts => {
                let detail = format!(
                    "node {i} exposed dot {counter} of {ns} for key {:?} at {ts}, but it already named key {:?} at {t}",
                    String::from_utf8_lossy(&key),
                    String::from_utf8_lossy(k)
                );
                self.violation(check::DOT_REUSED, detail);
            }
            Some(_) => {}
            None => {
                self.exposed.insert((i, ns, counter), (key, ts));
            }
        }
    }

    /// A write's outcome reached its client.
    fn write_done(&mut self, i: usize, request: RequestId, result: Result<chorus_core::WriteReceipt, WriteError>) {
        let Some(w) = self.pending_writes.remove(&request.0) else { return };
        debug_assert_eq!(w.node, i);
        let receipt = match result {
            Ok(r) => r,
            // Refused by a halted node: nothing changed.
            Err(WriteError::Halted(_)) => return,
            // The batch failed: the outcome is unknown.
            Err(WriteError::PersistFailed(_)) => {
                self.maybe.push(MaybeWrite {
                    namespace: w.namespace.to_string(),
                    key: w.key,
                    kind: w.kind,
                    at_us: w.at_us,
                });
                return;
            }
            Err(e) => {
                self.violation(check::VALID_WRITE_REFUSED, format!("node {i}: a valid write was refused: {e}"));
                return;
            }
        };
        // `ack_before_durable`: the acknowledged write is on this node's disk.
        let space = persist::entries_space(w.namespace);
        let on_disk = self.nodes[i]
            .disk
            .get(&space)
            .and_then(|s| s.get(&w.key))
            .and_then(|v| persist::decode_entry(v).ok())
            .is_some_and(|r| r.entry.clock().contains(receipt.dot));
        let collected = self.nodes[i].collected.contains(&(w.namespace.to_string(), w.key.clone()));
        if !on_disk && !collected {
            self.violation(
                check::ACK_BEFORE_DURABLE,
                format!(
                    "node {i} acknowledged {:?} of {}/{} (dot {}) before it was durable",
                    w.kind,
                    w.namespace,
                    String::from_utf8_lossy(&w.key),
                    receipt.dot
                ),
            );
        }
        if let Some(last) = self.nodes[i].last_issued
            && receipt.ts <= last
        {
            self.violation(
                check::HLC_MONOTONE,
                format!("node {i}: HLC went backwards: issued {} after {last}", receipt.ts),
            );
        }
        self.nodes[i].last_issued = Some(receipt.ts);
        self.expose(i, w.namespace.to_string(), receipt.dot.counter, w.key.clone(), receipt.ts);
        if w.probe {
            self.probe_dots.insert((w.namespace.to_string(), receipt.dot));
            self.propagation.insert(
                (w.namespace.to_string(), receipt.dot),
                Propagation { at_us: w.at_us, reached_by_push: 0, round_max: 0 },
            );
        }
        self.acked.push(AckedWrite {
            node: i,
            namespace: w.namespace.to_string(),
            namespace_type: w.namespace_type,
            key: w.key,
            kind: w.kind,
            dot: receipt.dot,
            ts: receipt.ts,
            at_us: w.at_us,
        });
    }

    fn send(&mut self, from: usize, to: NodeId, message: &Message) {
        let Some(j) = index_of(to, self.nodes.len()) else { return };
        let bytes = Rc::new(wire::encode(message));
        self.messages += 1;
        self.bytes += bytes.len() as u64;
        if !self.faults.connected(from, j) || self.rng.chance(self.faults.loss) {
            return;
        }
        let copies = if self.rng.chance(self.faults.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let base = net::base_latency_us(
                self.cfg.seed,
                from,
                j,
                self.cfg.latency_min_ms * 1000,
                self.cfg.latency_max_ms * 1000,
            );
            let jitter = self.rng.below(self.cfg.jitter_ms * 1000 + 1);
            let at = self.now_us + base + jitter;
            self.schedule(at, Event::Deliver { from: from as u32, to: j as u32, bytes: Rc::clone(&bytes) });
        }
    }

    fn deliver(&mut self, from: usize, to: usize, bytes: &[u8]) {
        if self.nodes[to].node.is_none() || !self.faults.connected(from, to) {
            return;
        }
        let message = match wire::decode(bytes, limits::VALUE_BYTES_DEFAULT) {
            Ok(m) => m,
            Err(e) => {
                self.violation(check::DECODE, format!("node {to} could not decode a message from node {from}: {e}"));
                return;
            }
        };
        if self.probing && !matches!(message, Message::Push(_)) {
            return;
        }
        if let (Message::Push(p), Some(node)) = (&message, self.nodes[to].node.as_ref()) {
            for item in &p.items {
                let fresh = node.namespace(&item.namespace).is_none_or(|ns| !ns.seen().contains(item.dot));
                if fresh && let Some(prop) = self.propagation.get_mut(&(item.namespace.clone(), item.dot)) {
                    prop.reached_by_push += 1;
                    prop.round_max = prop.round_max.max(u32::from(p.hops) + 1);
                    self.latencies_us.push(self.now_us.saturating_sub(prop.at_us));
                }
            }
        }
        let now = self.physical_us(to);
        if let Some(node) = self.nodes[to].node.as_mut() {
            node.handle_message(now, node_id(from), message);
        }
        self.after_input(to);
    }

    fn client_write(&mut self, i: usize) {
        self.writes_attempted += 1;
        self.write_counter += 1;
        let (ns, ty) = check::standard_namespaces()[self.rng.below(4) as usize];
        let key = format!("k{}", self.rng.below(u64::from(self.cfg.keys_per_namespace))).into_bytes();
        let Some(node) = self.nodes[i].node.as_ref() else { return };
        let context = node.get(ns, &key).map(|r| r.context);
        let roll = self.rng.below(100);
        let value = format!("v{}", self.write_counter).into_bytes();
        let member = format!("m{}", self.rng.below(16)).into_bytes();
        let (op, kind) = match ty {
            chorus_core::ValueType::Lww if roll < 85 => {
                (Op::Put { value: value.clone(), context: None }, WriteKind::Put(value))
            }
            chorus_core::ValueType::Lww => (Op::Delete { context: None }, WriteKind::Delete),
            chorus_core::ValueType::Mv if roll < 70 => {
                (Op::Put { value: value.clone(), context }, WriteKind::Put(value))
            }
            chorus_core::ValueType::Mv if roll < 85 => {
                (Op::Put { value: value.clone(), context: None }, WriteKind::Put(value))
            }
            chorus_core::ValueType::Mv => (Op::Delete { context }, WriteKind::Delete),
            chorus_core::ValueType::Counter => {
                let amount = self.rng.below(16) as i64 - 5;
                let amount = if amount == 0 { 1 } else { amount };
                (Op::Increment { amount }, WriteKind::Increment(amount))
            }
            chorus_core::ValueType::Set if roll < 70 => (Op::Add { member: member.clone() }, WriteKind::Add(member)),
            chorus_core::ValueType::Set => {
                (Op::Remove { member: member.clone(), context: None }, WriteKind::Remove(member))
            }
        };
        let torn = self.cfg.crashes && !self.healing && self.rng.chance(TORN_WRITE_CRASH_P);
        let now = self.physical_us(i);
        let request = self.write_counter;
        let Some(node) = self.nodes[i].node.as_mut() else { return };
        node.handle_local_writes(
            now,
            vec![(RequestId(request), LocalWrite { namespace: ns.to_string(), key: key.clone(), op })],
        );
        self.pending_writes.insert(
            request,
            PendingWrite {
                node: i,
                namespace: ns,
                namespace_type: ty,
                key,
                kind,
                at_us: self.now_us,
                probe: self.probing,
            },
        );
        self.after_input(i);
        if torn {
            // The process dies while the write's batch is in flight: it was
            // never acknowledged, and a prefix of what was in flight survives.
            self.crash(i);
        }
    }

    fn crash(&mut self, i: usize) {
        if self.nodes[i].node.take().is_some() {
            self.crashes += 1;
            self.nodes[i].timeout_at = None;
            self.nodes[i].incarnation += 1;
            // A prefix of the batches in flight reached the disk.
            let in_flight = std::mem::take(&mut self.nodes[i].in_flight);
            let survive = self.rng.below(in_flight.len() as u64 + 1) as usize;
            for (_, batch) in in_flight.into_iter().take(survive) {
                self.write_to_disk(i, batch);
            }
            self.nodes[i].last_completion_us = 0;
            // Writes in flight at the crash: their clients never hear back,
            // and the surviving prefix may hold some of them.
            let lost: Vec<u64> = self.pending_writes.iter().filter(|(_, w)| w.node == i).map(|(r, _)| *r).collect();
            for r in lost {
                if let Some(w) = self.pending_writes.remove(&r) {
                    self.maybe.push(MaybeWrite {
                        namespace: w.namespace.to_string(),
                        key: w.key,
                        kind: w.kind,
                        at_us: w.at_us,
                    });
                }
            }
            let down_for = 500_000 + self.rng.below(3_000_000);
            let at = (self.now_us + down_for).min(self.heal_at_us);
            self.schedule(at, Event::Restart { node: i as u32 });
            self.schedule(self.now_us + self.cfg.detection_ms * 1000, Event::Membership);
        }
    }

    fn restart(&mut self, i: usize) {
        if self.nodes[i].node.is_some() {
            return;
        }

        self.nodes[i].restarts += 1;
        let seed = self.rng.next_u64();
        match Node::recover(node_id(i), node_config(&self.cfg), seed, &self.nodes[i].disk) {
            Ok(node) => {
                if let Some(last) = self.nodes[i].last_issued
                    && node.hlc_high_water() < last
                {
                    let detail =
                        format!("node {i}: recovered HLC high water {} is below issued {last}", node.hlc_high_water());
                    self.violation(check::HLC_MONOTONE, detail);
                }
                self.nodes[i].node = Some(node);
                self.refresh_membership(i);
                self.schedule(self.now_us + self.cfg.detection_ms * 1000, Event::Membership);
            }
            Err(e) => self.violation(check::RECOVERY, format!("node {i}: recovery failed: {e}")),
        }
    }

    fn converged_now(&self) -> bool {
        let live: Vec<&Node> = self.nodes.iter().filter_map(|n| n.node.as_ref()).collect();
        live.len() == self.nodes.len() && check::convergence(&live).is_empty()
    }

    fn run(mut self) -> SimReport {
        let n = self.nodes.len();
        let chaos_us = self.cfg.chaos_ms * 1000;
        for i in 0..n {
            for (name, ty) in check::standard_namespaces() {
                if let Some(node) = self.nodes[i].node.as_mut()
                    && let Err(e) = node.create_namespace(name, ty)
                {
                    self.violation(check::VALID_WRITE_REFUSED, format!("node {i}: {e}"));
                }
            }
            // Like the daemon at startup: the namespaces every client may
            // use are durable before the node serves anyone.
            while let Some(action) = self.nodes[i].node.as_mut().and_then(Node::poll_action) {
                if let Action::Persist { id, batch } = action {
                    self.write_to_disk(i, batch);
                    if let Some(node) = self.nodes[i].node.as_mut() {
                        node.handle_persisted(id);
                    }
                }
            }
            self.refresh_membership(i);
        }
        for _ in 0..self.cfg.writes {
            let at = self.rng.below(chaos_us.max(1));
            let node = self.rng.below(n as u64) as u32;
            self.schedule(at, Event::Write { node });
        }
        if self.cfg.crashes {
            let count = (n / 3).clamp(1, 50) as u64;
            for _ in 0..count {
                let at = self.rng.below(chaos_us.max(1));
                let node = self.rng.below(n as u64) as u32;
                self.schedule(at, Event::Crash { node });
            }
        }
        if self.cfg.partitions {
            let mut t = self.rng.below(chaos_us / 4 + 1);
            while t < chaos_us {
                self.schedule(t, Event::PartitionStart);
                let length = 500_000 + self.rng.below(chaos_us / 3 + 1);
                self.schedule((t + length).min(chaos_us), Event::PartitionEnd);
                t += length + 200_000 + self.rng.below(chaos_us / 4 + 1);
            }
        }
        self.faults.loss = self.cfg.loss;
        self.faults.duplicate = self.cfg.duplicate;
        self.schedule(chaos_us, Event::Heal);
        let deadline =
            chaos_us + self.cfg.heal_max_ms * 1000 + u64::from(self.cfg.probe_writes) * PROBE_SPACING_US + 1_000_000;
        while let Some(Reverse(s)) = self.queue.pop() {
            if s.at_us > deadline || self.final_converged {
                break;
            }
            self.now_us = s.at_us;
            match s.event {
                Event::Deliver { from, to, bytes } => self.deliver(from as usize, to as usize, &bytes),
                Event::Persisted { node, incarnation } => self.persisted(node as usize, incarnation),
                Event::Timeout { node } => {
                    let i = node as usize;
                    if self.nodes[i].timeout_at == Some(self.now_us) {
                        self.nodes[i].timeout_at = None;
                    }
                    let now = self.physical_us(i);
                    if let Some(node) = self.nodes[i].node.as_mut()
                        && node.poll_timeout().is_some_and(|t| t <= now)
                    {
                        node.handle_timeout(now);
                    }
                    self.after_input(i);
                }
                Event::Write { node } => self.client_write(node as usize),
                Event::Crash { node } => {
                    if !self.healing {
                        self.crash(node as usize);
                    }
                }
                Event::Restart { node } => self.restart(node as usize),
                Event::PartitionStart => {
                    if !self.healing {
                        self.partitions += 1;
                        let sides: Vec<u8> = (0..n).map(|_| self.rng.below(2) as u8).collect();
                        self.faults.partition = Some(sides);
                        self.schedule(self.now_us + self.cfg.detection_ms * 1000, Event::Membership);
                    }
                }
                Event::PartitionEnd => {
                    self.faults.partition = None;
                    self.schedule(self.now_us + self.cfg.detection_ms * 1000, Event::Membership);
                }
                Event::Membership => {
                    for i in 0..n {
                        self.refresh_membership(i);
                    }
                }
                Event::Heal => {
                    self.healing = true;
                    self.faults = Faults::default();
                    for i in 0..n {
                        self.restart(i);
                    }
                    self.schedule(self.now_us + self.cfg.detection_ms * 1000, Event::Membership);
                    self.schedule(self.now_us, Event::Check);
                }
                Event::Check => {
                    if !self.converged_now() {
                        self.schedule(self.now_us + CHECK_INTERVAL_US, Event::Check);
                    } else if self.probed || self.cfg.probe_writes == 0 {
                        self.final_converged = true;
                        if self.converged_at_us.is_none() {
                            self.converged_at_us = Some(self.now_us);
                        }
                    } else {
                        self.converged_at_us = Some(self.now_us);
                        self.probing = true;
                        self.faults.loss = self.cfg.loss;
                        for k in 0..u64::from(self.cfg.probe_writes) {
                            let node = self.rng.below(n as u64) as u32;
                            self.schedule(self.now_us + 1 + k * PROBE_SPACING_US, Event::Write { node });
                        }
                        let end = self.now_us + u64::from(self.cfg.probe_writes) * PROBE_SPACING_US + 1_000_000;
                        self.schedule(end, Event::ProbeEnd);
                    }
                }
                Event::ProbeEnd => {
                    self.probing = false;
                    self.probed = true;
                    self.faults = Faults::default();
                    self.schedule(self.now_us, Event::Check);
                }
            }
        }
        self.finish()
    }

    fn finish(mut self) -> SimReport {
        let n = self.nodes.len();
        let converged = self.final_converged;
        let live: Vec<&Node> = self.nodes.iter().filter_map(|x| x.node.as_ref()).collect();
        let mut violations = std::mem::take(&mut self.violations);
        if !converged {
            violations.push(format!(
                "{}: not converged {} ms after heal: {}",
                check::CONVERGENCE,
                self.cfg.heal_max_ms,
                check::convergence(&live).join("; ")
            ));
        }
        let named = |name: &'static str, found: Vec<String>| found.into_iter().map(move |v| format!("{name}: {v}"));
        violations.extend(named(check::DOTS_UNIQUE, check::dots_unique(&self.acked)));
        for sim_node in &self.nodes {
            if let Some(node) = &sim_node.node {
                let lost = check::acked_writes_survive(node, &self.acked, &self.maybe, &sim_node.collected);
                violations.extend(named(check::ACKED_WRITES_SURVIVE, lost));
                let unsound = check::seen_implies_reflected(node, &self.acked, &sim_node.collected);
                violations.extend(named(check::SEEN_IMPLIES_REFLECTED, unsound));
            }
        }
        let mut violations_by_checker: BTreeMap<String, u64> = BTreeMap::new();
        for v in &violations {
            let name = v.split(':').next().unwrap_or_default();
            *violations_by_checker.entry(name.to_string()).or_default() += 1;
        }
        if violations.len() > 50 {
            let extra = violations.len() - 50;
            violations.truncate(50);
            violations.push(format!("... and {extra} more violations"));
        }
        let others = n.saturating_sub(1) as u32;
        let complete = self.propagation.values().filter(|p| p.reached_by_push >= others).count();
        let rounds =
            self.propagation.values().filter(|p| p.reached_by_push >= others).map(|p| p.round_max).max().unwrap_or(0);
        self.latencies_us.sort_unstable();
        let pct = |q: f64| -> f64 {
            if self.latencies_us.is_empty() {
                return 0.0;
            }
            let idx = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
            self.latencies_us[idx] as f64 / 1000.0
        };
        let push_round_limit = 64 - (n as u64).saturating_sub(1).leading_zeros() + 3;
        SimReport {
            nodes: self.cfg.nodes,
            seed: self.cfg.seed,
            converged,
            rounds_to_converge: rounds,
            virtual_ms_to_converge: self.converged_at_us.map(|t| (t - self.heal_at_us) / 1000).unwrap_or(0),
            messages_per_node: self.messages as f64 / n.max(1) as f64,
            bytes_per_node: self.bytes as f64 / n.max(1) as f64,
            violations,
            violations_by_checker,
            peak_rss_bytes: peak_rss_bytes(),
            writes_attempted: self.writes_attempted,
            writes_acked: self.acked.len() as u64,
            push_complete_fraction: if self.propagation.is_empty() {
                1.0
            } else {
                complete as f64 / self.propagation.len() as f64
            },
            push_round_limit,
            probe_writes: self.probe_dots.len() as u32,
            propagation_p50_ms: pct(0.5),
            propagation_p99_ms: pct(0.99),
            crashes: self.crashes,
            partitions: self.partitions,
            disk_errors: self.disk_errors,
            persists_in_flight_max: self.persists_in_flight_max,
            virtual_ms_total: self.now_us / 1000,
            replay: self.cfg.replay_command(),
        }
    }
}

fn node_config(cfg: &SimConfig) -> NodeConfig {
    NodeConfig {
        anti_entropy_interval_us: cfg.anti_entropy_interval_ms * 1000,
        fanout: cfg.fanout,
        #[cfg(feature = "test-knobs")]
        injected_bug: cfg.injected_bug,
        ..NodeConfig::default()
    }
}

/// What a seen set claims about `me`'s own dots: the greatest counter.
fn seen_claim(seen: &wire::WireSeen, me: NodeId) -> u64 {
    let prefix = seen.contiguous.iter().filter(|(n, _)| *n == me).map(|(_, c)| *c).max().unwrap_or(0);
    let exceptions = seen.exceptions.iter().filter(|(n, _)| *n == me).flat_map(|(_, l)| l.iter().copied()).max();
    prefix.max(exceptions.unwrap_or(0))
}

fn deltas_claims<'a>(deltas: &'a [wire::NamespaceDelta], me: NodeId, claims: &mut Vec<(&'a str, u64)>) {
    for d in deltas {
        claims.push((&d.namespace, seen_claim(&d.seen, me)));
        for (_, e) in &d.entries {
            claims.push((&d.namespace, e.clock().get(me)));
        }
    }
}

/// The process's peak resident set (Linux `VmHWM`), 0 where unknown.
/// Read by the driver, never by protocol code.
fn peak_rss_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return 0 };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Run one simulation to completion.
pub fn run(config: SimConfig) -> SimReport {
    World::new(config).run()
}
