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
    }
    Ok(ExitCode::SUCCESS)
}
