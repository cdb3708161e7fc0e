//! Local writes: dots, timestamps and the first push.

use super::*;

/// Longest idempotency key (`request_id`) a client may give.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

/// Idempotency keys remembered at once; past it the oldest is forgotten
/// early (its retries then apply again, as after the window).
pub const IDEMPOTENCY_KEYS_MAX: usize = 65_536;

impl Node {
    /// Create a namespace on this node alone (idempotent for the same type).
    /// Its record is persisted; peers learn of it through anti-entropy. A
    /// client's creation goes through [`Node::handle_create_namespace`],
    /// which also waits for every reachable node to hold it.
    pub fn create_namespace(&mut self, name: &str, value_type: ValueType) -> Result<(), NamespaceError> {
        self.create_local(name, value_type).map(|_| ())
    }

    /// `Ok(true)`: created now (its record queued for persisting);
    /// `Ok(false)`: it existed with this type.
    pub(super) fn create_local(&mut self, name: &str, value_type: ValueType) -> Result<bool, NamespaceError> {
        if let Some(h) = &self.out.halted {
            return Err(NamespaceError::Halted(h.clone()));
        }
        if !valid_namespace_name(name) {
            return Err(NamespaceError::InvalidName(name.to_string()));
        }
        if let Some(ns) = self.namespaces.get(name) {
            if ns.value_type() == value_type {
                return Ok(false);
            }
            return Err(NamespaceError::TypeConflict { name: name.to_string(), existing: ns.value_type().as_str() });
        }
        let ns = self.new_namespace(name, value_type);
        self.namespaces.insert(name.to_string(), ns);
        let mut batch = PersistBatch::default();
        self.persist_namespace(&mut batch, name);
        self.out.persist(batch);
        Ok(true)
    }

    /// Accept a group of client writes: one batch to persist for all of
    /// them (group commit is the driver handing in many writes at once).
    /// Each write's outcome comes out as [`Action::WriteDone`] for its
    /// request, after the batch is durable (refusals too, in order).
    pub fn handle_local_writes(&mut self, now_us: u64, writes: Vec<(RequestId, LocalWrite)>) {
        let mut outcomes = Vec::with_capacity(writes.len());
        let mut batch = PersistBatch::default();
        let mut items: Vec<PushItem> = Vec::new();
        // With signing on, each item's record, for this turn's block.
        let mut records: Vec<crate::signing::WriteRecord> = Vec::new();
        for (request, w) in writes {
            if let Some(h) = &self.out.halted {
                outcomes.push(Action::WriteDone { request, result: Err(WriteError::Halted(h.clone())) });
                continue;
            }
            if let Some(rid) = &w.request_id {
                match self.remembered(now_us, rid, &w) {
                    Ok(Some(receipt)) => {
                        self.stats.idempotent_replays += 1;
                        outcomes.push(Action::WriteDone { request, result: Ok(receipt) });
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        outcomes.push(Action::WriteDone { request, result: Err(e) });
                        continue;
                    }
                }
            }
            match self.apply_local(now_us, &w) {
                Ok((receipt, entry)) => {
                    // With signing on, sign_items stores each key's last
                    // state with its proof (one record).
                    if self.signing.is_none() {
                        batch.ops.push(entry_op(&w.namespace, &w.key, &entry));
                    }
                    if let Some(rid) = w.request_id.clone() {
                        self.remember_request(now_us, rid, &w, &receipt, &mut batch);
                    }
                    let value_type = entry.value_type();
                    if self.signing.is_some() {
                        records.push(crate::signing::WriteRecord {
                            dot: receipt.dot,
                            ts: receipt.ts,
                            claim: crate::signing::claim_of(&w.op, &entry, self.id),
                        });
                    }
                    items.push(PushItem {
                        namespace: w.namespace,
                        value_type,
                        dot: receipt.dot,
                        ts: receipt.ts,
                        key: w.key,
                        entry,
                        proof: None,
                    });
                    self.stats.local_writes += 1;
                    outcomes.push(Action::WriteDone { request, result: Ok(receipt) });
                }
                Err(e) => outcomes.push(Action::WriteDone { request, result: Err(e) }),
            }
        }
        if !records.is_empty() {
            self.sign_items(&mut items, &records, &mut batch);
            self.flush_heads(&mut batch);
        }
        if !items.is_empty() {
            // The namespace record is not rewritten here: the new dot is the
            // entry's own clock entry, from which recovery rebuilds the seen set.
            self.persist_hlc(&mut batch);
            self.out.persist(batch);
            self.hold_changes();
        }
        for outcome in outcomes {
            self.out.hold(outcome);
        }
        if self.signing.is_some() {
            // An item whose key holds state from before signing was on has
            // no proof: peers would refuse it (anti-entropy skips it too).
            items.retain(|it| it.proof.is_some());
        }
        if !items.is_empty() {
            let fanout = self.fanout();
            let targets = self.rng.sample_where(&self.live, fanout, |_| true);
            self.send_push(&targets, 0, items, &[]);
        }
    }

    /// The first outcome of a write carrying idempotency key `rid`, when it
    /// is remembered and still inside the window. The retry applies nothing:
    /// its answer is held like any other, behind the first write's batch.
    /// Seal this turn's writes into one signed block and give each pushed
    /// item the proof of its state; keep each key's new proof and store
    /// each key's last state with it.
    fn sign_items(
        &mut self,
        items: &mut [PushItem],
        records: &[crate::signing::WriteRecord],
        batch: &mut PersistBatch,
    ) {
        use crate::signing::{KeyProof, rebuild};
        let named: Vec<(String, Key, crate::signing::WriteRecord)> =
            items.iter().zip(records).map(|(it, r)| (it.namespace.clone(), it.key.clone(), *r)).collect();
        let attestations = self.seal_block(&named, batch);
        let mut turn: BTreeMap<(String, Key), KeyProof> = BTreeMap::new();
        for ((namespace, key, _), a) in named.into_iter().zip(attestations) {
            turn.entry((namespace, key)).or_default().attestations.push(a);
        }
        // The last item of each key holds the key's state after this turn;
        // the last item of each namespace holds its highest own dot.
        let (last_of_key, last_of_ns) = {
            let mut keys: std::collections::HashSet<(&str, &[u8])> = Default::default();
            let mut namespaces: std::collections::HashSet<&str> = Default::default();
            let mut of_key = vec![false; items.len()];
            let mut of_ns = vec![false; items.len()];
            for (i, it) in items.iter().enumerate().rev() {
                of_key[i] = keys.insert((it.namespace.as_str(), it.key.as_slice()));
                of_ns[i] = namespaces.insert(it.namespace.as_str());
            }
            (of_key, of_ns)
        };
        let empty = KeyProof::default();
        for (i, it) in items.iter_mut().enumerate() {
            let Some(ns) = self.namespaces.get_mut(&it.namespace) else { continue };
            let pool = turn.get(&(it.namespace.clone(), it.key.clone())).unwrap_or(&empty);
            if last_of_ns[i]
                && let Some(a) = pool.attestations.last()
                && ns.raise_head(&it.key, a)
                && !self.heads_dirty.contains(&it.namespace)
            {
                self.heads_dirty.insert(it.namespace.clone());
            }
            it.proof = rebuild(&it.entry, [ns.proof(&it.key).unwrap_or(&empty), pool]);
            if it.proof.is_none() {
                self.stats.unprovable_entries += 1;
            }
            if last_of_key[i] {
                match &it.proof {
                    Some(proof) => {
                        batch.ops.push(proven_entry_op(&it.namespace, &it.key, &it.entry, proof));
                        ns.set_proof(it.key.clone(), proof.clone());
                    }
                    // Unprovable (state from before signing was on): stored
                    // with the proof it had, never sent.
                    None => {
                        let kept = ns.proof(&it.key).unwrap_or(&empty);
                        batch.ops.push(proven_entry_op(&it.namespace, &it.key, &it.entry, kept));
                    }
                }
            }
        }
    }

    fn remembered(&self, now_us: u64, rid: &[u8], w: &LocalWrite) -> Result<Option<WriteReceipt>, WriteError> {
        if rid.len() > IDEMPOTENCY_KEY_BYTES_MAX {
            return Err(WriteError::RequestIdTooLarge { len: rid.len(), max: IDEMPOTENCY_KEY_BYTES_MAX });
        }
        let Some(rec) = self.idempotency.get(rid) else { return Ok(None) };
        if now_us.saturating_sub(rec.at_us) >= self.config.idempotency_window_us {
            return Ok(None);
        }
        if rec.namespace != w.namespace || rec.key != w.key {
            return Err(WriteError::RequestIdReused {
                namespace: rec.namespace.clone(),
                key: String::from_utf8_lossy(&rec.key).into_owned(),
            });
        }
        Ok(Some(WriteReceipt { dot: rec.dot, ts: rec.ts, context: rec.context.clone() }))
    }

    /// Remember `rid` for this write, durably in the write's own batch.
    fn remember_request(
        &mut self,
        now_us: u64,
        rid: Vec<u8>,
        w: &LocalWrite,
        receipt: &WriteReceipt,
        batch: &mut PersistBatch,
    ) {
        let record = persist::IdempotencyRecord {
            namespace: w.namespace.clone(),
            key: w.key.clone(),
            dot: receipt.dot,
            ts: receipt.ts,
            context: receipt.context.clone(),
            at_us: now_us,
        };
        batch.ops.push(StoreOp {
            space: persist::IDEMPOTENCY_SPACE.to_string(),
            key: rid.clone(),
            value: Some(persist::encode_idempotency_record(&record)),
        });
        self.idempotency.insert(rid.clone(), record);
        self.idempotency_order.push_back((now_us, rid));
        while self.idempotency.len() > IDEMPOTENCY_KEYS_MAX {
            let Some((_, oldest)) = self.idempotency_order.pop_front() else { break };
            if self.idempotency.remove(&oldest).is_some() {
                batch.ops.push(StoreOp { space: persist::IDEMPOTENCY_SPACE.to_string(), key: oldest, value: None });
            }
        }
    }

    /// Forget keys older than the window (and delete them from the store).
    pub(super) fn expire_idempotency_keys(&mut self, now_us: u64) {
        let window = self.config.idempotency_window_us;
        let mut batch = PersistBatch::default();
        while let Some((at, _)) = self.idempotency_order.front() {
            if now_us.saturating_sub(*at) < window {
                break;
            }
            let Some((at, rid)) = self.idempotency_order.pop_front() else { break };
            // A key re-used after expiry has a newer entry; keep that one.
            if self.idempotency.get(&rid).is_some_and(|r| r.at_us == at) {
                self.idempotency.remove(&rid);
                batch.ops.push(StoreOp { space: persist::IDEMPOTENCY_SPACE.to_string(), key: rid, value: None });
            }
        }
        if !batch.ops.is_empty() {
            self.out.persist(batch);
        }
    }

    /// Restore remembered keys at recovery.
    pub(super) fn restore_idempotency(
        &mut self,
        records: impl IntoIterator<Item = (Vec<u8>, persist::IdempotencyRecord)>,
    ) {
        let mut all: Vec<(Vec<u8>, persist::IdempotencyRecord)> = records.into_iter().collect();
        all.sort_by_key(|(_, r)| r.at_us);
        for (rid, record) in all {
            self.idempotency_order.push_back((record.at_us, rid.clone()));
            self.idempotency.insert(rid, record);
        }
    }

    fn apply_local(&mut self, now_us: u64, w: &LocalWrite) -> Result<(WriteReceipt, Entry), WriteError> {
        if w.key.len() > limits::KEY_BYTES_MAX {
            return Err(WriteError::KeyTooLarge { len: w.key.len(), max: limits::KEY_BYTES_MAX });
        }
        let value_len = match &w.op {
            Op::Put { value, .. } => value.len(),
            Op::Add { member } | Op::Remove { member, .. } => {
                if member.len() > limits::KEY_BYTES_MAX {
                    return Err(WriteError::KeyTooLarge { len: member.len(), max: limits::KEY_BYTES_MAX });
                }
                0
            }
            _ => 0,
        };
        let value_max = self.config.value_bytes_max as usize;
        if value_len > value_max {
            return Err(WriteError::ValueTooLarge { len: value_len, max: value_max });
        }
        let me = self.id;
        let ns =
            self.namespaces.get_mut(&w.namespace).ok_or_else(|| WriteError::NoSuchNamespace(w.namespace.clone()))?;
        let ty = ns.value_type();
        if !w.op.applies_to(ty) {
            return Err(OpError::WrongType { op: w.op.name(), ty: ty.as_str() }.into());
        }
        let mut entry = ns.get(&w.key).cloned().unwrap_or_else(|| Entry::empty(ty));
        // The timestamp must exceed every one the key has seen so a local
        // write always wins LWW against what the client could have read.
        let key_max = entry.timestamp_max();
        if key_max > self.hlc.high_water() {
            self.hlc.update(key_max, now_us)?;
        }
        let ts = self.hlc.now(now_us)?;
        let dot = ns.next_dot(me).ok_or(WriteError::DotsExhausted)?;
        entry.apply(&w.op, dot, ts)?;
        ns.seen_mut().insert(dot);
        let context = entry.clock().clone();
        ns.install(w.key.clone(), entry.clone());
        Ok((WriteReceipt { dot, ts, context }, entry))
    }
}
