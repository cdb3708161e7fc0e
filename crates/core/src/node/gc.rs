//! Tombstone collection by GC epochs.

use super::*;

impl Node {
    pub(super) fn collect_garbage(&mut self) {
        let members: BTreeSet<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.state != MemberState::Left)
            .map(|(&id, _)| id)
            .chain(std::iter::once(self.id))
            .collect();
        if members.len() <= 1 && self.peers.is_empty() {
            // No membership known yet: nothing can be proven stable.
            return;
        }
        let limit = self.config.gc_batch_max as usize;
        let mut batch = PersistBatch::default();
        let names: Vec<String> = self.namespaces.keys().cloned().collect();
        for name in names {
            let Some(ns) = self.namespaces.get_mut(&name) else { continue };
            if ns.gc.completed.is_none() {
                ns.gc.try_complete(&members);
            }
            let floor_before = ns.collected_floor().clone();
            let collected = ns.collect_garbage(limit);
            if *ns.collected_floor() != floor_before {
                batch.ops.push(StoreOp {
                    space: persist::META_SPACE.to_string(),
                    key: format!("{}{name}", persist::GC_FLOOR_PREFIX).into_bytes(),
                    value: Some(persist::encode_gc_floor(ns.collected_floor())),
                });
            }
            self.stats.tombstones_collected += collected.len() as u64;
            let space = persist::entries_space(&name);
            let any = !collected.is_empty();
            let proofs_space = persist::proofs_space(&name);
            let signed = self.signing.is_some();
            for (key, rewritten) in collected {
                match rewritten {
                    Some(entry) => match ns.proof(&key) {
                        Some(p) if signed => batch.ops.push(proven_entry_op(&name, &key, &entry, p)),
                        _ => batch.ops.push(entry_op(&name, &key, &entry)),
                    },
                    None => {
                        // The legacy proof record, if the store has one.
                        if signed {
                            batch.ops.push(StoreOp { space: proofs_space.clone(), key: key.clone(), value: None });
                        }
                        batch.ops.push(StoreOp { space: space.clone(), key, value: None });
                    }
                }
            }
            // Collected keys take their clock entries with them; the record
            // keeps the seen set (and our own dot counter) from going back.
            if any {
                self.persist_namespace(&mut batch, &name);
            }
        }
        self.finish_persist(batch);
    }
}
