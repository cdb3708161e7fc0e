//! The node revocation list (`docs/design/security.md`, "Node
//! revocation"): read from `revocation_list` at start, then checked every
//! [`POLL_INTERVAL`] for a change. A list is used only if the cluster CA
//! signed it and its sequence is not below the current one; then the
//! transport refuses every handshake of a revoked name or certificate and
//! closes their open connections at once.

use chorus_net::{RevocationList, Transport};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// How often the file is checked for a change: with the connection close
/// that follows at once, a revocation holds within about this long of the
/// file reaching a node (the spec promises 5 s).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The list at start: none when the file does not exist yet (nothing was
/// revoked); an error, which stops the start, when it exists but is not a
/// list the cluster CA signed.
pub fn load_at_start(path: &Path, ca_pem: &str) -> anyhow::Result<RevocationList> {
    if !path.exists() {
        tracing::info!(path = %path.display(), "no revocation list yet: nothing is revoked");
        return Ok(RevocationList::default());
    }
    let list = chorus_net::load_revocations(path, ca_pem).map_err(|e| {
        anyhow::anyhow!("revocation_list {}: {e}; fix or remove it (docs/design/security.md)", path.display())
    })?;
    tracing::info!(
        path = %path.display(),
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

/// Watches `path` until shutdown: each change that verifies and does not
/// go back in sequence replaces the transport's list.
pub async fn watch_file(
    path: PathBuf,
    ca_pem: String,
    mut current: RevocationList,
    transport: Transport,
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
        match chorus_net::load_revocations(&path, &ca_pem) {
            Ok(list) if list.sequence < current.sequence => tracing::warn!(
                path = %path.display(),
                sequence = list.sequence,
                current = current.sequence,
                "ignored a revocation list older than the one in use"
            ),
            Ok(list) => {
                tracing::info!(
                    sequence = list.sequence,
                    names = ?list.names,
                    serials = list.serials_hex.len(),
                    "revocation list changed: revoked peers are disconnected"
                );
                transport.set_revocations(list.clone());
                current = list;
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "ignored a revocation list that does not verify")
            }
        }
    }
}
