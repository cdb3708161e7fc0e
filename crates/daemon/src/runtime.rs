//! The node task: the one owner of the core [`Node`], and a plain executor
//! of its actions.
//!
//! Every input — client commands, peer messages, membership changes, timers
//! and storage completions — reaches the node through this task, so the
//! sans-IO state machine is driven exactly as its contract says
//! (`chorus_core::node`; `docs/design/replication.md`, "The driver
//! contract"). The core decides what may be exposed when: it holds back
//! every Send and every answer until the batches it depends on are durable.
//! This task keeps no ordering logic of its own. One *turn*:
//!
//! 1. waits for any input, then drains what else is already queued (bounded:
//!    [`INCOMING_PER_TURN_MAX`] peer messages, `group_commit_writes_max`
//!    client writes or [`WRITE_GROUP_BYTES_MAX`] bytes);
//! 2. hands all drained client writes to ONE `handle_local_writes` call
//!    (group commit is handing many writes in at once) — unless
//!    [`GATHER_BEHIND_IN_FLIGHT`] store batches are in flight: then they are
//!    gathered across turns and handed in when a commit completes;
//! 3. executes the node's actions in order: consecutive Persists are handed
//!    to the group committer as one store batch without waiting (several
//!    are in flight; the committer merges those queued during one fsync),
//!    Sends go to the transport, answers to their callers;
//! 4. when a commit completes, tells the node (`handle_persisted`) and
//!    executes what that released.
//!
//! While [`PERSISTS_IN_FLIGHT_MAX`] batches are in flight the task takes no
//! new input (backpressure); completions are always taken.

use crate::clock::{Clock, ClockHandle};
use crate::probe;
use crate::telemetry;
use chorus_core::node::NamespaceError;
use chorus_core::wire::{self, Message};
use chorus_core::{
    Action, Halted, LocalWrite, Member, MemberState, Misbehavior, NamespaceCreated, Node, NodeId, PersistId, RequestId,
    ValueType, WriteError, WriteReceipt,
};
use chorus_net::{Incoming, MemberInfo, PeerAddr, Transport};
use chorus_storage::{CommitTicket, GroupCommitter, RedbStorage, WriteBatch};
use futures_util::FutureExt;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// Peer messages handled in one turn at most, so client writes are never
/// starved by a flood of replication traffic (and vice versa).
pub const INCOMING_PER_TURN_MAX: usize = 256;

/// Value bytes of client writes merged into one group at most (soft: the
/// write that crosses it still joins). Bounds the size of one commit and of
/// the push messages it produces.
pub const WRITE_GROUP_BYTES_MAX: usize = 8 << 20;

/// Batches in flight to the group committer at most before the task stops
/// taking new input. Each turn adds about one; the committer merges the
/// batches queued during one fsync, so a few in flight keep the disk busy.
pub const PERSISTS_IN_FLIGHT_MAX: u64 = 8;

/// Store batches in flight at or above which client writes are gathered
/// instead of handed in: one batch queued behind the running commit keeps
/// the disk busy, and writes that arrive meanwhile could only queue behind
/// it. Gathering them makes the next group (and its signed block) larger,
/// which is what makes signing cheap per write (`docs/design/signing.md`,
/// "Cost"). They are handed in when a commit completes or the group is full.
pub const GATHER_BEHIND_IN_FLIGHT: usize = 2;

/// Where a write is answered.
pub type WriteReply = oneshot::Sender<Result<WriteReceipt, WriteError>>;
/// Where a namespace creation is answered.
pub type NamespaceReply = oneshot::Sender<Result<NamespaceCreated, NamespaceError>>;
/// A read-only closure run on the node task. It reads the node's state at
/// once and returns the delivery of its answer, which runs when the core
/// releases the read (everything it saw is durable by then).
pub type InspectFn = Box<dyn FnOnce(&Node) -> Deliver + Send>;
/// Sends a read's answer to its caller.
pub type Deliver = Box<dyn FnOnce() + Send>;

/// What the rest of the daemon asks of the node.
pub enum NodeCommand {
    /// A client write; answered once it is durable.
    Write { write: LocalWrite, reply: WriteReply },
    /// Create an eventual namespace; answered once every reachable node
    /// holds it durably (or the confirmation wait is over).
    CreateNamespace { name: String, value_type: ValueType, reply: NamespaceReply },
    /// Read the node's state; answered once what it saw is durable.
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
    /// The node task had stopped before it took the call: nothing changed.
    #[error("the node is stopping")]
    Stopped,
    /// The node task took the call but stopped (or halted) without
    /// answering: a write may or may not have been applied.
    #[error("the node stopped before answering; the outcome is unknown")]
    Abandoned,
}

/// A cheap handle to the node task.
#[derive(Clone)]
pub struct NodeHandle {
    tx: mpsc::Sender<NodeCommand>,
    deadline: Duration,
    /// Extra time a namespace creation may take: the core's confirmation wait.
    namespace_wait: Duration,
}

impl NodeHandle {
    async fn call<R>(
        &self,
        deadline: Duration,
        make: impl FnOnce(oneshot::Sender<R>) -> NodeCommand,
    ) -> Result<R, CallError> {
        let (reply, rx) = oneshot::channel();
        let work = async {
            self.tx.send(make(reply)).await.map_err(|_| CallError::Stopped)?;
            rx.await.map_err(|_| CallError::Abandoned)
        };
        tokio::time::timeout(deadline, work).await.map_err(|_| CallError::Timeout)?
    }

    /// Apply one client write; returns once it is durable.
    pub async fn write(&self, write: LocalWrite) -> Result<Result<WriteReceipt, WriteError>, CallError> {
        self.call(self.deadline, |reply| NodeCommand::Write { write, reply }).await
    }

    /// Create a namespace; returns once every reachable node holds it
    /// durably, or with the members that did not confirm in time.
    pub async fn create_namespace(
        &self,
        name: String,
        value_type: ValueType,
    ) -> Result<Result<NamespaceCreated, NamespaceError>, CallError> {
        let deadline = self.deadline + self.namespace_wait;
        self.call(deadline, |reply| NodeCommand::CreateNamespace { name, value_type, reply }).await
    }

    /// Like [`NodeHandle::inspect`], and `on_release` runs on the node task
    /// when the core releases the read, in order with every other action:
    /// a watch stream subscribes there, so it gets exactly the change
    /// batches after the state `f` saw.
    pub async fn inspect_then<R: Send + 'static, S: Send + 'static>(
        &self,
        f: impl FnOnce(&Node) -> R + Send + 'static,
        on_release: impl FnOnce(R) -> S + Send + 'static,
    ) -> Result<S, CallError> {
        self.call(self.deadline, |reply: oneshot::Sender<S>| {
            NodeCommand::Inspect(Box::new(move |node: &Node| {
                let answer = f(node);
                Box::new(move || {
                    let _ = reply.send(on_release(answer));
                })
            }))
        })
        .await
    }

    /// Read from the node: `f` runs on the node task against its current
    /// state; the answer is returned once that state is durable.
    pub async fn inspect<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Node) -> R + Send + 'static,
    ) -> Result<R, CallError> {
        self.call(self.deadline, |reply: oneshot::Sender<R>| {
            NodeCommand::Inspect(Box::new(move |node: &Node| {
                let answer = f(node);
                Box::new(move || {
                    let _ = reply.send(answer);
                })
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
    /// Where the core's durable change batches go (watch streams).
    pub watch_hub: Arc<crate::watch_hub::WatchHub>,
    /// The origins' public keys the core checks signatures with.
    pub keys: OriginKeys,
    /// Test-only fault knobs (feature `test-knobs`).
    #[cfg(feature = "test-knobs")]
    pub knobs: crate::knobs::DriverKnobs,
}

/// Callers waiting for the core to release their answers.
#[derive(Default)]
struct Pending {
    next: u64,
    writes: HashMap<RequestId, WriteReply>,
    namespaces: HashMap<RequestId, NamespaceReply>,
    reads: HashMap<RequestId, Deliver>,
}

impl Pending {
    fn next_id(&mut self) -> RequestId {
        self.next += 1;
        RequestId(self.next)
    }
}

/// One store batch handed to the group committer: the Persists it carries.
struct InFlight {
    ids: Vec<PersistId>,
    ops: usize,
    started: Instant,
    ticket: CommitTicket,
}

/// Resolves when the oldest in-flight batch completes.
async fn head_done(in_flight: &mut VecDeque<InFlight>) -> Result<(), chorus_storage::CommitError> {
    match in_flight.front_mut() {
        Some(f) => (&mut f.ticket).await,
        None => std::future::pending().await,
    }
}

/// Why the node task stopped with an error: the node must stop (its
/// memory may be ahead of its disk).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    #[error("storage commit failed: {0}")]
    Commit(#[from] chorus_storage::CommitError),
    #[error(transparent)]
    Halted(#[from] Halted),
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
    let namespace_wait = Duration::from_micros(driver.node.config().namespace_confirm_wait_us);
    let task = tokio::spawn(driver.run(rx, incoming, members, shutdown));
    (NodeHandle { tx, deadline, namespace_wait }, task)
}

enum Wake {
    Done(Result<(), chorus_storage::CommitError>),
    Command(NodeCommand),
    Incoming(Incoming),
    Members,
    Timer,
    Stop,
}

/// The inputs of one turn.
#[derive(Default)]
struct Turn {
    writes: Vec<(RequestId, LocalWrite)>,
    write_bytes: usize,
}

/// The executor's state across turns.
struct Exec {
    peers: HashMap<NodeId, PeerAddr>,
    pending: Pending,
    in_flight: VecDeque<InFlight>,
}

impl Driver {
    /// Execute the actions queued before the task starts (the default
    /// namespace's record), waiting for each commit: nothing may be served
    /// before it is durable.
    pub async fn persist_startup(&mut self) -> Result<(), DriverError> {
        while let Some(action) = self.node.poll_action() {
            match action {
                Action::Persist { id, batch } => {
                    self.committer.commit_async(store_batch(batch)).await?;
                    self.node.handle_persisted(id);
                }
                Action::Halted(h) => return Err(h.into()),
                // No peers, clients or reads exist yet.
                _ => {}
            }
        }
        Ok(())
    }

    fn send(&self, peers: &HashMap<NodeId, PeerAddr>, to: NodeId, message: &Message) {
        let Some(peer) = peers.get(&to) else {
            telemetry::send_dropped("unknown_peer");
            return;
        };
        #[cfg(feature = "test-knobs")]
        let forged;
        #[cfg(feature = "test-knobs")]
        let message = if self.knobs.relay_forge {
            let mut m = message.clone();
            crate::knobs::forge_relayed(self.node.id(), to, &mut m);
            forged = m;
            &forged
        } else {
            message
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
        mut commands: mpsc::Receiver<NodeCommand>,
        mut incoming: mpsc::Receiver<Incoming>,
        mut members: watch::Receiver<Arc<Vec<MemberInfo>>>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), DriverError> {
        let mut exec = Exec { peers: HashMap::new(), pending: Pending::default(), in_flight: VecDeque::new() };
        // The first membership view, even if empty, starts the anti-entropy timer.
        members.mark_changed();
        // Client writes gathered across turns (see GATHER_BEHIND_IN_FLIGHT).
        let mut turn = Turn::default();
        loop {
            let accepting = self.node.persists_in_flight() < PERSISTS_IN_FLIGHT_MAX;
            let timer = self.node.poll_timeout().map(|due_us| {
                let wait_us = due_us.saturating_sub(self.clock.now_us());
                tokio::time::Instant::now() + Duration::from_micros(wait_us)
            });
            // The timer also wakes a full pipeline when the ack-before-fsync
            // knob holds every batch in flight: only its release drains it.
            #[allow(unused_mut)]
            let mut timer_armed = accepting;
            #[cfg(feature = "test-knobs")]
            let timer = self.knobs.earlier_wake(timer);
            #[cfg(feature = "test-knobs")]
            {
                timer_armed |= self.knobs.holding();
            }
            let wake = tokio::select! {
                r = head_done(&mut exec.in_flight) => Wake::Done(r),
                c = commands.recv(), if accepting => c.map_or(Wake::Stop, Wake::Command),
                m = incoming.recv(), if accepting => m.map_or(Wake::Stop, Wake::Incoming),
                r = members.changed(), if accepting => if r.is_ok() { Wake::Members } else { Wake::Stop },
                _ = sleep_until_opt(timer), if timer_armed => Wake::Timer,
                _ = shutdown.changed() => Wake::Stop,
            };
            let mut members_changed = false;
            match wake {
                Wake::Done(result) => {
                    self.completed(&mut exec, result);
                    self.execute(&mut exec).await?;
                    self.hand_in(&mut exec, &mut turn, false).await?;
                    continue;
                }
                Wake::Stop => {
                    self.hand_in(&mut exec, &mut turn, true).await?;
                    // Finish what is in flight: acknowledged means durable.
                    while !exec.in_flight.is_empty() {
                        let result = head_done(&mut exec.in_flight).await;
                        self.completed(&mut exec, result);
                        self.execute(&mut exec).await?;
                    }
                    return Ok(());
                }
                Wake::Command(c) => self.take_command(c, &mut exec, &mut turn),
                Wake::Incoming(m) => self.take_incoming(m, &mut exec.peers),
                Wake::Members => members_changed = true,
                Wake::Timer if !accepting => {
                    self.execute(&mut exec).await?;
                    continue;
                }
                Wake::Timer => {}
            }
            for _ in 0..INCOMING_PER_TURN_MAX {
                match incoming.try_recv() {
                    Ok(m) => self.take_incoming(m, &mut exec.peers),
                    Err(_) => break,
                }
            }
            while turn.writes.len() < self.group_writes_max && turn.write_bytes < WRITE_GROUP_BYTES_MAX {
                match commands.try_recv() {
                    Ok(c) => self.take_command(c, &mut exec, &mut turn),
                    Err(_) => break,
                }
            }
            if members_changed || members.has_changed().unwrap_or(false) {
                let view = members.borrow_and_update().clone();
                self.take_members(&view, &mut exec.peers);
            }
            let now_us = self.clock.now_us();
            if self.node.poll_timeout().is_some_and(|due| due <= now_us) {
                self.node.handle_timeout(now_us);
            }
            self.execute(&mut exec).await?;
            self.hand_in(&mut exec, &mut turn, false).await?;
        }
    }

    /// Hand the gathered client writes to the node as one group, unless
    /// enough is in flight to gather more (`force` hands them in anyway).
    async fn hand_in(&mut self, exec: &mut Exec, turn: &mut Turn, force: bool) -> Result<(), DriverError> {
        if turn.writes.is_empty() {
            return Ok(());
        }
        let full = turn.writes.len() >= self.group_writes_max || turn.write_bytes >= WRITE_GROUP_BYTES_MAX;
        if !force && !full && exec.in_flight.len() >= GATHER_BEHIND_IN_FLIGHT {
            return Ok(());
        }
        let writes = std::mem::take(&mut turn.writes);
        turn.write_bytes = 0;
        self.node.handle_local_writes(self.clock.now_us(), writes);
        self.execute(exec).await
    }

    /// The oldest in-flight batch completed: tell the node, and take every
    /// later batch that has completed too.
    fn completed(&mut self, exec: &mut Exec, mut result: Result<(), chorus_storage::CommitError>) {
        loop {
            let Some(done) = exec.in_flight.pop_front() else { return };
            match result {
                Ok(()) => {
                    telemetry::group_committed(done.ops, done.started.elapsed().as_secs_f64());
                    for id in done.ids {
                        self.node.handle_persisted(id);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "storage commit failed; the node halts");
                    if let Some(&first) = done.ids.first() {
                        self.node.handle_persist_failed(first, e.to_string());
                    }
                    return;
                }
            }
            match exec.in_flight.front_mut().and_then(|f| (&mut f.ticket).now_or_never()) {
                Some(next) => result = next,
                None => return,
            }
        }
    }

    /// Execute every action the node has ready, in order.
    async fn execute(&mut self, exec: &mut Exec) -> Result<(), DriverError> {
        // Consecutive Persists become one store batch, up to the store's
        // bounds; it is handed over before any later Persist, and nothing
        // handed out below depends on it (the core released it).
        let mut group: Option<(Vec<PersistId>, WriteBatch)> = None;
        // Operations persisted in this call, and how many times a batch was
        // closed because the next Persist would have crossed the bounds:
        // a large turn is split, never refused (issue 13, defect 1).
        let (mut turn_ops, mut splits) = (0usize, 0usize);
        while let Some(action) = self.node.poll_action() {
            match action {
                Action::Persist { id, batch } => {
                    let batch = store_batch(batch);
                    turn_ops += batch.len();
                    if let Some((ids, open)) = group.as_mut() {
                        if fits(open, &batch) {
                            open.append(batch);
                            ids.push(id);
                            continue;
                        }
                        splits += 1;
                    }
                    if let Some(full) = group.replace((vec![id], batch)) {
                        self.submit(exec, full).await;
                    }
                }
                Action::Send { to, message } => self.send(&exec.peers, to, &message),
                Action::WriteDone { request, result } => {
                    if let Some(reply) = exec.pending.writes.remove(&request) {
                        let _ = reply.send(result);
                    }
                }
                Action::NamespaceDone { request, result } => {
                    if let Some(reply) = exec.pending.namespaces.remove(&request) {
                        let _ = reply.send(result);
                    }
                }
                Action::ReadReady { request, result } => {
                    // A halted node drops the answer: the caller sees `Stopped`.
                    if let Some(deliver) = exec.pending.reads.remove(&request)
                        && result.is_ok()
                    {
                        deliver();
                    }
                }
                Action::Halted(h) => {
                    tracing::error!(error = %h, "the node halted");
                    return Err(h.into());
                }
                Action::PeerMisbehaved { peer, reason } => self.misbehaved(&exec.peers, peer, reason),
                Action::Changes(batch) => self.watch_hub.dispatch(batch),
            }
        }
        if let Some(last) = group.take() {
            self.submit(exec, last).await;
        }
        if splits > 0 {
            tracing::info!(
                "persist turn of {turn_ops} ops split at the store's bounds ({} ops or {} bytes per batch) {splits} time(s)",
                chorus_storage::BATCH_OPS_MAX,
                chorus_storage::BATCH_BYTES_MAX
            );
        }
        #[cfg(feature = "test-knobs")]
        if let Some(due) = self.knobs.release_due() {
            self.commit_now(exec, due).await;
        }
        Ok(())
    }

    /// Hand one store batch to the group committer without waiting for it.
    async fn submit(&mut self, exec: &mut Exec, (ids, batch): (Vec<PersistId>, WriteBatch)) {
        #[cfg(feature = "test-knobs")]
        let Some((ids, batch)) = self.knobs.hold_back(ids, batch) else { return };
        self.commit_now(exec, (ids, batch)).await;
    }

    async fn commit_now(&mut self, exec: &mut Exec, (ids, batch): (Vec<PersistId>, WriteBatch)) {
        let ops = batch.len();
        match self.committer.submit_async(batch).await {
            Ok(ticket) => exec.in_flight.push_back(InFlight { ids, ops, started: Instant::now(), ticket }),
            Err(e) => {
                tracing::error!(error = %e, "a batch was refused by the store; the node halts");
                if let Some(&first) = ids.first() {
                    self.node.handle_persist_failed(first, e.to_string());
                }
            }
        }
    }

    /// A peer sent what no honest peer can: disconnect and quarantine it
    /// (docs/design/transport-and-membership.md, "Quarantine").
    fn misbehaved(&self, peers: &HashMap<NodeId, PeerAddr>, peer: NodeId, reason: Misbehavior) {
        let reason = match reason {
            Misbehavior::ForgedDots => chorus_net::QuarantineReason::ForgedDots,
            Misbehavior::BadSignature => chorus_net::QuarantineReason::BadSignature,
        };
        match peers.get(&peer) {
            Some(p) => {
                let period = self.transport.quarantine(&p.name, reason);
                tracing::warn!(peer = %p.name, reason = reason.as_str(), ?period, "peer misbehaved; quarantined");
            }
            // A peer that left the member list meanwhile: nothing to cut off.
            None => tracing::warn!(peer = %peer, reason = reason.as_str(), "a departed peer misbehaved"),
        }
    }

    fn take_command(&mut self, command: NodeCommand, exec: &mut Exec, turn: &mut Turn) {
        match command {
            NodeCommand::Write { write, reply } => {
                let id = exec.pending.next_id();
                exec.pending.writes.insert(id, reply);
                turn.write_bytes += write.key.len() + op_bytes(&write.op);
                turn.writes.push((id, write));
            }
            NodeCommand::CreateNamespace { name, value_type, reply } => {
                let id = exec.pending.next_id();
                exec.pending.namespaces.insert(id, reply);
                self.node.handle_create_namespace(self.clock.now_us(), id, &name, value_type);
            }
            NodeCommand::Inspect(f) => {
                let id = exec.pending.next_id();
                exec.pending.reads.insert(id, f(&self.node));
                self.node.handle_read(id);
            }
        }
    }

    fn take_incoming(&mut self, incoming: Incoming, peers: &mut HashMap<NodeId, PeerAddr>) {
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
                if let Some(reason) = misbehaviour(&e) {
                    self.transport.quarantine(&from.name, reason);
                }
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
                    telemetry::propagation(now_us.saturating_sub(item.ts.physical_us));
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
        telemetry::members(view);
        self.keys.learn(view);
        self.node.set_members(self.clock.now_us(), &members);
    }
}

/// Learns each member's write-signing key from its SWIM identity once the
/// cluster CA's signature on it checks (`docs/design/signing.md`, "Keys").
/// A member without a valid card stays unknown: its writes are refused
/// (counted as `unknown_origin`, not held against the relay).
pub struct OriginKeys {
    signer: Option<Arc<chorus_core::signing::Ed25519Signing>>,
    ca_pem: String,
    /// The card learned per member name.
    learned: HashMap<String, chorus_net::SigningCard>,
}

/// Members whose signing cards are remembered at most (a bound on a
/// membership flooded with names; beyond it new cards are still checked
/// every time instead of remembered).
pub const ORIGIN_KEYS_MAX: usize = 65_536;

impl OriginKeys {
    pub fn new(signer: Option<Arc<chorus_core::signing::Ed25519Signing>>, ca_pem: String) -> Self {
        OriginKeys { signer, ca_pem, learned: HashMap::new() }
    }

    fn learn(&mut self, view: &[MemberInfo]) {
        let Some(signer) = &self.signer else { return };
        for m in view {
            let Some(card) = &m.signing_key else { continue };
            if self.learned.get(&m.name) == Some(card) {
                continue;
            }
            if !chorus_net::verify_signing_card(&self.ca_pem, &m.name, card) {
                tracing::warn!(member = %m.name, "member's signing key is not signed by the cluster CA; its writes are refused");
                telemetry::signing_card_refused();
                continue;
            }
            signer.learn(NodeId::from_name(&m.name), &card.public);
            if self.learned.len() < ORIGIN_KEYS_MAX {
                self.learned.insert(m.name.clone(), card.clone());
            }
        }
    }
}

/// The store form of a core batch.
fn store_batch(batch: chorus_core::PersistBatch) -> WriteBatch {
    let mut out = WriteBatch::new();
    for op in batch.ops {
        match op.value {
            Some(v) => out.put(op.space, op.key, v),
            None => out.delete(op.space, op.key),
        };
    }
    out
}

/// Whether `next` may join `open` without crossing the store's bounds of
/// one batch.
fn fits(open: &WriteBatch, next: &WriteBatch) -> bool {
    open.len() + next.len() <= chorus_storage::BATCH_OPS_MAX
        && open.payload_bytes() + next.payload_bytes() <= chorus_storage::BATCH_BYTES_MAX
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

/// Whether an undecodable message proves its sender broken or hostile, and
/// why (`docs/design/transport-and-membership.md`, "Quarantine"). A newer
/// wire version or a value above our `max_value_bytes` is a difference of
/// build or configuration between honest nodes: counted and dropped, not
/// punished.
fn misbehaviour(error: &wire::DecodeError) -> Option<chorus_net::QuarantineReason> {
    use chorus_core::crdt::InvalidEntry;
    use chorus_net::QuarantineReason;
    match error {
        wire::DecodeError::Checksum => Some(QuarantineReason::BadChecksum),
        wire::DecodeError::UnsupportedVersion(_)
        | wire::DecodeError::Entry { source: InvalidEntry::TooLarge { .. }, .. } => None,
        _ => Some(QuarantineReason::Undecodable),
    }
}
