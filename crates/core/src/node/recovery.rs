//! Rebuilding a node from its store (see `docs/design/replication.md`,
//! "Durability and restart").

use super::*;

impl Node {
    /// Rebuild a node from everything its store holds.
    pub fn recover(id: NodeId, config: NodeConfig, seed: u64, image: &RecoveryImage) -> Result<Self, RecoverError> {
        let mut node = Node::new(id, config, seed);
        // A store that ever held a write of ours holds the HLC record.
        node.started_empty = image.get(persist::META_SPACE).is_none_or(|m| !m.contains_key(persist::HLC_KEY));
        let corrupt = |space: &str, key: &[u8], reason: String| RecoverError::Corrupt {
            space: space.to_string(),
            key: key.to_vec(),
            reason,
        };
        if let Some(meta) = image.get(persist::META_SPACE)
            && let Some(bytes) = meta.get(persist::HLC_KEY)
        {
            let hw = persist::decode_hlc(bytes).map_err(|r| corrupt(persist::META_SPACE, persist::HLC_KEY, r))?;
            node.hlc = Hlc::resume(id, node.config.offset_max_us, hw);
        }
        if let Some(bytes) = image.get(persist::META_SPACE).and_then(|m| m.get(persist::BLOCK_HEAD_KEY)) {
            // Continuing the chain from a wrong head would sign a second
            // block under a used sequence number: refuse to start instead.
            node.block_head = persist::decode_block_head(bytes)
                .map_err(|r| corrupt(persist::META_SPACE, persist::BLOCK_HEAD_KEY, r))?;
        }
        if let Some(keys) = image.get(persist::IDEMPOTENCY_SPACE) {
            // A damaged record only loses its retry protection: skipped.
            let records =
                keys.iter().filter_map(|(k, v)| persist::decode_idempotency_record(v).ok().map(|r| (k.clone(), r)));
            node.restore_idempotency(records);
        }
        let value_max = node.config.value_bytes_max as usize;
        if let Some(spaces) = image.get(persist::NAMESPACES_SPACE) {
            for (name_bytes, record) in spaces {
                let name = String::from_utf8(name_bytes.clone())
                    .map_err(|_| corrupt(persist::NAMESPACES_SPACE, name_bytes, "name is not UTF-8".into()))?;
                let rec =
                    persist::decode_namespace(record).map_err(|r| corrupt(persist::NAMESPACES_SPACE, name_bytes, r))?;
                let mut ns = Namespace::new(name.clone(), rec.value_type);
                let space = persist::entries_space(&name);
                if let Some(entries) = image.get(&space) {
                    for (key, bytes) in entries {
                        // A corrupt entry is dropped, not fatal: the seen set
                        // still claims its dots, so equal seen sets with
                        // unequal fingerprints make reconciliation fetch it
                        // back from a peer.
                        let er = match persist::decode_entry(bytes) {
                            Ok(er)
                                if er.entry.value_type() == rec.value_type && er.entry.validate(value_max).is_ok() =>
                            {
                                er
                            }
                            _ => {
                                node.stats.corrupt_entries_dropped += 1;
                                continue;
                            }
                        };
                        // Timestamps inside stored entries are ours or were
                        // accepted before; the HLC must stay above them.
                        let ts = er.entry.timestamp_max();
                        if ts > node.hlc.high_water() && ts.node == id {
                            node.hlc = Hlc::resume(id, node.config.offset_max_us, ts);
                        }
                        ns.install(key.clone(), er.entry);
                        if let Some(p) = er.proof {
                            ns.set_proof(key.clone(), p);
                        }
                    }
                }
                // Proofs and heads (`docs/design/signing.md`, "Storage"):
                // an entry's record carries its proof; stores written before
                // record version 3 keep proofs in their own space, read for
                // entries whose record has none. A damaged proof only makes
                // its entry unprovable here (peers hold it too); damaged
                // heads are rebuilt from the proofs.
                if let Some(proofs) = image.get(&persist::proofs_space(&name)) {
                    for (key, bytes) in proofs {
                        if ns.proof(key).is_some() {
                            continue;
                        }
                        match persist::decode_proof(bytes) {
                            Ok(p) if ns.get(key).is_some() => ns.set_proof(key.clone(), p),
                            _ => node.stats.unprovable_entries += 1,
                        }
                    }
                }
                let heads_key = format!("{}{name}", persist::HEADS_PREFIX).into_bytes();
                if let Some(Ok(heads)) =
                    image.get(persist::META_SPACE).and_then(|m| m.get(&heads_key)).map(|b| persist::decode_heads(b))
                {
                    ns.set_heads(heads);
                }
                let attested: Vec<(Key, crate::signing::Attestation)> = ns
                    .entries()
                    .filter_map(|(k, _)| ns.proof(k).map(|p| (k.clone(), p)))
                    .flat_map(|(k, p)| p.attestations.iter().map(move |a| (k.clone(), a.clone())))
                    .collect();
                for (k, a) in attested {
                    ns.raise_head(&k, &a);
                }
                // The stored record may predate the entries: fold every
                // entry's clock into it (each clock entry is a dot whose
                // write this entry reflects), and restore our own counter
                // to the greatest own dot anywhere, since own dots are dense
                // and each was durable before it was exposed.
                let mut seen = rec.seen.to_seen();
                let mut own_max = seen.contiguous().get(id);
                let forget_own = injected!(node.config, ForgetOwnDotsOnRecovery);
                for (_, e) in ns.entries() {
                    for (o, c) in e.clock().iter() {
                        if forget_own && o == id {
                            continue;
                        }
                        seen.insert(Dot { node: o, counter: c });
                    }
                    if !forget_own {
                        own_max = own_max.max(e.clock().get(id));
                    }
                }
                let (mut prefix, exceptions) = seen.into_parts();
                prefix.raise(id, own_max);
                // A damaged floor record must not let a watcher resume past
                // a collected delete: the whole seen prefix is then the floor.
                let floor_key = format!("{}{name}", persist::GC_FLOOR_PREFIX).into_bytes();
                if let Some(bytes) = image.get(persist::META_SPACE).and_then(|m| m.get(&floor_key)) {
                    ns.raise_collected_floor(&persist::decode_gc_floor(bytes).unwrap_or_else(|_| prefix.clone()));
                }
                ns.set_seen(SeenSet::from_parts(prefix, exceptions));
                node.namespaces.insert(name, ns);
            }
        }
        Ok(node)
    }
}
