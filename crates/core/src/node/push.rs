//! Eager broadcast: pushing new writes and applying pushed ones.

use super::*;

impl Node {
    /// Send `items` to `targets`. The push names as covered the nodes in
    /// `covered` (whom it was sent to before this hop) and `targets`, up to
    /// `PUSH_COVERED_MAX`: a receiver that sees every peer it could forward
    /// to covered does not forward.
    pub(super) fn send_push(&mut self, targets: &[NodeId], hops: u8, items: Vec<PushItem>, covered: &[NodeId]) {
        if items.is_empty() {
            return;
        }
        let mut now_covered: Vec<NodeId> = covered.to_vec();
        for &t in targets {
            if now_covered.len() >= crate::wire::PUSH_COVERED_MAX {
                break;
            }
            if !now_covered.contains(&t) {
                now_covered.push(t);
            }
        }
        // A message carries at most ITEMS_PER_MESSAGE_MAX items and about
        // `sync_bytes_max` bytes (soft: one item always goes), so a large
        // group of writes never makes a frame the transport refuses.
        let bytes_max = self.config.sync_bytes_max as usize;
        let mut start = 0;
        while start < items.len() {
            let mut end = start;
            let mut bytes = 0usize;
            while end < items.len() && end - start < crate::wire::ITEMS_PER_MESSAGE_MAX {
                let size = items[end].key.len() + items[end].entry.size_estimate();
                if end > start && bytes + size > bytes_max {
                    break;
                }
                bytes += size;
                end += 1;
            }
            for &to in targets {
                self.stats.push_messages_sent += 1;
                self.send(
                    to,
                    Message::Push(Push { hops, items: items[start..end].to_vec(), covered: now_covered.clone() }),
                );
            }
            start = end;
        }
    }

    pub(super) fn peer_allowed(&mut self, from: NodeId) -> bool {
        match self.peers.get(&from) {
            Some(p) if !tiers_may_talk(self.config.tier, p.tier) => {
                self.stats.rejected_tier += 1;
                false
            }
            _ => true,
        }
    }

    pub(super) fn ensure_namespace(&mut self, name: &str, value_type: ValueType, batch: &mut PersistBatch) -> bool {
        match self.namespaces.get(name) {
            Some(ns) if ns.value_type() == value_type => true,
            Some(_) => {
                self.stats.rejected_type += 1;
                false
            }
            None => {
                if !valid_namespace_name(name) {
                    return false;
                }
                let ns = self.new_namespace(name, value_type);
                self.namespaces.insert(name.to_string(), ns);
                self.persist_namespace(batch, name);
                true
            }
        }
    }

    /// Check an incoming entry before merging it: it must not claim writes
    /// of ours that we never issued (a forged or corrupt state would poison
    /// our dot counter), and its timestamps must pass our clock check (they
    /// are then folded into the HLC). A refused entry is dropped whole.
    pub(super) fn admit(&mut self, now_us: u64, from: NodeId, namespace: &str, entry: &Entry) -> bool {
        if injected!(self.config, AccuseHonestPeers) && !self.misbehavior_reported {
            self.misbehavior_reported = true;
            self.out.hold(Action::PeerMisbehaved { peer: from, reason: Misbehavior::ForgedDots });
        }
        let own = self.namespaces.get(namespace).map(|ns| ns.own_counter(self.id)).unwrap_or(0);
        if entry.clock().get(self.id) > own {
            self.forged(from);
            return false;
        }
        let ts = entry.timestamp_max();
        if ts == Timestamp::ZERO {
            return true;
        }
        match self.hlc.update(ts, now_us) {
            Ok(_) => true,
            Err(_) => {
                self.stats.rejected_clock += 1;
                false
            }
        }
    }

    pub(super) fn on_push(&mut self, now_us: u64, from: NodeId, push: Push) {
        let Push { hops, items, covered } = push;
        let mut batch = PersistBatch::default();
        let mut forward: Vec<PushItem> = Vec::new();
        let mut origins: BTreeSet<NodeId> = BTreeSet::new();
        for item in items {
            self.stats.push_items_received += 1;
            if !self.ensure_namespace(&item.namespace, item.value_type, &mut batch) {
                continue;
            }
            let already = self.namespaces.get(&item.namespace).is_some_and(|ns| ns.seen().contains(item.dot));
            if already {
                self.stats.push_duplicates += 1;
                continue;
            }
            if let Err(e) = self.check_proof(&item.namespace, &item.key, &item.entry, item.proof.as_ref()) {
                self.proof_refused(from, &e);
                continue;
            }
            if self.signing.is_some() && !item_dot_attested(&item) {
                // A real state under an invented dot would mark a write
                // seen that no origin made.
                self.proof_refused(from, &crate::signing::ProofError::Mismatch("push item's dot is not attested"));
                continue;
            }
            if !self.admit(now_us, from, &item.namespace, &item.entry) {
                continue;
            }
            let Some(ns) = self.namespaces.get_mut(&item.namespace) else { continue };
            if injected!(self.config, SkipMergeOnPush) {
                ns.seen_mut().insert(item.dot);
            } else {
                let before = lww_value_ts(ns.get(&item.key));
                match ns.merge(&item.key, &item.entry) {
                    Ok(MergeOutcome::Changed) => {
                        if let Some(e) = ns.get(&item.key) {
                            if before.is_some_and(|b| Some(b) != lww_value_ts(Some(e))) {
                                self.stats.lww_overwrites += 1;
                            }
                            if self.signing.is_none() {
                                batch.ops.push(entry_op(&item.namespace, &item.key, e));
                            }
                        }
                        // With signing on, the entry is stored with its proof.
                        self.keep_proof(&item.namespace, &item.key, item.proof.as_ref(), true, &mut batch);
                    }
                    Ok(MergeOutcome::Unchanged) => {
                        self.keep_proof(&item.namespace, &item.key, item.proof.as_ref(), false, &mut batch);
                    }
                    Err(JoinError::TypeMismatch { .. }) => {
                        self.stats.rejected_type += 1;
                        continue;
                    }
                }
                if let Some(ns) = self.namespaces.get_mut(&item.namespace) {
                    ns.seen_mut().insert(item.dot);
                }
            }
            origins.insert(item.dot.node);
            forward.push(item);
        }
        self.finish_persist(batch);
        let next_hops = hops.saturating_add(1);
        if next_hops < self.hop_limit() && !forward.is_empty() {
            // Never back to the sender or an origin. When the push was already
            // sent to every peer we could forward it to (the origin reached
            // every live peer itself: a small cluster), nobody forwards: the
            // copies would all be duplicates. Otherwise covered nodes stay
            // candidates: those duplicates are the redundancy that carries a
            // push past lost messages (`crates/sim/tests/chaos.rs` measures
            // it), and `docs/design/replication.md` ("Messages") says why.
            let candidate = |p: &NodeId| *p != from && !origins.contains(p);
            let all_covered = self.live.iter().filter(|p| candidate(p)).all(|p| covered.contains(p));
            let fanout = self.fanout();
            let targets = if all_covered { Vec::new() } else { self.rng.sample_where(&self.live, fanout, candidate) };
            if !targets.is_empty() {
                self.stats.push_items_forwarded += forward.len() as u64;
                self.send_push(&targets, next_hops, forward, &covered);
            }
        }
    }
}

/// Whether the item's own dot is one of the writes its proof attests, with
/// the item's timestamp.
fn item_dot_attested(item: &PushItem) -> bool {
    item.proof
        .as_ref()
        .is_some_and(|p| p.attestations.iter().any(|a| a.record.dot == item.dot && a.record.ts == item.ts))
}
