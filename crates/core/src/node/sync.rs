//! Anti-entropy by seen sets, and catch-up streams.

use super::*;

/// Peers queued for an immediate sync when they come back. When a
/// partition heals a node sees half the cluster return at once; syncing with
/// a few of them is enough, since each of those brings the other side's state.
pub const URGENT_SYNC_MAX: usize = 4;

/// Sync requests remembered for their replies (one per peer, newest wins).
pub(super) const PENDING_SYNC_REQUESTS_MAX: usize = 16;

/// Catch-up streams kept at once (see [`Node::deltas_for`]); evicting one
/// only restarts that peer's catch-up from the beginning.
pub(super) const STREAMS_MAX: usize = 64;

/// A catch-up larger than one message: our seen set when it started and
/// where the next chunk resumes.
pub(super) struct Stream {
    seen_at_start: SeenSet,
    cursor: (NodeId, u64),
    last_used_us: u64,
}

impl Node {
    pub(super) fn least_recently_synced(&mut self) -> Option<NodeId> {
        let oldest = self.live.iter().filter_map(|id| self.peers.get(id).map(|p| p.last_sync_us)).min()?;
        let candidates: Vec<NodeId> = self
            .live
            .iter()
            .copied()
            .filter(|id| self.peers.get(id).is_some_and(|p| p.last_sync_us == oldest))
            .collect();
        self.rng.choose_distinct(&candidates, 1).pop()
    }

    /// Begin a push-pull anti-entropy exchange with `peer` now.
    pub fn start_sync(&mut self, now_us: u64, peer: NodeId) {
        self.stats.sync_rounds_started += 1;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.last_sync_us = now_us.max(1);
        }
        let me = self.id;
        for ns in self.namespaces.values_mut() {
            let prefix = ns.seen().contiguous().clone();
            ns.gc.report(me, &prefix);
        }
        let prefixes: BTreeMap<String, VersionVector> =
            self.namespaces.values().map(|ns| (ns.name().to_string(), ns.seen().contiguous().clone())).collect();
        self.pending_sync.insert(peer, (now_us, prefixes));
        while self.pending_sync.len() > PENDING_SYNC_REQUESTS_MAX {
            let oldest = self.pending_sync.iter().min_by_key(|(_, (at, _))| *at).map(|(p, _)| *p);
            if let Some(p) = oldest {
                self.pending_sync.remove(&p);
            }
        }
        let summaries = self
            .namespaces
            .values()
            .map(|ns| NamespaceSummary {
                namespace: ns.name().to_string(),
                value_type: ns.value_type(),
                seen: WireSeen::from(ns.seen()),
                fingerprint: wire_fingerprint(ns),
            })
            .collect();
        self.send(peer, Message::SyncRequest(SyncRequest { summaries }));
    }

    /// What `peer` lacks, per namespace: every namespace the peer named,
    /// plus (with `include_unnamed`) every namespace of ours it did not name.
    ///
    /// A delta may carry only part of what the peer lacks (message bounds).
    /// The peer may fold our seen set into its own only after receiving
    /// *everything* it lacked relative to that seen set — chunks alone never
    /// let it, because dots superseded on the same key appear in no entry's
    /// clock. So a truncated delta starts a *stream*: we remember our seen
    /// set at its start and where the scan stopped; later deltas to the same
    /// peer resume from there, and the delta that reaches the end carries
    /// the start's seen set with `complete`. Every entry that had a clock
    /// entry the peer had not seen at the start is in some chunk (an entry
    /// that changes meanwhile only moves to a later index position), which
    /// makes that merge sound.
    pub(super) fn deltas_for(
        &mut self,
        now_us: u64,
        peer: NodeId,
        peer_seen: &BTreeMap<String, (ValueType, SeenSet)>,
        include_unnamed: bool,
    ) -> Vec<NamespaceDelta> {
        let mut budget_entries = self.config.sync_entries_max as usize;
        let mut budget_bytes = self.config.sync_bytes_max as usize;
        let empty = SeenSet::new();
        let mut names: BTreeSet<String> =
            if include_unnamed { self.namespaces.keys().cloned().collect() } else { BTreeSet::new() };
        names.extend(peer_seen.keys().cloned());
        let mut deltas = Vec::new();
        for name in names {
            match self.namespaces.get(&name) {
                Some(ns) => {
                    let theirs = peer_seen.get(&name).map(|(_, s)| s).unwrap_or(&empty);
                    let stream_key = (peer, name.clone());
                    let resume = self.streams.get(&stream_key).map(|s| s.cursor);
                    let (entries, stopped) = ns.missing_for(theirs, resume, budget_entries, budget_bytes);
                    let (entries, proofs) = if self.signing.is_some() {
                        let (mut kept, mut proofs) = (Vec::with_capacity(entries.len()), Vec::new());
                        for (k, e) in entries {
                            match ns.proof(&k) {
                                Some(p) => {
                                    proofs.push(p.clone());
                                    kept.push((k, e));
                                }
                                // Stored before signing was on (or its proof
                                // record was damaged): peers would refuse it.
                                None => self.stats.unprovable_entries += 1,
                            }
                        }
                        (kept, proofs)
                    } else {
                        (entries, Vec::new())
                    };
                    budget_entries = budget_entries.saturating_sub(entries.len());
                    let bytes: usize = entries.iter().map(|(k, e)| k.len() + e.canonical_bytes().len()).sum();
                    budget_bytes = budget_bytes.saturating_sub(bytes);
                    self.stats.sync_entries_sent += entries.len() as u64;
                    let value_type = ns.value_type();
                    let current = ns.seen().clone();
                    let (seen, complete) = match stopped {
                        None => match self.streams.remove(&stream_key) {
                            Some(stream) => (stream.seen_at_start, true),
                            None => (current, true),
                        },
                        Some(cursor) => {
                            let stream = self.streams.entry(stream_key).or_insert(Stream {
                                seen_at_start: current.clone(),
                                cursor,
                                last_used_us: now_us,
                            });
                            stream.cursor = cursor;
                            stream.last_used_us = now_us;
                            (current, false)
                        }
                    };
                    let heads = if self.signing.is_some() {
                        let (contiguous, exceptions) = seen.parts();
                        let origins: BTreeSet<NodeId> =
                            contiguous.iter().map(|(n, _)| n).chain(exceptions.keys().copied()).collect();
                        origins.iter().filter_map(|o| ns.heads().get(o).cloned()).collect()
                    } else {
                        Vec::new()
                    };
                    deltas.push(NamespaceDelta {
                        namespace: name.clone(),
                        value_type,
                        entries,
                        proofs,
                        heads,
                        complete,
                        seen: WireSeen::from(&seen),
                    });
                }
                None => {
                    // We lack it entirely: an empty seen set asks for everything.
                    if let Some((ty, _)) = peer_seen.get(&name) {
                        deltas.push(NamespaceDelta {
                            namespace: name.clone(),
                            value_type: *ty,
                            entries: Vec::new(),
                            proofs: Vec::new(),
                            heads: Vec::new(),
                            complete: true,
                            seen: WireSeen::from(&empty),
                        });
                    }
                }
            }
        }
        // A catch-up in progress continues at once instead of waiting for
        // the next round to pick this peer again.
        if deltas.iter().any(|d| !d.complete) && !self.urgent_sync.contains(&peer) {
            if self.urgent_sync.len() >= URGENT_SYNC_MAX {
                self.urgent_sync.pop_back();
            }
            self.urgent_sync.push_front(peer);
            self.next_anti_entropy_us = Some(now_us);
        }
        while self.streams.len() > STREAMS_MAX {
            let oldest = self.streams.iter().min_by_key(|(_, s)| s.last_used_us).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.streams.remove(&k);
            }
        }
        deltas
    }

    pub(super) fn on_sync_request(&mut self, now_us: u64, from: NodeId, request: SyncRequest) {
        let mut peer_seen = BTreeMap::new();
        let mut in_sync: BTreeSet<String> = BTreeSet::new();
        let mut diverged: Vec<String> = Vec::new();
        for s in request.summaries {
            let seen = s.seen.to_seen();
            if let Some(ns) = self.namespaces.get_mut(&s.namespace) {
                ns.gc.report(from, seen.contiguous());
                if WireSeen::from(ns.seen()) == s.seen {
                    // Equal seen sets: nothing to send by version vector.
                    // Equal fingerprints too: the fast path, nothing at all.
                    // Unequal fingerprints: silent divergence (a corrupt or
                    // stale entry) that only reconciliation can find.
                    in_sync.insert(s.namespace.clone());
                    if wire_fingerprint(ns) != s.fingerprint {
                        diverged.push(s.namespace.clone());
                    }
                }
            }
            peer_seen.insert(s.namespace, (s.value_type, seen));
        }
        let deltas: Vec<NamespaceDelta> = self
            .deltas_for(now_us, from, &peer_seen, true)
            .into_iter()
            .filter(|d| !in_sync.contains(&d.namespace))
            .collect();
        let in_sync: Vec<String> = in_sync.into_iter().collect();
        self.send(from, Message::SyncReply(SyncReply { deltas, in_sync }));
        for name in diverged {
            self.start_reconcile(now_us, from, &name);
        }
    }

    pub(super) fn on_sync_reply(&mut self, now_us: u64, from: NodeId, reply: SyncReply) {
        if let Some((_, sent)) = self.pending_sync.remove(&from) {
            for name in &reply.in_sync {
                if let (Some(prefix), Some(ns)) = (sent.get(name), self.namespaces.get_mut(name)) {
                    ns.gc.report(from, prefix);
                }
            }
        }
        let mut batch = PersistBatch::default();
        let mut peer_seen = BTreeMap::new();
        for d in &reply.deltas {
            self.apply_delta(now_us, from, d, &mut batch);
            peer_seen.insert(d.namespace.clone(), (d.value_type, d.seen.to_seen()));
        }
        self.finish_persist(batch);
        if let Some(p) = self.peers.get_mut(&from) {
            p.last_sync_us = now_us.max(1);
        }
        // Only namespaces the reply names: a namespace left out is one the
        // peer found in sync with our request (the fast path).
        let deltas: Vec<NamespaceDelta> = self
            .deltas_for(now_us, from, &peer_seen, false)
            .into_iter()
            .filter(|d| {
                !d.entries.is_empty() || !peer_seen.get(&d.namespace).is_some_and(|(_, s)| WireSeen::from(s) == d.seen)
            })
            .collect();
        if !deltas.is_empty() {
            self.send(from, Message::SyncPush(SyncPush { deltas }));
        }
    }

    pub(super) fn apply_delta(&mut self, now_us: u64, from: NodeId, delta: &NamespaceDelta, batch: &mut PersistBatch) {
        let mut seen = delta.seen.to_seen();
        let own = self.namespaces.get(&delta.namespace).map(|ns| ns.own_counter(self.id)).unwrap_or(0);
        if seen.contiguous().get(self.id) > own || seen.exceptions(self.id).any(|c| c > own) {
            self.forged(from);
            seen.clamp_origin(self.id, own);
        }
        // Namespaces propagate through anti-entropy even before their first
        // write, so one created on any node soon exists on every node.
        if !self.ensure_namespace(&delta.namespace, delta.value_type, batch) {
            return;
        }
        let mut all_admitted = true;
        let mut seen_changed = false;
        if self.signing.is_some() && delta.proofs.len() != delta.entries.len() {
            self.proof_refused(from, &crate::signing::ProofError::Mismatch("a delta without proofs"));
            return;
        }
        for (i, (key, entry)) in delta.entries.iter().enumerate() {
            self.stats.sync_entries_received += 1;
            let proof = delta.proofs.get(i);
            if let Err(e) = self.check_proof(&delta.namespace, key, entry, proof) {
                self.proof_refused(from, &e);
                all_admitted = false;
                continue;
            }
            if !self.admit(now_us, from, &delta.namespace, entry) {
                all_admitted = false;
                continue;
            }
            let Some(ns) = self.namespaces.get_mut(&delta.namespace) else { return };
            match ns.merge(key, entry) {
                Ok(MergeOutcome::Changed) => {
                    self.stats.sync_entries_repaired += 1;
                    if let Some(e) = ns.get(key)
                        && self.signing.is_none()
                    {
                        batch.ops.push(entry_op(&delta.namespace, key, e));
                    }
                    // With signing on, the entry is stored with its proof.
                    self.keep_proof(&delta.namespace, key, proof, true, batch);
                }
                Ok(MergeOutcome::Unchanged) => self.keep_proof(&delta.namespace, key, proof, false, batch),
                Err(_) => {
                    self.stats.rejected_type += 1;
                    all_admitted = false;
                }
            }
        }
        if delta.complete && all_admitted && !self.back_seen_claims(from, &delta.namespace, &mut seen, &delta.heads) {
            all_admitted = false;
        }
        let Some(ns) = self.namespaces.get_mut(&delta.namespace) else { return };
        ns.gc.report(from, seen.contiguous());
        if delta.complete && all_admitted {
            let before = ns.seen().clone();
            ns.seen_mut().merge(&seen);
            seen_changed = *ns.seen() != before;
        }
        // A merged seen set carries knowledge the entries' clocks do not
        // (dots superseded before they reached us), so it is persisted.
        if seen_changed {
            self.persist_namespace(batch, &delta.namespace);
        }
    }
}
