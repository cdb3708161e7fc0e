//! The driver half of the world: executing a node's actions the way the
//! driver contract says (`docs/design/replication.md`, "The driver
//! contract"), the simulated disk (delayed, failing, torn at a crash), and
//! the checkers that watch what a node exposes at that edge
//! (`ack_before_durable`, `sent_before_durable`, `dot_reused`).

use super::*;

impl World {
    /// Execute the actions a node queued, in order, and re-arm its timer.
    /// The driver contract (`chorus_core::node`): a Persist goes to the
    /// disk and completes later; everything else runs as it comes out.
    pub(super) fn after_input(&mut self, i: usize) {
        loop {
            let Some(node) = self.nodes[i].node.as_mut() else { return };
            let Some(action) = node.poll_action() else { break };
            let in_flight = node.persists_in_flight();
            match action {
                Action::Persist { id, batch } => {
                    self.persists_in_flight_max = self.persists_in_flight_max.max(in_flight);
                    let delay = self.rng.below(self.cfg.disk_delay_max_us + 1);
                    let at = (self.now_us + delay).max(self.nodes[i].last_completion_us);
                    self.nodes[i].last_completion_us = at;
                    self.nodes[i].in_flight.push_back((id, batch));
                    let incarnation = self.nodes[i].incarnation;
                    self.schedule(at, Event::Persisted { node: i as u32, incarnation });
                }
                Action::Send { to, message } => {
                    self.check_send(i, &message);
                    self.send(i, to, &message);
                }
                Action::WriteDone { request, result } => self.write_done(i, request, result),
                Action::NamespaceDone { .. } | Action::ReadReady { .. } | Action::Changes(_) => {}
                Action::PeerMisbehaved { peer, reason } => {
                    // Every simulated node is honest: a report is a false alarm.
                    let detail = format!("node {i} reported honest node {peer} for {}", reason.as_str());
                    self.violation(check::FALSE_ALARM, detail);
                }
                Action::Halted(h) => {
                    // A real driver stops the process; a supervisor restarts it.
                    let _ = h;
                    self.crash(i);
                    return;
                }
            }
        }
        let timeout = self.nodes[i].node.as_ref().and_then(|n| n.poll_timeout());
        if let Some(t) = timeout {
            // Node timeouts are in its own physical time; convert back.
            let at = (t as i64 - EPOCH_US as i64 - self.nodes[i].skew_us).max(self.now_us as i64) as u64;
            if self.nodes[i].timeout_at.is_none_or(|cur| at < cur || cur < self.now_us) {
                self.nodes[i].timeout_at = Some(at);
                self.schedule(at, Event::Timeout { node: i as u32 });
            }
        }
    }

    /// The oldest in-flight batch of node `i` completes: durable, or (an
    /// injected disk error) failed.
    pub(super) fn persisted(&mut self, i: usize, incarnation: u64) {
        if self.nodes[i].incarnation != incarnation || self.nodes[i].node.is_none() {
            return;
        }
        let Some((id, batch)) = self.nodes[i].in_flight.pop_front() else { return };
        if !self.healing && self.rng.chance(self.cfg.disk_errors) {
            self.disk_errors += 1;
            // The batch did not reach the disk, and nothing after it will:
            // the node halts (its outcomes come out) and is restarted.
            self.nodes[i].in_flight.clear();
            if let Some(node) = self.nodes[i].node.as_mut() {
                node.handle_persist_failed(id, "injected disk error");
            }
        } else {
            self.write_to_disk(i, batch);
            if let Some(node) = self.nodes[i].node.as_mut() {
                node.handle_persisted(id);
            }
        }
        self.after_input(i);
    }

    /// Apply a batch to node `i`'s durable image.
    pub(super) fn write_to_disk(&mut self, i: usize, batch: PersistBatch) {
        let me = node_id(i);
        for op in batch.ops {
            match op.value {
                Some(v) => {
                    // What our own dots the durable state reflects, decoded
                    // from the bytes (not taken from the node's word).
                    let own = if let Some(ns) = op.space.strip_prefix("e.") {
                        persist::decode_entry(&v).ok().map(|r| (ns.to_string(), r.entry.clock().get(me)))
                    } else if op.space == persist::NAMESPACES_SPACE {
                        persist::decode_namespace(&v).ok().map(|r| {
                            (String::from_utf8_lossy(&op.key).into_owned(), r.seen.to_seen().contiguous().get(me))
                        })
                    } else {
                        None
                    };
                    if let Some((ns, c)) = own {
                        let slot = self.nodes[i].durable_own.entry(ns).or_default();
                        *slot = (*slot).max(c);
                    }
                    self.nodes[i].disk.entry(op.space).or_default().insert(op.key, v);
                }
                None => {
                    if let Some(ns) = op.space.strip_prefix("e.") {
                        self.nodes[i].collected.insert((ns.to_string(), op.key.clone()));
                    }
                    let disk = &mut self.nodes[i].disk;
                    disk.entry(op.space).or_default().remove(&op.key);
                }
            }
        }
    }

    pub(super) fn violation(&mut self, checker: &'static str, detail: String) {
        self.violations.push(format!("{checker}: {detail}"));
    }

    /// `sent_before_durable`: every claim about our own dots in a message
    /// (a pushed write, an entry's clock, a seen set) must already be on our
    /// disk; otherwise a crash lets the restarted node reuse a dot a peer
    /// has seen. Also records pushed own dots for `dot_reused`.
    pub(super) fn check_send(&mut self, i: usize, message: &Message) {
        let me = node_id(i);
        let mut claims: Vec<(&str, u64)> = Vec::new();
        let mut pushed: Vec<(&str, u64, &[u8], Timestamp)> = Vec::new();
        match message {
            Message::Push(p) => {
                for item in &p.items {
                    claims.push((&item.namespace, item.entry.clock().get(me)));
                    if item.dot.node == me {
                        pushed.push((&item.namespace, item.dot.counter, &item.key, item.ts));
                    }
                }
            }
            Message::SyncRequest(r) => {
                for s in &r.summaries {
                    claims.push((&s.namespace, seen_claim(&s.seen, me)));
                }
            }
            Message::SyncReply(r) => deltas_claims(&r.deltas, me, &mut claims),
            Message::SyncPush(p) => deltas_claims(&p.deltas, me, &mut claims),
            _ => {}
        }
        let mut found = Vec::new();
        for (ns, c) in claims {
            let durable = self.nodes[i].durable_own.get(ns).copied().unwrap_or(0);
            if c > durable {
                found.push(format!(
                    "node {i} sent a message claiming its own dot {c} of {ns} while only {durable} was durable"
                ));
            }
        }
        let pushed: Vec<(String, u64, Vec<u8>, Timestamp)> =
            pushed.into_iter().map(|(n, c, k, t)| (n.to_string(), c, k.to_vec(), t)).collect();
        for d in found {
            self.violation(check::SENT_BEFORE_DURABLE, d);
        }
        for (ns, counter, key, ts) in pushed {
            self.expose(i, ns, counter, key, ts);
        }
    }

    /// `dot_reused`: an own dot exposed (pushed or acknowledged) must always
    /// name the same write.
    pub(super) fn expose(&mut self, i: usize, ns: String, counter: u64, key: Vec<u8>, ts: Timestamp) {
        match self.exposed.get(&(i, ns.clone(), counter)) {
            Some((k, t)) if *k != key || *t != ts => {
                let detail = format!(
                    "node {i} exposed dot {counter} of {ns} for key {:?} at {ts}, but it already named key {:?} at {t}",
                    String::from_utf8_lossy(&key),
                    String::from_utf8_lossy(k)
                );
                self.violation(check::DOT_REUSED, detail);
            }
            Some(_) => {}
            None => {
                self.exposed.insert((i, ns, counter), (key, ts));
            }
        }
    }

    /// A write's outcome reached its client.
    pub(super) fn write_done(
        &mut self,
        i: usize,
        request: RequestId,
        result: Result<chorus_core::WriteReceipt, WriteError>,
    ) {
        let Some(w) = self.pending_writes.remove(&request.0) else { return };
        debug_assert_eq!(w.node, i);
        let receipt = match result {
            Ok(r) => r,
            // Refused by a halted node: nothing changed.
            Err(WriteError::Halted(_)) => return,
            // The batch failed: the outcome is unknown.
            Err(WriteError::PersistFailed(_)) => {
                self.maybe.push(MaybeWrite {
                    namespace: w.namespace.to_string(),
                    key: w.key,
                    kind: w.kind,
                    at_us: w.at_us,
                });
                return;
            }
            Err(e) => {
                self.violation(check::VALID_WRITE_REFUSED, format!("node {i}: a valid write was refused: {e}"));
                return;
            }
        };
        // `ack_before_durable`: the acknowledged write is on this node's disk.
        let space = persist::entries_space(w.namespace);
        let on_disk = self.nodes[i]
            .disk
            .get(&space)
            .and_then(|s| s.get(&w.key))
            .and_then(|v| persist::decode_entry(v).ok())
            .is_some_and(|r| r.entry.clock().contains(receipt.dot));
        let collected = self.nodes[i].collected.contains(&(w.namespace.to_string(), w.key.clone()));
        if !on_disk && !collected {
            self.violation(
                check::ACK_BEFORE_DURABLE,
                format!(
                    "node {i} acknowledged {:?} of {}/{} (dot {}) before it was durable",
                    w.kind,
                    w.namespace,
                    String::from_utf8_lossy(&w.key),
                    receipt.dot
                ),
            );
        }
        if let Some(last) = self.nodes[i].last_issued
            && receipt.ts <= last
        {
            self.violation(
                check::HLC_MONOTONE,
                format!("node {i}: HLC went backwards: issued {} after {last}", receipt.ts),
            );
        }
        self.nodes[i].last_issued = Some(receipt.ts);
        self.expose(i, w.namespace.to_string(), receipt.dot.counter, w.key.clone(), receipt.ts);
        if w.probe {
            self.probe_dots.insert((w.namespace.to_string(), receipt.dot));
            self.propagation.insert(
                (w.namespace.to_string(), receipt.dot),
                Propagation { at_us: w.at_us, reached_by_push: 0, round_max: 0 },
            );
        }
        self.acked.push(AckedWrite {
            node: i,
            namespace: w.namespace.to_string(),
            namespace_type: w.namespace_type,
            key: w.key,
            kind: w.kind,
            dot: receipt.dot,
            ts: receipt.ts,
            at_us: w.at_us,
        });
    }
}

/// What a seen set claims about `me`'s own dots: the greatest counter.
fn seen_claim(seen: &wire::WireSeen, me: NodeId) -> u64 {
    let prefix = seen.contiguous.iter().filter(|(n, _)| *n == me).map(|(_, c)| *c).max().unwrap_or(0);
    let exceptions = seen.exceptions.iter().filter(|(n, _)| *n == me).flat_map(|(_, l)| l.iter().copied()).max();
    prefix.max(exceptions.unwrap_or(0))
}

fn deltas_claims<'a>(deltas: &'a [wire::NamespaceDelta], me: NodeId, claims: &mut Vec<(&'a str, u64)>) {
    for d in deltas {
        claims.push((&d.namespace, seen_claim(&d.seen, me)));
        for (_, e) in &d.entries {
            claims.push((&d.namespace, e.clock().get(me)));
        }
    }
}
