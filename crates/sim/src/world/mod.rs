//! The simulated world: nodes, disks, network, clients and the event loop.

//! `driver` executes the nodes' actions and models their disks.

use crate::check::{self, AckedWrite, MaybeWrite, WriteKind};
use crate::config::{SimConfig, SimReport};
use crate::net::{self, Faults};
use chorus_core::crdt::Op;
use chorus_core::node::{Action, LocalWrite, Member, MemberState, Node, NodeConfig};
use chorus_core::persist::{self, PersistBatch, RecoveryImage};
use chorus_core::wire::{self, Message};
use chorus_core::{Dot, NodeId, PersistId, RequestId, Rng, Timestamp, ValueType, WriteError, limits};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::rc::Rc;

mod driver;

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
        node.handle_local_writes(now, vec![(RequestId(request), LocalWrite::new(ns.to_string(), key.clone(), op))]);
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
