//! Range-based reconciliation sessions, for silent divergence.

use super::*;

/// Reconciliation sessions in progress at once (as initiator or responder).
pub const RECONCILE_SESSIONS_MAX: usize = 4;

/// A session with no message for this long is abandoned (the peer died or
/// messages were lost); the next anti-entropy round starts a fresh one.
pub const RECONCILE_SESSION_IDLE_MAX_US: u64 = 10_000_000;

pub(super) struct ReconcileSession {
    reconciler: Reconciler,
    started_us: u64,
    pub(super) last_activity_us: u64,
}

/// (peer, namespace, session id, whether we initiated it).
pub(super) type SessionKey = (NodeId, String, u64, bool);

impl Node {
    /// Start a reconciliation session for one namespace with `peer`.
    pub fn start_reconcile(&mut self, now_us: u64, peer: NodeId, namespace: &str) {
        if self.sessions.len() >= RECONCILE_SESSIONS_MAX
            || self.sessions.keys().any(|(p, n, _, _)| *p == peer && n == namespace)
        {
            return;
        }
        let Some(ns) = self.namespaces.get(namespace) else { return };
        let (reconciler, first) = Reconciler::initiate(ns.reconcile_index());
        let session = self.rng.next_u64();
        self.stats.reconcile_sessions_started += 1;
        self.sessions.insert(
            (peer, namespace.to_string(), session, true),
            ReconcileSession { reconciler, started_us: now_us, last_activity_us: now_us },
        );
        self.send(
            peer,
            Message::Reconcile(ReconcileStep {
                namespace: namespace.to_string(),
                session,
                from_initiator: true,
                body: first.encode(),
            }),
        );
    }

    pub(super) fn on_reconcile(&mut self, now_us: u64, from: NodeId, step: ReconcileStep) {
        let key: SessionKey = (from, step.namespace.clone(), step.session, !step.from_initiator);
        let Some(ns) = self.namespaces.get(&step.namespace) else { return };
        let body = match chorus_reconcile::Message::decode(&step.body) {
            Ok(m) => m,
            Err(_) => {
                self.stats.reconcile_sessions_failed += 1;
                self.sessions.remove(&key);
                return;
            }
        };
        if !self.sessions.contains_key(&key) {
            if !step.from_initiator || self.sessions.len() >= RECONCILE_SESSIONS_MAX {
                // A reply for a session we abandoned, or too many sessions:
                // the initiator's session will expire and a later round retry.
                return;
            }
            self.stats.reconcile_sessions_started += 1;
            self.sessions.insert(
                key.clone(),
                ReconcileSession { reconciler: Reconciler::responder(), started_us: now_us, last_activity_us: now_us },
            );
        }
        let Some(session) = self.sessions.get_mut(&key) else { return };
        session.last_activity_us = now_us;
        let result = session.reconciler.handle(ns.reconcile_index(), body);
        let started_us = session.started_us;
        match result {
            Ok(out) => {
                if let Some(reply) = out.reply {
                    self.out.hold(Action::Send {
                        to: from,
                        message: Message::Reconcile(ReconcileStep {
                            namespace: step.namespace.clone(),
                            session: step.session,
                            from_initiator: !step.from_initiator,
                            body: reply.encode(),
                        }),
                    });
                }
                // Send our version of every key found to differ; the peer
                // sends its own for the same keys, and both join.
                if !out.have.is_empty() {
                    let signed = self.signing.is_some();
                    let mut entries: Vec<(Key, Entry)> = Vec::new();
                    let mut proofs: Vec<crate::signing::KeyProof> = Vec::new();
                    for k in &out.have {
                        let Some(e) = ns.get(k) else { continue };
                        if signed {
                            // Without a proof peers would refuse it.
                            let Some(p) = ns.proof(k) else {
                                self.stats.unprovable_entries += 1;
                                continue;
                            };
                            proofs.push(p.clone());
                        }
                        entries.push((k.clone(), e.clone()));
                    }
                    self.stats.reconcile_entries_sent += entries.len() as u64;
                    let per = self.config.sync_entries_max.max(1) as usize;
                    for (i, chunk) in entries.chunks(per).enumerate() {
                        let proofs = if signed { proofs[i * per..i * per + chunk.len()].to_vec() } else { Vec::new() };
                        self.out.hold(Action::Send {
                            to: from,
                            message: Message::SyncPush(SyncPush {
                                deltas: vec![NamespaceDelta {
                                    namespace: step.namespace.clone(),
                                    value_type: ns.value_type(),
                                    entries: chunk.to_vec(),
                                    proofs,
                                    heads: Vec::new(),
                                    complete: false,
                                    seen: WireSeen::from(ns.seen()),
                                }],
                            }),
                        });
                    }
                }
                if out.done {
                    self.sessions.remove(&key);
                    self.stats.reconcile_sessions_completed += 1;
                    self.stats.reconcile_duration_us += now_us.saturating_sub(started_us);
                }
            }
            Err(_) => {
                self.sessions.remove(&key);
                self.stats.reconcile_sessions_failed += 1;
            }
        }
    }
}
