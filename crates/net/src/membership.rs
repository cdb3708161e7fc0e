//! SWIM membership: a tokio driver around the sans-IO `foca` crate.
//!
//! SWIM (see `docs/design/transport-and-membership.md`, "References") probes
//! one member per period, asks `k` others to probe indirectly when the direct
//! probe times out, suspects before declaring a member down, and piggybacks
//! membership updates on the probe traffic.
//!
//! foca packets ride on the transport's QUIC datagrams (membership channel),
//! so only nodes holding a CA-signed, unrevoked certificate take part, and
//! every packet's claimed sender name is checked against the authenticated
//! connection name before foca sees it.
//!
//! Identity: `{name, addr, api_addr, generation, tier}`. foca's `Identity::addr` is the
//! *name*, so a restarted node (same name, higher generation) replaces its
//! old self (`Rename`) instead of leaving a ghost. The generation must grow
//! across restarts: use e.g. boot time in microseconds, or a counter kept on
//! disk. `renew` (automatic rejoin after being wrongly declared down) adds 1.
//!
//! Seeds are plain socket addresses: the driver dials each with
//! [`Transport::identify`], which accepts any certificate the cluster CA
//! signed and reports the name it proved, then announces to that name.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use foca::{Codec, Foca, Identity, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::transport::{PeerAddr, PeerId, Transport};

/// Largest foca packet; fits [`crate::transport::DATAGRAM_PAYLOAD_BYTES_MAX`].
const PACKET_BYTES_MAX: usize = 1024;
/// Bound of the queue of membership datagrams from the transport.
const INBOUND_QUEUE_MAX: usize = 1024;
/// Bound of the command queue (leave).
const COMMAND_QUEUE_MAX: usize = 8;
/// How long the driver keeps running after a graceful leave so that the
/// "I left" updates it gossiped are flushed and re-gossiped to late probers.
const LEAVE_LINGER: Duration = Duration::from_millis(300);

/// A member's identity as carried in SWIM packets.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Node name; also the foca address (one live identity per name).
    pub name: String,
    /// Transport address.
    pub addr: SocketAddr,
    /// Where the member serves its client API (HTTP), as it advertises it,
    /// so a client that reaches one node can reach every node. `None` for a
    /// member that serves none. SWIM itself ignores it.
    pub api_addr: Option<SocketAddr>,
    /// Grows with every restart; the highest generation of a name wins.
    pub generation: u64,
    /// Topology tier 0–8, as the node declares it (`docs/design/clock.md`,
    /// "Tiers"). Carried in the identity so every member learns every other
    /// member's tier from SWIM gossip; the replication layer uses it to decide
    /// who may exchange data. SWIM itself ignores it (membership is
    /// cluster-wide).
    pub tier: u8,
    /// The member's write-signing key with the CA's signature over it
    /// (`docs/design/signing.md`, "Keys"): SWIM spreads it to every member.
    pub signing_key: Option<crate::ca::SigningCard>,
}

impl Identity for NodeIdentity {
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(NodeIdentity { generation: self.generation.checked_add(1)?, ..self.clone() })
    }

    fn addr(&self) -> String {
        self.name.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// SWIM state of a member as seen from this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; will be declared down unless it refutes in time.
    Suspect,
    /// Declared down (crashed, partitioned away, or left).
    Down,
}

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Node name.
    pub name: String,
    /// Transport address.
    pub addr: SocketAddr,
    /// Its client API address (see [`NodeIdentity::api_addr`]).
    pub api_addr: Option<SocketAddr>,
    /// Its SWIM state.
    pub state: MemberState,
    /// Its generation (restart counter).
    pub generation: u64,
    /// Its declared tier (see [`NodeIdentity::tier`]).
    pub tier: u8,
    /// Its write-signing card (see [`NodeIdentity::signing_key`]).
    pub signing_key: Option<crate::ca::SigningCard>,
}

impl MemberInfo {
    /// The address to reach it through the transport.
    pub fn peer_addr(&self) -> PeerAddr {
        PeerAddr { name: self.name.clone(), addr: self.addr }
    }
}

/// Membership changes, in the order this node learned them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipEvent {
    /// A member became active.
    Up(NodeIdentity),
    /// A member was declared down or left.
    Down(NodeIdentity),
    /// A member restarted: `new` (higher generation) replaced `old`.
    Replaced {
        /// The superseded identity.
        old: NodeIdentity,
        /// The identity now in use.
        new: NodeIdentity,
    },
    /// This node is known by at least one active member.
    Joined,
    /// Every other member is down: this node is alone.
    Alone,
    /// This node was declared down and rejoined with `identity`.
    Rejoined(NodeIdentity),
}

/// SWIM timing. The defaults suit a LAN (RTT well under 50 ms): a killed
/// node is declared down in about `probe_period + suspect_to_down_after`
/// plus the wait until someone probes it (≈ 1.2–2 s for 3–5 nodes).
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// A random member is probed this often.
    pub probe_period_ms: u64,
    /// Wait this long for a direct ack before asking others to probe.
    pub probe_rtt_ms: u64,
    /// Members asked to probe indirectly.
    pub indirect_probes: usize,
    /// A suspect not refuting within this is declared down.
    pub suspect_to_down_after_ms: u64,
    /// Times each update is piggybacked.
    pub max_transmissions: u8,
    /// Extra gossip (updates only) this often to `gossip_fanout` members.
    pub gossip_period_ms: u64,
    /// Members gossiped to per gossip period.
    pub gossip_fanout: usize,
    /// Ask a random member for more members this often.
    pub periodic_announce_ms: u64,
    /// Announce to a few down members this often, to heal partitions.
    /// After a heal each side sees the other as down, and re-forming takes
    /// a few announce periods (learn it was declared down, renew the
    /// identity, announce again), so this period bounds recovery time.
    pub announce_to_down_ms: u64,
    /// While no other member is known, re-dial seeds this often.
    pub join_retry_ms: u64,
    /// Forget down members after this long (memory is bounded by names
    /// anyway, since identities are keyed by name).
    pub remove_down_after_ms: u64,
    /// Capacity of the event broadcast channel (slow receivers lag).
    pub events_capacity: usize,
    /// Seed for the protocol RNG; `None` draws one from the OS.
    pub rng_seed: Option<u64>,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            probe_period_ms: 250,
            probe_rtt_ms: 80,
            indirect_probes: 3,
            suspect_to_down_after_ms: 750,
            max_transmissions: 8,
            gossip_period_ms: 150,
            gossip_fanout: 3,
            periodic_announce_ms: 10_000,
            announce_to_down_ms: 1_000,
            join_retry_ms: 500,
            remove_down_after_ms: 24 * 3600 * 1000,
            events_capacity: 1024,
            rng_seed: None,
        }
    }
}

/// Why membership could not start. Nothing is left running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// A configuration value is out of range.
    #[error("invalid membership config: {0}")]
    InvalidConfig(String),
    /// The identity's name differs from the transport's.
    #[error("identity name {identity} differs from the transport's {transport}")]
    NameMismatch {
        /// Name in the identity.
        identity: String,
        /// Name of the transport.
        transport: String,
    },
}

impl MembershipConfig {
    fn to_foca(&self) -> Result<foca::Config, MembershipError> {
        let invalid = |what: &str| MembershipError::InvalidConfig(what.to_owned());
        if self.probe_rtt_ms == 0 || self.probe_rtt_ms >= self.probe_period_ms {
            return Err(invalid("need 0 < probe_rtt_ms < probe_period_ms"));
        }
        if self.suspect_to_down_after_ms == 0 || self.join_retry_ms == 0 {
            return Err(invalid("durations must be > 0"));
        }
        if self.gossip_period_ms == 0 || self.periodic_announce_ms == 0 || self.announce_to_down_ms == 0 {
            return Err(invalid("periods must be > 0"));
        }
        let nonzero = |n: usize, what: &str| NonZeroUsize::new(n).ok_or_else(|| invalid(what));
        let ms = Duration::from_millis;
        Ok(foca::Config {
            probe_period: ms(self.probe_period_ms),
            probe_rtt: ms(self.probe_rtt_ms),
            num_indirect_probes: nonzero(self.indirect_probes, "indirect_probes must be > 0")?,
            max_transmissions: NonZeroU8::new(self.max_transmissions)
                .ok_or_else(|| invalid("max_transmissions must be > 0"))?,
            suspect_to_down_after: ms(self.suspect_to_down_after_ms),
            remove_down_after: Some(ms(self.remove_down_after_ms)),
            max_packet_size: nonzero(PACKET_BYTES_MAX, "packet size")?,
            notify_down_members: true,
            periodic_announce: Some(foca::PeriodicParams {
                frequency: ms(self.periodic_announce_ms),
                num_members: nonzero(1, "announce fanout")?,
            }),
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: ms(self.announce_to_down_ms),
                num_members: nonzero(2, "announce fanout")?,
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: ms(self.gossip_period_ms),
                num_members: nonzero(self.gossip_fanout, "gossip_fanout must be > 0")?,
            }),
        })
    }
}

enum Command {
    Leave(oneshot::Sender<()>),
}

/// A running membership instance; cheap to clone. Dropping every handle
/// does not stop it: call [`Membership::leave`] (graceful) or shut the
/// transport down (crash-like).
#[derive(Clone)]
pub struct Membership {
    local: NodeIdentity,
    members: watch::Receiver<Arc<Vec<MemberInfo>>>,
    events: broadcast::Sender<MembershipEvent>,
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("local", &self.local).finish_non_exhaustive()
    }
}

impl Membership {
    /// Starts SWIM for `identity` over `transport`, joining through
    /// `seeds` (socket addresses; this node's own address is skipped).
    /// Must be called inside a tokio runtime.
    pub fn start(
        transport: Transport,
        identity: NodeIdentity,
        seeds: Vec<SocketAddr>,
        config: MembershipConfig,
    ) -> Result<Membership, MembershipError> {
        if identity.name != transport.node_name() {
            return Err(MembershipError::NameMismatch {
                identity: identity.name,
                transport: transport.node_name().to_owned(),
            });
        }
        let foca_config = config.to_foca()?;
        let rng = match config.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => rand::make_rng(),
        };
        let foca = Foca::new(identity.clone(), foca_config, rng, PostcardCodec);
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE_MAX);
        transport.set_membership_sink(Some(inbound_tx));
        let (members_tx, members_rx) = watch::channel(Arc::new(Vec::new()));
        let (events, _) = broadcast::channel(config.events_capacity.max(1));
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE_MAX);
        let driver = Driver {
            foca,
            runtime: foca::AccumulatingRuntime::new(),
            transport,
            timers: BinaryHeap::new(),
            timer_payloads: HashMap::new(),
            timer_seq: 0,
            members: members_tx,
            events: events.clone(),
            seeds,
            seed_names: BTreeMap::new(),
            join_retry: Duration::from_millis(config.join_retry_ms),
        };
        tokio::spawn(driver.run(inbound_rx, commands_rx));
        Ok(Membership { local: identity, members: members_rx, events, commands: commands_tx })
    }

    /// This node's identity as it started (it may renew itself later).
    pub fn local(&self) -> &NodeIdentity {
        &self.local
    }

    /// Every other member this node knows of, including down ones, sorted
    /// by name. A restarted node appears once, with its newest generation.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.members.borrow().as_ref().clone()
    }

    /// A watch of [`Membership::members`], updated after every change.
    pub fn watch_members(&self) -> watch::Receiver<Arc<Vec<MemberInfo>>> {
        self.members.clone()
    }

    /// A stream of membership events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.events.subscribe()
    }

    /// Leaves gracefully: tells some members this node is down, lingers
    /// briefly so the news spreads, then stops the driver. The transport
    /// stays up; shut it down afterwards.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Leave(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct Driver {
    foca: Foca<NodeIdentity, PostcardCodec, StdRng, NoCustomBroadcast>,
    runtime: foca::AccumulatingRuntime<NodeIdentity>,
    transport: Transport,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_payloads: HashMap<u64, Timer<NodeIdentity>>,
    timer_seq: u64,
    members: watch::Sender<Arc<Vec<MemberInfo>>>,
    events: broadcast::Sender<MembershipEvent>,
    seeds: Vec<SocketAddr>,
    seed_names: BTreeMap<SocketAddr, String>,
    join_retry: Duration,
}

impl Driver {
    async fn run(mut self, mut inbound: mpsc::Receiver<(PeerId, Bytes)>, mut commands: mpsc::Receiver<Command>) {
        let (seed_tx, mut seed_rx) = mpsc::channel::<(SocketAddr, String)>(64);
        let mut join_tick = tokio::time::interval(self.join_retry);
        join_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leaving: Option<(Instant, oneshot::Sender<()>)> = None;
        loop {
            let next_timer = self.timers.peek().map(|Reverse((at, _))| *at);
            let linger_end = leaving.as_ref().map(|(at, _)| *at);
            tokio::select! {
                packet = inbound.recv() => match packet {
                    Some((from, data)) => self.handle_packet(&from, &data),
                    None => return,
                },
                _ = sleep_until_opt(next_timer) => self.fire_due_timers(),
                _ = join_tick.tick(), if leaving.is_none() => self.retry_join(&seed_tx),
                Some((addr, name)) = seed_rx.recv() => {
                    self.seed_names.insert(addr, name.clone());
                    // Placeholder identity for the announce only: foca learns
                    // the seed's real identity (generation, tier, API address)
                    // from its reply.
                    let seed = NodeIdentity { name, addr, api_addr: None, generation: 0, tier: 0, signing_key: None };
                    if let Err(e) = self.foca.announce(seed, &mut self.runtime) {
                        debug!(error = %e, "announce to seed failed");
                    }
                }
                command = commands.recv(), if leaving.is_none() => match command {
                    Some(Command::Leave(done)) => {
                        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
                            warn!(error = %e, "leave_cluster failed");
                        }
                        leaving = Some((Instant::now() + LEAVE_LINGER, done));
                    }
                    None => {}
                },
                _ = sleep_until_opt(linger_end) => {
                    self.transport.set_membership_sink(None);
                    if let Some((_, done)) = leaving.take() {
                        let _ = done.send(());
                    }
                    return;
                }
            }
            self.drain();
        }
    }

    fn handle_packet(&mut self, from: &PeerId, data: &[u8]) {
        // The sender's claimed identity must be the name its certificate
        // proved; otherwise any cluster member could speak for another.
        let mut cursor = data;
        match Codec::<NodeIdentity>::decode_header(&mut PostcardCodec, &mut cursor) {
            Ok(header) if header.src.name == from.name => {}
            Ok(header) => {
                warn!(peer = %from.name, claimed = %header.src.name, "SWIM packet with a forged sender; dropped");
                return;
            }
            Err(e) => {
                debug!(peer = %from.name, error = %e, "undecodable SWIM packet; dropped");
                return;
            }
        }
        if let Err(e) = self.foca.handle_data(data, &mut self.runtime) {
            debug!(peer = %from.name, error = %e, "SWIM packet rejected");
        }
    }

    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, seq))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(timer) = self.timer_payloads.remove(&seq)
                && let Err(e) = self.foca.handle_timer(timer, &mut self.runtime)
            {
                debug!(error = %e, "SWIM timer failed");
            }
        }
    }

    /// While alone, dial the seeds (in the background) and announce to them.
    fn retry_join(&mut self, seed_tx: &mpsc::Sender<(SocketAddr, String)>) {
        if self.foca.num_members() > 0 {
            return;
        }
        let own = self.foca.identity().addr;
        for &addr in &self.seeds {
            if addr == own {
                continue;
            }
            if let Some(name) = self.seed_names.get(&addr) {
                let seed = NodeIdentity {
                    name: name.clone(),
                    addr,
                    api_addr: None,
                    generation: 0,
                    tier: 0,
                    signing_key: None,
                };
                if let Err(e) = self.foca.announce(seed, &mut self.runtime) {
                    debug!(error = %e, "announce to seed failed");
                }
                continue;
            }
            let transport = self.transport.clone();
            let seed_tx = seed_tx.clone();
            tokio::spawn(async move {
                match transport.identify(addr).await {
                    Ok(peer) => {
                        let _ = seed_tx.send((addr, peer.name)).await;
                    }
                    Err(e) => debug!(seed = %addr, error = %e, "seed unreachable"),
                }
            });
        }
    }

    /// Carries out what foca asked for: send packets, arm timers, publish
    /// notifications and the member list.
    fn drain(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            let peer = PeerAddr { name: to.name, addr: to.addr };
            if let Err(e) = self.transport.send_membership_datagram(&peer, &data) {
                debug!(peer = %peer.name, error = %e, "SWIM send failed");
            }
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timer_seq += 1;
            self.timers.push(Reverse((Instant::now() + after, self.timer_seq)));
            self.timer_payloads.insert(self.timer_seq, timer);
        }
        while let Some(notification) = self.runtime.to_notify() {
            let event = match notification {
                OwnedNotification::MemberUp(id) => MembershipEvent::Up(id),
                OwnedNotification::MemberDown(id) => MembershipEvent::Down(id),
                OwnedNotification::Rename(old, new) => MembershipEvent::Replaced { old, new },
                OwnedNotification::Active => MembershipEvent::Joined,
                OwnedNotification::Idle => MembershipEvent::Alone,
                OwnedNotification::Rejoin(id) => MembershipEvent::Rejoined(id),
                OwnedNotification::Defunct => continue,
            };
            let _ = self.events.send(event);
        }
        // Suspect transitions raise no notification, so compare snapshots
        // (O(members) per step; fine for the cluster sizes SWIM-over-QUIC
        // targets here).
        let current = self.snapshot();
        if **self.members.borrow() != current {
            self.members.send_replace(Arc::new(current));
        }
    }

    fn snapshot(&self) -> Vec<MemberInfo> {
        let mut members: Vec<MemberInfo> = self
            .foca
            .iter_membership_state()
            .map(|member| MemberInfo {
                name: member.id().name.clone(),
                addr: member.id().addr,
                api_addr: member.id().api_addr,
                state: match member.state() {
                    foca::State::Alive => MemberState::Alive,
                    foca::State::Suspect => MemberState::Suspect,
                    foca::State::Down => MemberState::Down,
                },
                generation: member.id().generation,
                tier: member.id().tier,
                signing_key: member.id().signing_key.clone(),
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        members
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
