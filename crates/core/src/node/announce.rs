//! Namespace creation that every reachable node confirms before the client
//! hears back: a diffusing computation (Dijkstra–Scholten) over the tier
//! graph. See `docs/design/replication.md`, "Namespace creation".
//!
//! The node a client asked creates the namespace and sends an announcement
//! to every live peer in talking range. A node receiving one for the first
//! time creates the namespace (durably: its confirmation is held behind the
//! Persist like every Send), passes the announcement on to its live peers
//! that no earlier sender covered, and answers its sender once all of
//! those answered or its budget ran out — with itself and everything they
//! confirmed. A duplicate is answered at once with nothing. So when the
//! origin's outcome comes out, every node it names holds the namespace on
//! disk, and the live members it does not name are reported as unconfirmed.

use super::*;
use crate::wire::{ANNOUNCE_NODES_MAX, NamespaceAnnounce, NamespaceConfirm};

/// Announcements this node takes part in at once; one more is answered at
/// once without passing it on (its sender's budget covers the rest).
pub const ANNOUNCEMENTS_MAX: usize = 64;

/// Finished announcements remembered, so a late duplicate is answered at
/// once instead of starting over.
const ANNOUNCED_REMEMBERED_MAX: usize = 256;

/// What a namespace creation achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceCreated {
    /// The namespace did not exist on this node before.
    pub created: bool,
    /// Live members that did not confirm within the wait (partitioned,
    /// slow, or beyond a tier nobody could reach). Empty: every reachable
    /// node holds the namespace durably.
    pub unconfirmed: Vec<NodeId>,
}

pub(super) struct Announcement {
    /// Who sent it to us; `None`: a client asked us.
    parent: Option<NodeId>,
    request: Option<RequestId>,
    created: bool,
    waiting: BTreeSet<NodeId>,
    confirmed: BTreeSet<NodeId>,
    pub(super) deadline_us: u64,
}

impl Node {
    /// A client asks to create a namespace. It is created here at once (its
    /// record persisted) and announced to every reachable node; the
    /// outcome, [`Action::NamespaceDone`], comes when every node the
    /// announcement reached confirmed it holds the namespace durably, or
    /// after [`NodeConfig::namespace_confirm_wait_us`] with the live
    /// members that did not confirm.
    pub fn handle_create_namespace(&mut self, now_us: u64, request: RequestId, name: &str, value_type: ValueType) {
        let created = match self.create_local(name, value_type) {
            Ok(created) => created,
            Err(e) => {
                self.out.hold(Action::NamespaceDone { request, result: Err(e) });
                return;
            }
        };
        let id = self.rng.next_u64();
        let key = (self.id, id);
        let mut covered: BTreeSet<NodeId> = self.live.iter().copied().collect();
        covered.insert(self.id);
        let children: BTreeSet<NodeId> = self.live.iter().copied().collect();
        let announcement = Announcement {
            parent: None,
            request: Some(request),
            created,
            waiting: BTreeSet::new(),
            confirmed: std::iter::once(self.id).collect(),
            deadline_us: now_us.saturating_add(self.config.namespace_confirm_wait_us),
        };
        let budget_us = child_budget(self.config.namespace_confirm_wait_us);
        self.spread(key, announcement, name, value_type, children, covered, budget_us);
    }

    pub(super) fn on_announce(&mut self, now_us: u64, from: NodeId, a: NamespaceAnnounce) {
        let key = (a.origin, a.id);
        if self.announcements.contains_key(&key) || self.announced.contains(&key) {
            self.confirm_to(from, key, Vec::new());
            return;
        }
        let mut batch = PersistBatch::default();
        let ok = self.ensure_namespace(&a.namespace, a.value_type, &mut batch);
        self.finish_persist(batch);
        if !ok || self.announcements.len() >= ANNOUNCEMENTS_MAX {
            self.remember(key);
            self.confirm_to(from, key, if ok { vec![self.id] } else { Vec::new() });
            return;
        }
        let mut covered: BTreeSet<NodeId> = a.covered.iter().copied().collect();
        let children: BTreeSet<NodeId> =
            self.live.iter().copied().filter(|p| *p != from && !covered.contains(p)).collect();
        covered.extend(children.iter().copied());
        covered.insert(self.id);
        let announcement = Announcement {
            parent: Some(from),
            request: None,
            created: false,
            waiting: BTreeSet::new(),
            confirmed: std::iter::once(self.id).collect(),
            deadline_us: now_us.saturating_add(a.budget_us),
        };
        self.spread(key, announcement, &a.namespace, a.value_type, children, covered, child_budget(a.budget_us));
    }

    /// Send the announcement to `children` and wait for them (or answer at
    /// once when there are none).
    #[allow(clippy::too_many_arguments)]
    fn spread(
        &mut self,
        key: (NodeId, u64),
        mut announcement: Announcement,
        name: &str,
        value_type: ValueType,
        children: BTreeSet<NodeId>,
        covered: BTreeSet<NodeId>,
        budget_us: u64,
    ) {
        self.stats.announcements += 1;
        let covered: Vec<NodeId> = covered.into_iter().take(ANNOUNCE_NODES_MAX).collect();
        for &child in &children {
            let message = Message::Announce(NamespaceAnnounce {
                origin: key.0,
                id: key.1,
                namespace: name.to_string(),
                value_type,
                covered: covered.clone(),
                budget_us,
            });
            self.send(child, message);
        }
        announcement.waiting = children;
        self.announcements.insert(key, announcement);
        if self.announcements.get(&key).is_some_and(|a| a.waiting.is_empty()) {
            self.finish_announcement(key);
        }
    }

    pub(super) fn on_confirm(&mut self, from: NodeId, c: NamespaceConfirm) {
        let key = (c.origin, c.id);
        let Some(a) = self.announcements.get_mut(&key) else { return };
        if !a.waiting.remove(&from) {
            return;
        }
        a.confirmed.extend(c.confirmed);
        if a.waiting.is_empty() {
            self.finish_announcement(key);
        }
    }

    /// Children that left the live set will not answer: stop waiting.
    pub(super) fn announcements_lost_members(&mut self) {
        let live: BTreeSet<NodeId> = self.live.iter().copied().collect();
        let done: Vec<(NodeId, u64)> = self
            .announcements
            .iter_mut()
            .filter_map(|(k, a)| {
                let before = a.waiting.len();
                a.waiting.retain(|c| live.contains(c));
                (before > 0 && a.waiting.is_empty()).then_some(*k)
            })
            .collect();
        for key in done {
            self.finish_announcement(key);
        }
    }

    pub(super) fn expire_announcements(&mut self, now_us: u64) {
        let due: Vec<(NodeId, u64)> =
            self.announcements.iter().filter(|(_, a)| a.deadline_us <= now_us).map(|(k, _)| *k).collect();
        for key in due {
            self.finish_announcement(key);
        }
    }

    fn finish_announcement(&mut self, key: (NodeId, u64)) {
        let Some(a) = self.announcements.remove(&key) else { return };
        self.remember(key);
        if let Some(parent) = a.parent {
            let confirmed: Vec<NodeId> = a.confirmed.iter().copied().take(ANNOUNCE_NODES_MAX).collect();
            self.confirm_to(parent, key, confirmed);
        }
        if let Some(request) = a.request {
            let unconfirmed: Vec<NodeId> = self
                .peers
                .iter()
                .filter(|(id, p)| p.state == MemberState::Alive && !a.confirmed.contains(id))
                .map(|(id, _)| *id)
                .collect();
            let result = Ok(NamespaceCreated { created: a.created, unconfirmed });
            self.out.hold(Action::NamespaceDone { request, result });
        }
    }

    fn confirm_to(&mut self, to: NodeId, key: (NodeId, u64), confirmed: Vec<NodeId>) {
        self.send(to, Message::Confirm(NamespaceConfirm { origin: key.0, id: key.1, confirmed }));
    }

    fn remember(&mut self, key: (NodeId, u64)) {
        if self.announced.len() >= ANNOUNCED_REMEMBERED_MAX {
            self.announced.pop_front();
        }
        self.announced.push_back(key);
    }
}

/// The budget a node hands to the nodes it passes an announcement on to:
/// three quarters of its own, so their answers arrive before it gives up.
fn child_budget(budget_us: u64) -> u64 {
    budget_us / 4 * 3
}
