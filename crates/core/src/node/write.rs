//! Local writes: dots, timestamps and the first push.

use super::*;

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
        self.namespaces.insert(name.to_string(), Namespace::new(name.to_string(), value_type));
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
        for (request, w) in writes {
            if let Some(h) = &self.out.halted {
                outcomes.push(Action::WriteDone { request, result: Err(WriteError::Halted(h.clone())) });
                continue;
            }
            match self.apply_local(now_us, &w) {
                Ok((receipt, entry)) => {
                    batch.ops.push(entry_op(&w.namespace, &w.key, &entry));
                    let value_type = entry.value_type();
                    items.push(PushItem {
                        namespace: w.namespace,
                        value_type,
                        dot: receipt.dot,
                        ts: receipt.ts,
                        key: w.key,
                        entry,
                    });
                    self.stats.local_writes += 1;
                    outcomes.push(Action::WriteDone { request, result: Ok(receipt) });
                }
                Err(e) => outcomes.push(Action::WriteDone { request, result: Err(e) }),
            }
        }
        if !items.is_empty() {
            // The namespace record is not rewritten here: the new dot is the
            // entry's own clock entry, from which recovery rebuilds the seen set.
            self.persist_hlc(&mut batch);
            self.out.persist(batch);
        }
        for outcome in outcomes {
            self.out.hold(outcome);
        }
        if !items.is_empty() {
            let fanout = self.fanout();
            let targets = self.rng.sample_where(&self.live, fanout, |_| true);
            self.send_push(&targets, 0, items);
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
