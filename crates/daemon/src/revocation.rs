//! The node revocation list (`docs/design/security.md`, "Node
//! revocation"): read from `revocation_list` at start, then checked every
//! [`POLL_INTERVAL`] for a change. A list is used only if the cluster CA
//! signed it and its sequence is above the current one (an equal sequence
//! only if it is the same list); then the transport refuses every
//! handshake of a revoked name or certificate and closes their open
//! connections at once. Every list taken is also kept in `data_dir`
//! ([`KEPT_FILE`]), so neither deleting the configured file nor copying an
//! older one back undoes a revocation across a restart.

use chorus_net::{RevocationList, SignedRevocations, Transport};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// How often the file is checked for a change: with the connection close
/// that follows at once, a revocation holds within about this long of the
/// file reaching a node (the spec promises 5 s).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The copy of the last list taken, in `data_dir`.
pub const KEPT_FILE: &str = "revocations.accepted.json";

/// Keeps `signed` as this node's copy; a failure is logged (the list is in
/// use anyway; the copy only guards restarts).
fn keep(data_dir: &Path, signed: &SignedRevocations) {
    if let Err(e) = chorus_net::save_revocations(&data_dir.join(KEPT_FILE), signed) {
        tracing::error!(error = %e, "could not keep a copy of the revocation list in data_dir");
    }
}

/// The list at start: the higher-sequence one of the configured file and
/// this node's kept copy; none when neither exists (nothing was revoked).
/// A configured file that exists but is not a list the cluster CA signed
/// stops the start.
pub fn load_at_start(path: &Path, ca_pem: &str, data_dir: &Path) -> anyhow::Result<RevocationList> {
    let configured = if path.exists() {
        Some(chorus_net::load_signed_revocations(path, ca_pem).map_err(|e| {
            anyhow::anyhow!("revocation_list {}: {e}; fix or remove it (docs/design/security.md)", path.display())
        })?)
    } else {
        None
    };
    let kept_path = data_dir.join(KEPT_FILE);
    let kept = match chorus_net::load_signed_revocations(&kept_path, ca_pem) {
        Ok(kept) => Some(kept),
        Err(_) if !kept_path.exists() => None,
        Err(e) => {
            tracing::error!(path = %kept_path.display(), error = %e, "ignored a damaged kept revocation list");
            None
        }
    };
    let chosen = match (configured, kept) {
        (Some(c), Some(k)) if k.1.sequence > c.1.sequence => {
            tracing::warn!(
                configured = c.1.sequence,
                kept = k.1.sequence,
                "the configured revocation list is older than the one this node took before: keeping the newer"
            );
            Some(k)
        }
        (Some(c), _) => Some(c),
        (None, k) => k,
    };
    let Some((signed, list)) = chosen else {
        tracing::info!(path = %path.display(), "no revocation list yet: nothing is revoked");
        return Ok(RevocationList::default());
    };
    keep(data_dir, &signed);
    tracing::info!(
        sequence = list.sequence,
        names = list.names.len(),
        serials = list.serials_hex.len(),
        "revocation list loaded"
    );
    Ok(list)
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Watches `path` until shutdown: each change that verifies and moves the
/// sequence forward replaces the transport's list and the kept copy.
/// Refuse the writes each revoked name's node signed after its revocation,
/// even when a relay forwards them (`docs/design/signing.md`).
pub fn apply_to_signer(list: &RevocationList, signer: Option<&chorus_core::signing::Ed25519Signing>) {
    let Some(signer) = signer else { return };
    for name in &list.names {
        if let Some(ms) = list.revoked_at_ms(name) {
            signer.revoke_after(chorus_core::NodeId::from_name(name), ms.saturating_mul(1000));
        }
    }
}

pub async fn watch_file(
    path: PathBuf,
    ca_pem: String,
    data_dir: PathBuf,
    mut current: RevocationList,
    transport: Transport,
    signer: Option<std::sync::Arc<chorus_core::signing::Ed25519Signing>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut seen = stamp(&path);
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        let now = stamp(&path);
        if now == seen || now.is_none() {
            continue;
        }
        seen = now;
        match chorus_net::load_signed_revocations(&path, &ca_pem) {
            Ok((_, list)) if list == current => {}
            Ok((_, list)) if list.sequence <= current.sequence => tracing::warn!(
                path = %path.display(),
                sequence = list.sequence,
                current = current.sequence,
                "ignored a revocation list that does not move the sequence forward"
            ),
            Ok((signed, list)) => {
                tracing::info!(
                    sequence = list.sequence,
                    names = ?list.names,
                    serials = list.serials_hex.len(),
                    "revocation list changed: revoked peers are disconnected"
                );
                transport.set_revocations(list.clone());
                apply_to_signer(&list, signer.as_deref());
                keep(&data_dir, &signed);
                current = list;
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "ignored a revocation list that does not verify")
            }
        }
    }
}
