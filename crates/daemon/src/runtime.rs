//! The node task: the one owner of the core [`Node`].
//!
//! Every input — client commands, peer messages, membership changes and
//! timers — reaches the node through this task, so the sans-IO state
//! machine is driven exactly as its contract (`chorus_core::node`) says,
//! with no locks around it. One *turn* of the task:
//!
//! 1. waits for any input, then drains what else is already queued (bounded:
//!    [`INCOMING_PER_TURN_MAX`] peer messages, `group_commit_writes_max`
//!    client writes or [`WRITE_GROUP_BYTES_MAX`] bytes);
//! 2. hands all drained client writes to ONE `handle_local_writes` call;
//! 3. drains `poll_action`, concatenates every `Persist` of the turn into one
//!    store batch and hands it to the group committer (which merges the
//!    batches queued during one fsync into one commit), and keeps the turn's
//!    `Send`s and client answers *staged* until that batch is durable;
//! 4. meanwhile the next turn may start (up to [`PIPELINE_DEPTH_MAX`] turns
//!    in flight). Staged turns complete strictly in order: a turn's messages
//!    go out and its clients are answered only when its batch and every
//!    earlier one are durable.
//!
//! Moving a later `Persist` ahead of an earlier `Send` is safe: persisting
//! state earlier than required never exposes anything, and every `Send`
//! still runs after every `Persist` that preceded it. Reads see the node's
//! state, which runs ahead of the disk while turns are in flight, so a read
//! waits until nothing is in flight (and holds back new turns meanwhile):
//! a client never reads state that is not yet durable.
//!
//! That is group commit as in DeWitt et al., SIGMOD 1984, pipelined so the
//! node task prepares the next group while the disk flushes the last.

use crate::clock::{Clock, ClockHandle};
use crate::probe;
use crate::telemetry;
use chorus_core::node::NamespaceError;
use chorus_core::wire::{self, Message};
use chorus_core::{Action, LocalWrite, Member, MemberState, Node, NodeId, ValueType, WriteError, WriteReceipt};
use chorus_net::{Incoming, MemberInfo, PeerAddr, Transport};
use chorus_storage::{CommitTicket, GroupCommitter, RedbStorage, WriteBatch};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Peer messages handled in one turn at most, so client writes are never
/// starved by a flood of replication traffic (and vice versa).
pub const INCOMING_PER_TURN_MAX: usize = 256;

/// Value bytes of client writes merged into one group at most (soft: the
/// write that crosses it still joins). Bounds the size of one commit and of
/// the push messages it produces.
pub const WRITE_GROUP_BYTES_MAX: usize = 8 << 20;

/// Where a namespace creation is answered.
pub type NamespaceReply = oneshot::Sender<Result<(), NamespaceError>>;
/// A read-only closure run on the node task.
pub type InspectFn = Box<dyn FnOnce(&Node) + Send>;

/// What the rest of the daemon asks of the node.
pub enum Command {
    /// A client write; answered once it is durable.
    Write { write: LocalWrite, reply: oneshot::Sender<Result<WriteReceipt, WriteError>> },
    /// Create an eventual namespace; answered once its record is durable.
    CreateNamespace {
        name: String,
        value_type: ValueType,
        reply: oneshot::Sender<Result<(), chorus_core::node::NamespaceError>>,
    },
    /// Run a read-only closure against the node after this turn's commit.
    Inspect(InspectFn),
}

/// Why a call into the node task failed (the operation's own refusal is
/// returned inside `Ok`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The deadline passed, queued or in progress. A write may still have
    /// been applied.
    #[error("the node did not answer within the request deadline")]
    Timeout,
    /// The node task has stopped (shutdown or a fatal storage error).
    #[error("the node is stopping")]
    Stopped,
}

/// A cheap handle to the node task.
#[derive(Clone)]
pub struct NodeHandle {
    tx: mpsc::Sender<Command>,
    deadline: Duration,
}

impl NodeHandle {
    async fn call<R>(&self, make: impl FnOnce(oneshot::Sender<R>) -> Command) -> Result<R, CallError> {
        let (reply, rx) = oneshot::channel();
        let work = async {
            self.tx.send(make(reply)).await.map_err(|_| CallError::Stopped)?;
            rx.await.map_err(|_| CallError::Stopped)
        };
        tokio::time::timeout(self.deadline, work).await.map_err(|_| CallError::Timeout)?
    }

    /// Apply one client write; returns once it is durable.
    pub async fn write(&self, write: LocalWrite) -> Result<Result<WriteReceipt, WriteError>, CallError> {
        self.call(|reply| Command::Write { write, reply }).await
    }

    /// Create a namespace; returns once it is durable.
    pub async fn create_namespace(
        &self,
        name: String,
        value_type: ValueType,
    ) -> Result<Result<(), chorus_core::node::NamespaceError>, CallError> {
        self.call(|reply| Command::CreateNamespace { name, value_type, reply }).await
    }

    /// Read from the node: `f` runs on the node task against durable state.
    pub async fn inspect<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Node) -> R + Send + 'static,
    ) -> Result<R, CallError> {
        self.call(|reply: oneshot::Sender<R>| {
            Command::Inspect(Box::new(move |node: &Node| {
                let _ = reply.send(f(node));
            }))
        })
        .await
    }
}

/// Everything the node task owns.
pub struct Driver {
    pub node: Node,
    /// Corrected time for the core ([`Clock::now_us`]); raw OS time for
    /// answering clock probes.
    pub clock: Arc<ClockHandle>,
    pub committer: Arc<GroupCommitter<RedbStorage>>,
    pub transport: Transport,
    pub tier: u8,
    pub value_bytes_max: usize,
    pub group_writes_max: usize,
    /// Peers alive in the last membership view.
    pub alive_peers: Vec<NodeId>,
    /// TESTING KNOB, breaks durability on purpose: see [`ACK_BEFORE_FSYNC_ENV`].
    pub ack_before_fsync: bool,
    /// Writes held back by the knob, and when the first was held.
    pub deferred: Option<(WriteBatch, std::time::Instant)>,
    /// Reads waiting until nothing is in flight (they must see durable state).
    pub reads: Vec<InspectFn>,
}

/// `CHORUS_TEST_ACK_BEFORE_FSYNC=1` makes the node answer clients *before*
/// their writes are durable and hold the commit back for up to
/// [`DEFERRED_COMMIT_MAX`]: a `kill -9` in that window loses acknowledged
/// writes. It exists only so the fault-injection checkers can prove they
/// catch a real durability bug; never set it anywhere else. The agent logs
/// a warning when it is set.
pub const ACK_BEFORE_FSYNC_ENV: &str = "CHORUS_TEST_ACK_BEFORE_FSYNC";

/// How long the knob holds writes back before committing them.
pub const DEFERRED_COMMIT_MAX: Duration = Duration::from_secs(2);

/// Whether the durability-breaking test knob is set.
pub fn ack_before_fsync_from_env() -> bool {
    std::env::var(ACK_BEFORE_FSYNC_ENV).is_ok_and(|v| v == "1")
}

/// Replies owed at the end of a turn.
#[derive(Default)]
struct Owed {
    writes: Vec<(LocalWrite, oneshot::Sender<Result<WriteReceipt, WriteError>>)>,
    write_bytes: usize,
    namespaces: Vec<(NamespaceReply, Result<(), NamespaceError>)>,
    /// Propagation latencies (µs) of remote writes applied this turn.
    propagation_us: Vec<u64>,
}

/// Turns whose commits may be in flight at once. Each turn's batch joins
/// the group committer's queue as soon as the turn ends, so the committer
/// merges the batches of turns that ended during one fsync.
pub const PIPELINE_DEPTH_MAX: usize = 8;

/// A turn whose effects wait for its batch (and every earlier batch) to be
/// durable: Persist before expose.
struct Staged {
    /// `None`: the turn persisted nothing (it still waits for the turns
    /// before it, whose state its messages may carry).
    ticket: Option<CommitTicket>,
    ops: usize,
    started: std::time::Instant,
    sends: Vec<(NodeId, Message)>,
    writes: Vec<(WriteReply, Result<WriteReceipt, WriteError>)>,
    namespaces: Vec<(NamespaceReply, Result<(), NamespaceError>)>,
    propagation_us: Vec<u64>,
}

/// Where a client write is answered.
type WriteReply = oneshot::Sender<Result<WriteReceipt, WriteError>>;

impl From<Owed> for Staged {
    fn from(owed: Owed) -> Staged {
        Staged {
            ticket: None,
            ops: 0,
            started: std::time::Instant::now(),
            sends: Vec::new(),
            writes: Vec::new(),
            namespaces: owed.namespaces,
            propagation_us: owed.propagation_us,
        }
    }
}

/// Resolves when the oldest staged turn is durable.
async fn head_durable(in_flight: &mut VecDeque<Staged>) -> Result<(), chorus_storage::CommitError> {
    match in_flight.front_mut().and_then(|s| s.ticket.as_mut()) {
        Some(ticket) => ticket.await,
        None => Ok(()),
    }
}

/// Why the node task stopped with an error: the node must stop (a commit
/// whose fate is unknown leaves memory ahead of disk).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    #[error("storage commit failed: {0}")]
    Commit(#[from] chorus_storage::CommitError),
}

/// Start the node task. Returns its handle and a join handle that resolves
/// when it stops.
pub fn spawn(
    driver: Driver,
    incoming: mpsc::Receiver<Incoming>,
    members: watch::Receiver<Arc<Vec<MemberInfo>>>,
    shutdown: watch::Receiver<bool>,
    queue_max: usize,
    deadline: Duration,
) -> (NodeHandle, tokio::task::JoinHandle<Result<(), DriverError>>) {
    let (tx, rx) = mpsc::channel(queue_max);
    let task = tokio::spawn(driver.run(rx, incoming, members, shutdown));
    (NodeHandle { tx, deadline }, task)
}

enum Wake {
    Durable(Result<(), chorus_storage::CommitError>),
    Command(Command),
    Incoming(Incoming),
    Members,
    Timer,
    Stop,
}

impl Driver {
    /// Execute the actions the node queued (used at startup too).
    pub async fn execute_actions(&mut self, peers: &HashMap<NodeId, PeerAddr>) -> Result<(), DriverError> {
        let mut sends = Vec::new();
        let mut batch = self.drain_actions(&mut sends);
        if self.ack_before_fsync {
            // The knob: hold writes back (the client already has its answer).
            let held = self.deferred.get_or_insert_with(|| (WriteBatch::new(), std::time::Instant::now()));
            held.0.append(batch);
            batch = WriteBatch::new();
            if held.1.elapsed() >= DEFERRED_COMMIT_MAX
                && let Some((late, _)) = self.deferred.take()
            {
                batch = late;
            }
        }
        if !batch.is_empty() {
            let ops = batch.len();
            let started = std::time::Instant::now();
            self.committer.commit_async(batch).await?;
            telemetry::group_committed(ops, started.elapsed().as_secs_f64());
        }
        for (to, message) in sends {
            self.send(peers, to, &message);
        }
        Ok(())
    }

    fn send(&self, peers: &HashMap<NodeId, PeerAddr>, to: NodeId, message: &Message) {
        let Some(peer) = peers.get(&to) else {
            telemetry::send_dropped("unknown_peer");
            return;
        };
        let bytes = wire::encode(message);
        match self.transport.send(peer, bytes) {
            Ok(()) => telemetry::message_sent(&peer.name, message),
            Err(e) => {
                tracing::debug!(peer = %peer.name, error = %e, "send dropped; anti-entropy repairs");
                telemetry::send_dropped("transport");
            }
        }
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut incoming: mpsc::Receiver<Incoming>,
        mut members: watch::Receiver<Arc<Vec<MemberInfo>>>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), DriverError> {
        let mut peers: HashMap<NodeId, PeerAddr> = HashMap::new();
        let mut in_flight: VecDeque<Staged> = VecDeque::new();
        // The first membership view, even if empty, starts the anti-entropy timer.
        members.mark_changed();
        loop {
            // No new turn while reads wait for the state to be durable, or
            // while the pipeline is full: only commits complete meanwhile.
            let barrier = in_flight.len() >= PIPELINE_DEPTH_MAX || (!self.reads.is_empty() && !in_flight.is_empty());
            let timer = self.node.poll_timeout().map(|due_us| {
                let wait_us = due_us.saturating_sub(self.clock.now_us());
                tokio::time::Instant::now() + Duration::from_micros(wait_us)
            });
            let wake = tokio::select! {
                r = head_durable(&mut in_flight), if !in_flight.is_empty() => Wake::Durable(r),
                c = commands.recv(), if !barrier => c.map_or(Wake::Stop, Wake::Command),
                m = incoming.recv(), if !barrier => m.map_or(Wake::Stop, Wake::Incoming),
                r = members.changed(), if !barrier => if r.is_ok() { Wake::Members } else { Wake::Stop },
                _ = sleep_until_opt(timer), if !barrier => Wake::Timer,
                _ = shutdown.changed() => Wake::Stop,
            };
            let mut owed = Owed::default();
            let mut members_changed = false;
            match wake {
                Wake::Durable(result) => {
                    result?;
                    if let Some(done) = in_flight.pop_front() {
                        self.finish(done, &peers);
                    }
                    if in_flight.is_empty() {
                        self.answer_reads();
                    }
                    continue;
                }
                Wake::Stop => {
                    // Finish what is in flight: acknowledged means durable.
                    while let Some(mut staged) = in_flight.pop_front() {
                        if let Some(ticket) = staged.ticket.take() {
                            ticket.await?;
                        }
                        self.finish(staged, &peers);
                    }
                    return Ok(());
                }
                Wake::Command(c) => self.take_command(c, &mut owed),
                Wake::Incoming(m) => self.take_incoming(m, &mut peers, &mut owed),
                Wake::Members => members_changed = true,
                Wake::Timer => {}
            }
            for _ in 0..INCOMING_PER_TURN_MAX {
                match incoming.try_recv() {
                    Ok(m) => self.take_incoming(m, &mut peers, &mut owed),
                    Err(_) => break,
                }
            }
            while owed.writes.len() < self.group_writes_max && owed.write_bytes < WRITE_GROUP_BYTES_MAX {
                match commands.try_recv() {
                    Ok(c) => self.take_command(c, &mut owed),
                    Err(_) => break,
                }
            }
            if members_changed || members.has_changed().unwrap_or(false) {
                let view = members.borrow_and_update().clone();
                self.take_members(&view, &mut peers);
            }
            let now_us = self.clock.now_us();
            if self.node.poll_timeout().is_some_and(|due| due <= now_us) {
                self.node.handle_timeout(now_us);
            }
            let (writes, replies): (Vec<LocalWrite>, Vec<_>) = std::mem::take(&mut owed.writes).into_iter().unzip();
            let results = if writes.is_empty() { Vec::new() } else { self.node.handle_local_writes(now_us, writes) };
            if self.ack_before_fsync {
                // The knob: answer first, commit (held back) afterwards.
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
                self.execute_actions(&peers).await?;
                self.finish(Staged { writes: Vec::new(), ..Staged::from(owed) }, &peers);
                self.answer_reads();
                continue;
            }
            let mut staged = Staged::from(owed);
            staged.writes = replies.into_iter().zip(results).collect();
            self.stage(&mut staged).await?;
            if staged.ticket.is_none() && in_flight.is_empty() {
                self.finish(staged, &peers);
                self.answer_reads();
            } else {
                in_flight.push_back(staged);
            }
        }
    }

    /// Drains every queued action: the Persists concatenated into one store
    /// batch (returned), the Sends appended to `sends` in order.
    fn drain_actions(&mut self, sends: &mut Vec<(NodeId, Message)>) -> WriteBatch {
        let mut batch = WriteBatch::new();
        while let Some(action) = self.node.poll_action() {
            match action {
                Action::Persist(p) => {
                    for op in p.ops {
                        match op.value {
                            Some(v) => batch.put(op.space, op.key, v),
                            None => batch.delete(op.space, op.key),
                        };
                    }
                }
                Action::Send { to, message } => sends.push((to, message)),
            }
        }
        batch
    }

    /// Drains the node's actions into `staged`: the turn's Persists become
    /// one batch handed to the group committer (its ticket kept), the Sends
    /// wait in `staged` until that batch — and every earlier one — is durable.
    async fn stage(&mut self, staged: &mut Staged) -> Result<(), DriverError> {
        let batch = self.drain_actions(&mut staged.sends);
        if !batch.is_empty() {
            staged.ops = batch.len();
            staged.ticket = Some(self.committer.submit_async(batch).await?);
        }
        Ok(())
    }

    /// A staged turn is durable (and so is every turn before it): send its
    /// messages, answer its clients.
    fn finish(&mut self, staged: Staged, peers: &HashMap<NodeId, PeerAddr>) {
        if staged.ops > 0 {
            telemetry::group_committed(staged.ops, staged.started.elapsed().as_secs_f64());
        }
        for (to, message) in staged.sends {
            self.send(peers, to, &message);
        }
        for (reply, result) in staged.writes {
            let _ = reply.send(result);
        }
        for (reply, result) in staged.namespaces {
            let _ = reply.send(result);
        }
        for us in staged.propagation_us {
            telemetry::propagation(us);
        }
    }

    /// Runs the waiting reads; only called when nothing is in flight, so
    /// they see exactly the durable state.
    fn answer_reads(&mut self) {
        for f in std::mem::take(&mut self.reads) {
            f(&self.node);
        }
    }

    fn take_command(&mut self, command: Command, owed: &mut Owed) {
        match command {
            Command::Write { write, reply } => {
                owed.write_bytes += write.key.len() + op_bytes(&write.op);
                owed.writes.push((write, reply));
            }
            Command::CreateNamespace { name, value_type, reply } => {
                let result = self.node.create_namespace(&name, value_type);
                if result.is_ok() {
                    // Namespaces spread through anti-entropy summaries:
                    // sync with every live peer now rather than within the
                    // next rounds, so the namespace is usable cluster-wide
                    // within a round trip.
                    let now_us = self.clock.now_us();
                    for peer in self.alive_peers.clone() {
                        self.node.start_sync(now_us, peer);
                    }
                }
                owed.namespaces.push((reply, result));
            }
            Command::Inspect(f) => self.reads.push(f),
        }
    }

    fn take_incoming(&mut self, incoming: Incoming, peers: &mut HashMap<NodeId, PeerAddr>, owed: &mut Owed) {
        let (from, payload) = match incoming {
            Incoming::Message { from, payload } => (from, payload),
            Incoming::Request { from, payload, respond } => {
                // Requests are not part of the eventual protocol; they are
                // routed by their first (kind) byte. Dropping `respond`
                // tells the requester there is no answer.
                let t2_us = self.clock.os_now_us();
                match payload.first() {
                    Some(&probe::REQUEST_KIND_CLOCK_PROBE) => {
                        if let Some(reply) = probe::answer(&self.clock, self.tier, &from.name, &payload, t2_us) {
                            let _ = respond.send(reply.into());
                        }
                    }
                    _ => telemetry::probe_refused("unknown_request_kind"),
                }
                return;
            }
            // Application datagrams are not used by the daemon.
            _ => return,
        };
        let message = match wire::decode(&payload, self.value_bytes_max) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(peer = %from.name, error = %e, "undecodable message from peer");
                telemetry::decode_error(&from.name);
                return;
            }
        };
        let id = NodeId::from_name(&from.name);
        peers.entry(id).or_insert_with(|| from.clone());
        let now_us = self.clock.now_us();
        if let Message::Push(push) = &message {
            for item in &push.items {
                let fresh = self.node.namespace(&item.namespace).is_none_or(|ns| !ns.seen().contains(item.dot));
                if fresh {
                    owed.propagation_us.push(now_us.saturating_sub(item.ts.physical_us));
                }
            }
        }
        telemetry::message_received(&from.name, &message);
        self.node.handle_message(now_us, id, message);
    }

    fn take_members(&mut self, view: &[MemberInfo], peers: &mut HashMap<NodeId, PeerAddr>) {
        let mut members = Vec::with_capacity(view.len());
        for m in view {
            let id = NodeId::from_name(&m.name);
            peers.insert(id, m.peer_addr());
            let state = match m.state {
                chorus_net::MemberState::Alive => MemberState::Alive,
                chorus_net::MemberState::Suspect => MemberState::Suspect,
                chorus_net::MemberState::Down => MemberState::Down,
            };
            // Each member's tier as it declared it in its SWIM identity; the
            // core only exchanges data with tiers t-1..t+1 and rejects (and
            // counts, `rejected_tier`) messages from the others.
            members.push(Member { id, tier: m.tier, state });
        }
        self.alive_peers = members
            .iter()
            .filter(|m| m.state == MemberState::Alive && chorus_core::tiers_may_talk(self.tier, m.tier))
            .map(|m| m.id)
            .collect();
        telemetry::members(view);
        self.node.set_members(self.clock.now_us(), &members);
    }
}

fn op_bytes(op: &chorus_core::Op) -> usize {
    match op {
        chorus_core::Op::Put { value, .. } => value.len(),
        chorus_core::Op::Add { member } | chorus_core::Op::Remove { member, .. } => member.len(),
        _ => 8,
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
