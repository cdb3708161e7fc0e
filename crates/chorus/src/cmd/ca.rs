//! `chorus ca init|issue`: the cluster CA and node certificates
//! (`docs/design/transport-and-membership.md`, "1. Trust: cluster CA, node
//! certificates, revocation").

use anyhow::{Context, Result};
use chorus_net::ClusterCa;
use clap::{Args, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct CaArgs {
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a cluster CA (ca.pem, ca.key) in DIR.
    Init {
        /// Where the CA files go.
        #[arg(long, default_value = "chorus-ca")]
        dir: PathBuf,
        /// Cluster name written into the CA certificate.
        #[arg(long, default_value = "chorus")]
        cluster: String,
    },
    /// Issue a certificate for NODE, signed by the CA in DIR, into DIR/NODE/
    /// (node.pem, node.key, ca.pem: point a node's `tls_dir` there).
    Issue {
        /// Node name (a DNS-style name such as `node1`).
        node: String,
        /// Directory of the CA.
        #[arg(long, default_value = "chorus-ca")]
        dir: PathBuf,
        /// IP addresses to add to the certificate (repeatable).
        #[arg(long)]
        ip: Vec<IpAddr>,
    },
    /// Revoke NODE (every certificate of that name), or with --serial one
    /// certificate only: adds it to the CA-signed revocation list
    /// DIR/revocations.json (or --out). Copy that file to every node's
    /// `revocation_list` path; nodes reload it within a second and drop
    /// the revoked node's connections.
    Revoke {
        node: String,
        /// Directory of the CA.
        #[arg(long, default_value = "chorus-ca")]
        dir: PathBuf,
        /// Revoke only the certificate with this serial (lowercase hex, as
        /// in the node's logs), so NODE can be re-issued under its name.
        #[arg(long)]
        serial: Option<String>,
        /// Where the signed list goes (default DIR/revocations.json); an
        /// existing list there is extended.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(args: CaArgs) -> Result<ExitCode> {
    match args.command {
        CaCommand::Init { dir, cluster } => {
            if dir.join("ca.key").exists() {
                anyhow::bail!("{} already holds a CA (ca.key); refusing to overwrite it", dir.display());
            }
            let ca = ClusterCa::generate(&cluster)?;
            ca.save(&dir).with_context(|| format!("writing the CA to {}", dir.display()))?;
            println!("created CA for cluster {cluster:?} in {}", dir.display());
        }
        CaCommand::Issue { node, dir, ip } => {
            let ca = ClusterCa::load(&dir).with_context(|| format!("loading the CA from {}", dir.display()))?;
            let creds = ca.issue_node(&node, &ip)?;
            let out = dir.join(&node);
            creds.save(&out).with_context(|| format!("writing credentials to {}", out.display()))?;
            println!("issued certificate for {node:?} in {}", out.display());
        }
        CaCommand::Revoke { node, dir, serial, out } => {
            let ca = ClusterCa::load(&dir).with_context(|| format!("loading the CA from {}", dir.display()))?;
            let out = out.unwrap_or_else(|| dir.join(chorus_net::REVOCATIONS_FILE));
            let mut list = if out.exists() {
                chorus_net::load_revocations(&out, ca.cert_pem())
                    .with_context(|| format!("reading the existing list {}", out.display()))?
            } else {
                chorus_net::RevocationList::default()
            };
            match &serial {
                Some(serial) => {
                    let serial = serial.to_ascii_lowercase();
                    if serial.is_empty() || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
                        anyhow::bail!("--serial must be hex digits, got {serial:?}");
                    }
                    list.serials_hex.insert(serial);
                }
                None => {
                    list.names.insert(node.clone());
                }
            }
            list.issued_ms =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            if serial.is_none() {
                // Its node's writes signed after this are refused everywhere.
                list.revoked_at_ms.entry(node.clone()).or_insert(list.issued_ms);
            }
            // The signing time in ms, unless that is not above the previous
            // sequence: a list started afresh at another --out path still
            // comes after every earlier one (nodes refuse lower sequences).
            list.sequence = list.issued_ms.max(list.sequence + 1);
            let signed = ca.sign_revocations(&list)?;
            chorus_net::save_revocations(&out, &signed)
                .with_context(|| format!("writing the revocation list {}", out.display()))?;
            let what = serial.map_or(format!("node {node:?}"), |s| format!("certificate {s} of {node:?}"));
            println!(
                "revoked {what}: {} (sequence {}, {} names, {} serials); copy it to every node's revocation_list path",
                out.display(),
                list.sequence,
                list.names.len(),
                list.serials_hex.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
