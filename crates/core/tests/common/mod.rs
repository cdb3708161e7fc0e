//! A minimal driver for core tests: it executes a node's actions the way
//! the driver contract (`chorus_core::node`) says, with a disk that makes
//! every batch durable at once, and hands the tests the Persists and Sends
//! they assert on.

#![allow(dead_code)]

use chorus_core::{Action, LocalWrite, Node, RequestId, WriteError, WriteReceipt};
use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};

/// A node with its driver state: actions executed but not yet handed to
/// the test, and write outcomes by request.
pub struct Driven {
    pub node: Node,
    pending: Vec<Action>,
    outcomes: BTreeMap<RequestId, Result<WriteReceipt, WriteError>>,
    next_request: u64,
}

impl From<Node> for Driven {
    fn from(node: Node) -> Self {
        Driven { node, pending: Vec::new(), outcomes: BTreeMap::new(), next_request: 1 }
    }
}

impl Deref for Driven {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl DerefMut for Driven {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.node
    }
}

impl Driven {
    /// Execute every action the node has ready: each Persist is durable at
    /// once; Persists and Sends are kept for [`Driven::drain`], answers are
    /// recorded.
    fn pump(&mut self) {
        while let Some(action) = self.node.poll_action() {
            match action {
                Action::Persist { id, .. } => {
                    self.node.handle_persisted(id);
                    self.pending.push(action);
                }
                Action::Send { .. } => self.pending.push(action),
                Action::WriteDone { request, result } => {
                    self.outcomes.insert(request, result);
                }
                Action::NamespaceDone { .. }
                | Action::ReadReady { .. }
                | Action::Halted(_)
                | Action::PeerMisbehaved { .. }
                | Action::Changes(_) => {}
            }
        }
    }

    /// The Persists and Sends executed since the last call, in order.
    pub fn drain(&mut self) -> Vec<Action> {
        self.pump();
        std::mem::take(&mut self.pending)
    }

    /// Hand `writes` to the node as one group and return their outcomes in
    /// order (the group's Persist and Sends stay for [`Driven::drain`]).
    pub fn handle_local_writes(
        &mut self,
        now_us: u64,
        writes: Vec<LocalWrite>,
    ) -> Vec<Result<WriteReceipt, WriteError>> {
        let ids: Vec<RequestId> = writes
            .iter()
            .map(|_| {
                self.next_request += 1;
                RequestId(self.next_request)
            })
            .collect();
        self.node.handle_local_writes(now_us, ids.iter().copied().zip(writes).collect());
        self.pump();
        ids.iter().map(|id| self.outcomes.remove(id).expect("every write is answered once durable")).collect()
    }
}
