//! Strong namespaces in the daemon (`docs/design/strong.md`): one Raft group
//! per cluster (`chorus-strong`), sharing the node's store, QUIC transport
//! and SWIM view.
//!
//! * **Keys.** Every strong namespace lives in the one replicated KV: key
//!   `k` of namespace `ns` is stored as `ns/k` (namespace names cannot hold
//!   `/`), so a namespace is a key range and revisions are cluster-wide, as
//!   in etcd. The registry of strong namespaces is the range under
//!   [`REGISTRY_PREFIX`] (`\0ns/<name>`), written through the log like any
//!   key, so every node agrees on which names are strong.
//! * **Ids.** A node's Raft id is a hash of its name ([`crate::config::strong_id`]):
//!   stable across restarts, computable by every node.
//! * **Bootstrap.** `strong_voters` names the first voters. The lowest name
//!   initialises the group once SWIM shows every voter alive (so every
//!   voter's address is known). Initialising an already initialised group is
//!   refused by openraft and ignored here.
//! * **Learners.** The leader adds every other live member as a learner, so
//!   every node knows the leader (to forward writes) and can serve
//!   `stale=true` reads from its own replica.

use crate::clock::ClockHandle;
use chorus_net::{MemberState, Membership, Transport};
use chorus_storage::Storage;
use chorus_strong::{Query, QueryResult, StrongError, StrongNode, WallClock};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// Registry of strong namespaces: `\0ns/<name>` → the namespace's type.
pub const REGISTRY_PREFIX: &[u8] = b"\0ns/";
/// Period of the bootstrap/learner upkeep.
const UPKEEP_PERIOD: Duration = Duration::from_millis(200);
/// Most strong namespaces listed.
pub const NAMESPACES_LISTED_MAX: usize = 1000;

/// The stored key of `key` in namespace `ns`.
pub fn data_key(ns: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ns.len() + 1 + key.len());
    out.extend_from_slice(ns.as_bytes());
    out.push(b'/');
    out.extend_from_slice(key);
    out
}

/// The registry key of namespace `ns`.
pub fn registry_key(ns: &str) -> Vec<u8> {
    let mut out = REGISTRY_PREFIX.to_vec();
    out.extend_from_slice(ns.as_bytes());
    out
}

/// The first key after every key starting with `prefix` (`None`: no end).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Strong namespaces use the daemon's corrected clock for lease deadlines,
/// and stamp none while the clock service finds it unsafe.
struct CorrectedClock(Arc<ClockHandle>);

impl WallClock for CorrectedClock {
    fn now_ms(&self) -> u64 {
        use crate::clock::Clock;
        self.0.now_us() / 1000
    }

    fn is_safe(&self) -> bool {
        self.0.is_safe()
    }
}

/// The strong side of a node.
pub struct StrongService {
    pub node: StrongNode,
    own_name: String,
    seed_voters: Vec<String>,
    /// Names known to be strong (never shrinks: namespaces are not deleted).
    known: RwLock<HashSet<String>>,
    /// Learner additions in flight (leader only).
    adding: Mutex<BTreeSet<u64>>,
}

impl StrongService {
    /// Start the Raft node on the node's store and transport, or `None`
    /// when the cluster has no `strong_voters`.
    pub async fn start(
        config: &crate::Config,
        storage: Arc<dyn Storage>,
        transport: Transport,
        clock: Arc<ClockHandle>,
    ) -> anyhow::Result<Option<Arc<StrongService>>> {
        if config.strong_voters.is_empty() {
            return Ok(None);
        }
        let mut sconfig = config.strong_config();
        sconfig.clock = Arc::new(CorrectedClock(clock));
        #[cfg(feature = "test-knobs")]
        if crate::knobs::strong_snapshot_fail_from_env() {
            tracing::warn!(
                "{} is set: every strong snapshot build fails and stops the Raft group (a test knob)",
                crate::knobs::STRONG_SNAPSHOT_FAIL_ENV
            );
            sconfig.fail_snapshot_builds = true;
        }
        let node = StrongNode::start(sconfig, storage, transport).await?;
        Ok(Some(Arc::new(StrongService {
            node,
            own_name: config.name.clone(),
            seed_voters: config.strong_voters.clone(),
            known: RwLock::new(HashSet::new()),
            adding: Mutex::new(BTreeSet::new()),
        })))
    }

    /// Whether `ns` is a strong namespace, from this node's replica (a
    /// namespace created elsewhere a moment ago may not be here yet; see
    /// [`StrongService::is_strong_linearizable`]).
    pub fn is_strong(&self, ns: &str) -> bool {
        if self.known.read().unwrap_or_else(PoisonError::into_inner).contains(ns) {
            return true;
        }
        let local = self.node.query_stale(Query::Get { key: registry_key(ns) });
        let found = matches!(local.result, QueryResult::Get(Some(_)));
        if found {
            self.known.write().unwrap_or_else(PoisonError::into_inner).insert(ns.to_string());
        }
        found
    }

    /// Whether `ns` is strong, asking the leader (for names this replica
    /// does not know yet). Each question to the leader is counted
    /// (`chorus_strong_registry_reads_total`): the API must ask only about
    /// names no local registry knows.
    pub async fn is_strong_linearizable(&self, ns: &str) -> Result<bool, StrongError> {
        if self.is_strong(ns) {
            return Ok(true);
        }
        crate::telemetry::strong_registry_read();
        let found = self.node.read(&registry_key(ns), true).await?.is_some();
        if found {
            self.known.write().unwrap_or_else(PoisonError::into_inner).insert(ns.to_string());
        }
        Ok(found)
    }

    /// Create strong namespace `ns` (type lww). `Ok(true)`: created now;
    /// `Ok(false)`: it already existed.
    pub async fn create_namespace(&self, ns: &str) -> Result<bool, StrongError> {
        use chorus_strong::kv::{Compare, CompareOp, CompareTarget, KvCommand, KvResponse, TxnOp};
        let key = registry_key(ns);
        let command = KvCommand::Txn {
            compares: vec![Compare { key: key.clone(), op: CompareOp::Equal, target: CompareTarget::Version(0) }],
            success: vec![TxnOp::Put { key, value: b"lww".to_vec(), lease: None }],
            failure: vec![],
        };
        let created = match self.node.write(command).await? {
            KvResponse::Txn { succeeded, .. } => succeeded,
            other => return Err(StrongError::Protocol(format!("unexpected answer {other:?}"))),
        };
        self.known.write().unwrap_or_else(PoisonError::into_inner).insert(ns.to_string());
        Ok(created)
    }

    /// Strong namespaces in this replica with their key counts.
    pub fn namespaces(&self) -> Vec<(String, u64)> {
        let listed = self.node.query_stale(Query::Range {
            start: REGISTRY_PREFIX.to_vec(),
            end: prefix_end(REGISTRY_PREFIX),
            limit: NAMESPACES_LISTED_MAX,
        });
        let QueryResult::Range(items) = listed.result else { return Vec::new() };
        items
            .into_iter()
            .filter_map(|kv| {
                let name = String::from_utf8(kv.key.strip_prefix(REGISTRY_PREFIX)?.to_vec()).ok()?;
                let count = self.key_count(&name);
                Some((name, count))
            })
            .collect()
    }

    /// Keys of strong namespace `ns` in this replica.
    pub fn key_count(&self, ns: &str) -> u64 {
        let start = data_key(ns, b"");
        let end = prefix_end(&start);
        match self.node.query_stale(Query::Count { start, end }).result {
            QueryResult::Count(n) => n,
            _ => 0,
        }
    }

    /// A Raft id's node name (`#<id>` when unknown).
    pub fn name_of(&self, id: u64) -> String {
        let status = self.node.status();
        if let Some(peer) = status.voters.get(&id).or_else(|| status.learners.get(&id)) {
            return peer.name.clone();
        }
        if id == self.node.id() {
            return self.own_name.clone();
        }
        self.seed_voters.iter().find(|n| crate::config::strong_id(n) == id).cloned().unwrap_or_else(|| format!("#{id}"))
    }

    /// Names of `ids`.
    pub fn names_of(&self, ids: &[u64]) -> Vec<String> {
        ids.iter().map(|id| self.name_of(*id)).collect()
    }

    /// One upkeep step: bootstrap the group (lowest seed voter, once every
    /// seed voter is alive) and, on the leader, add live non-members as
    /// learners.
    async fn upkeep(self: &Arc<Self>, membership: &Membership) {
        let status = self.node.status();
        let live: BTreeMap<String, std::net::SocketAddr> = membership
            .members()
            .into_iter()
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| (m.name, m.addr))
            .chain(std::iter::once((self.own_name.clone(), membership.local().addr)))
            .collect();
        let uninitialised = status.voters.is_empty() && status.learners.is_empty() && status.term == 0;
        let bootstrapper = self.seed_voters.iter().min() == Some(&self.own_name);
        if uninitialised && bootstrapper {
            let voters: Option<BTreeMap<u64, chorus_strong::PeerNode>> = self
                .seed_voters
                .iter()
                .map(|name| {
                    let addr = *live.get(name)?;
                    Some((crate::config::strong_id(name), chorus_strong::PeerNode { name: name.clone(), addr }))
                })
                .collect();
            if let Some(voters) = voters {
                match self.node.initialize(voters).await {
                    Ok(()) => tracing::info!(voters = ?self.seed_voters, "strong namespaces: Raft group initialised"),
                    Err(e) => tracing::debug!(error = %e, "Raft initialisation refused (already initialised?)"),
                }
            }
            return;
        }
        if status.leader != Some(self.node.id()) {
            return;
        }
        for (name, addr) in live {
            let id = crate::config::strong_id(&name);
            if status.voters.contains_key(&id) || status.learners.contains_key(&id) {
                continue;
            }
            if !self.adding.lock().unwrap_or_else(PoisonError::into_inner).insert(id) {
                continue;
            }
            let svc = Arc::clone(self);
            tokio::spawn(async move {
                let peer = chorus_strong::PeerNode { name: name.clone(), addr };
                match svc.node.add_learner(id, peer).await {
                    Ok(()) => tracing::info!(learner = %name, "strong namespaces: learner added"),
                    Err(e) => tracing::debug!(learner = %name, error = %e, "adding learner failed; will retry"),
                }
                svc.adding.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
            });
        }
    }
}

/// Runs [`StrongService::upkeep`] every [`UPKEEP_PERIOD`] until shutdown.
pub async fn run_upkeep(svc: Arc<StrongService>, membership: Membership, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(UPKEEP_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        svc.upkeep(&membership).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn namespaces_are_disjoint_key_ranges() {
        let a = data_key("a", b"x");
        let ab = data_key("ab", b"");
        let end = prefix_end(&data_key("a", b"")).unwrap();
        assert!(a < end);
        assert!(ab >= end, "namespace `ab` must not fall inside namespace `a`");
        assert!(registry_key("a") < data_key("a", b""), "the registry sorts before every namespace");
    }
}
