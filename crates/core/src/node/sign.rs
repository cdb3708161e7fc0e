//! Signing our writes and checking everyone else's
//! (`docs/design/signing.md`).

use super::*;
use crate::signing::{self, Attestation, BlockHeader, Head, KeyProof, ProofError, SignedBlock, WriteRecord};
use std::sync::Arc;

/// This node's signing state: its key, the blocks it verified and the head
/// of its own block chain.
pub(super) struct SigningState {
    pub(super) signer: Arc<dyn signing::Signing>,
    pub(super) verified: signing::VerifiedBlocks,
    pub(super) seq: u64,
    pub(super) prev: [u8; 32],
}

impl Node {
    /// Sign every write from now on and refuse entries, push items and
    /// seen-set claims that their origins did not sign. Call before the
    /// node handles any input (after [`Node::recover`]); the whole cluster
    /// must run with signing on or off alike.
    pub fn enable_signing(&mut self, signer: Arc<dyn signing::Signing>) {
        let (seq, prev) = self.block_head;
        self.signing = Some(SigningState { signer, verified: signing::VerifiedBlocks::default(), seq, prev });
    }

    pub fn signing_enabled(&self) -> bool {
        self.signing.is_some()
    }

    /// Put this turn's records into one block, sign its header and return
    /// each record's attestation, in order. The new chain head goes into
    /// `batch`.
    pub(super) fn seal_block(
        &mut self,
        records: &[(String, Key, WriteRecord)],
        batch: &mut PersistBatch,
    ) -> Vec<Attestation> {
        let Some(s) = self.signing.as_mut() else { return Vec::new() };
        let leaves: Vec<[u8; 32]> = records.iter().map(|(ns, k, r)| signing::leaf_hash(ns, k, r)).collect();
        let (root, paths) = signing::merkle_tree(&leaves);
        let header = BlockHeader { origin: self.id, seq: s.seq + 1, prev: s.prev, root, leaves: leaves.len() as u32 };
        let hash = header.hash();
        let block = Arc::new(SignedBlock { header, signature: s.signer.sign(&hash) });
        s.seq += 1;
        s.prev = hash;
        self.block_head = (s.seq, hash);
        self.stats.blocks_signed += 1;
        batch.ops.push(StoreOp {
            space: persist::META_SPACE.to_string(),
            key: persist::BLOCK_HEAD_KEY.to_vec(),
            value: Some(persist::encode_block_head(s.seq, &hash)),
        });
        records
            .iter()
            .zip(paths)
            .enumerate()
            .map(|(i, ((_, _, record), path))| Attestation {
                record: *record,
                block: block.clone(),
                index: i as u32,
                path,
            })
            .collect()
    }

    /// Check an incoming entry's proof. `Ok` when signing is off.
    pub(super) fn check_proof(
        &mut self,
        namespace: &str,
        key: &[u8],
        entry: &Entry,
        proof: Option<&KeyProof>,
    ) -> Result<(), ProofError> {
        let Some(s) = self.signing.as_mut() else { return Ok(()) };
        let Some(proof) = proof else {
            return Err(ProofError::WrongDots { got: 0, want: signing::needed_dots(entry).len() });
        };
        let result = signing::check_entry(namespace, key, entry, proof, s.signer.as_ref(), &mut s.verified);
        self.stats.signatures_checked = s.verified.signatures_checked;
        result
    }

    /// A proof was refused: count it and, when the sender must have made
    /// it up, report the sender (at most once per message).
    pub(super) fn proof_refused(&mut self, from: NodeId, error: &ProofError) {
        if !error.is_misbehaviour() {
            match error {
                ProofError::Revoked(_) => self.stats.rejected_revoked += 1,
                _ => self.stats.rejected_unknown_origin += 1,
            }
            return;
        }
        self.stats.rejected_signature += 1;
        if !self.misbehavior_reported {
            self.misbehavior_reported = true;
            self.out.hold(Action::PeerMisbehaved { peer: from, reason: Misbehavior::BadSignature });
        }
    }

    /// After a checked state proven by `incoming` was joined into `key`:
    /// raise the heads its attestations show and, when the key `changed`,
    /// keep the proof of the joined state; queue the heads and the entry
    /// with its proof (one record) for the store.
    pub(super) fn keep_proof(
        &mut self,
        namespace: &str,
        key: &[u8],
        incoming: Option<&KeyProof>,
        changed: bool,
        batch: &mut PersistBatch,
    ) {
        if self.signing.is_none() {
            return;
        }
        let Some(ns) = self.namespaces.get_mut(namespace) else { return };
        let mut heads_changed = false;
        for p in incoming.iter() {
            for a in &p.attestations {
                heads_changed |= ns.raise_head(key, a);
            }
        }
        if changed {
            // Taken out rather than cloned: the rebuilt proof replaces it.
            let stored = ns.take_proof(key).unwrap_or_default();
            if let Some(entry) = ns.get(key) {
                let proof = match signing::rebuild(entry, std::iter::once(&stored).chain(incoming)) {
                    Some(proof) => proof,
                    // Cannot happen for checked inputs (a join keeps only parts
                    // of its two sides); counted rather than trusted. The entry
                    // is stored all the same, unprovable (never sent).
                    None => {
                        self.stats.unprovable_entries += 1;
                        stored
                    }
                };
                batch.ops.push(proven_entry_op(namespace, key, entry, &proof));
                ns.set_proof(key.to_vec(), proof);
            } else {
                // No entry to prove (cannot happen after a join): keep
                // what was stored.
                ns.set_proof(key.to_vec(), stored);
            }
        }
        if heads_changed && !self.heads_dirty.contains(namespace) {
            self.heads_dirty.insert(namespace.to_string());
        }
    }

    /// Queue the heads that changed since the last batch (once per
    /// namespace and batch, however many items raised them).
    pub(super) fn flush_heads(&mut self, batch: &mut PersistBatch) {
        for namespace in std::mem::take(&mut self.heads_dirty) {
            if let Some(ns) = self.namespaces.get(&namespace) {
                batch.ops.push(StoreOp {
                    space: persist::META_SPACE.to_string(),
                    key: format!("{}{namespace}", persist::HEADS_PREFIX).into_bytes(),
                    value: Some(persist::encode_heads(ns.heads())),
                });
            }
        }
    }

    /// Check the heads a delta carries and hold `seen`'s claims about each
    /// origin other than us to what a signature of that origin backs.
    /// Returns `false` (and reports the sender) when a claim is unbacked;
    /// `seen` is then clamped.
    pub(super) fn back_seen_claims(
        &mut self,
        from: NodeId,
        namespace: &str,
        seen: &mut SeenSet,
        heads: &[Head],
    ) -> bool {
        let Some(s) = self.signing.as_mut() else { return true };
        let mut refused: Option<ProofError> = None;
        let mut raised = false;
        for h in heads {
            match signing::check_attestation(namespace, &h.key, &h.attestation, s.signer.as_ref(), &mut s.verified) {
                Ok(()) => {
                    if let Some(ns) = self.namespaces.get_mut(namespace) {
                        raised |= ns.raise_head(&h.key, &h.attestation);
                    }
                }
                Err(e) => {
                    refused.get_or_insert(e);
                }
            }
        }
        self.stats.signatures_checked = s.verified.signatures_checked;
        if raised && !self.heads_dirty.contains(namespace) {
            self.heads_dirty.insert(namespace.to_string());
        }
        let mut honest = true;
        if let Some(e) = refused {
            honest &= !e.is_misbehaviour();
            self.proof_refused(from, &e);
        }
        let Some(ns) = self.namespaces.get(namespace) else { return honest };
        let (contiguous, exceptions) = seen.parts();
        let mut tops: BTreeMap<NodeId, u64> = contiguous.iter().collect();
        for (o, list) in exceptions {
            if let Some(&max) = list.iter().next_back() {
                let t = tops.entry(*o).or_insert(0);
                *t = (*t).max(max);
            }
        }
        let mut clamps = Vec::new();
        for (o, top) in tops {
            if o == self.id {
                continue;
            }
            let backed = ns.heads().get(&o).map_or(0, |h| h.attestation.record.dot.counter);
            if top > backed {
                clamps.push((o, backed));
            }
        }
        if !clamps.is_empty() {
            honest = false;
            self.proof_refused(from, &ProofError::Mismatch("seen-set claim no signature backs"));
            for (o, backed) in clamps {
                seen.clamp_origin(o, backed);
            }
        }
        honest
    }
}
