//! `chorus token bootstrap|create|list|revoke`: client tokens
//! (`docs/design/security.md`, "Client tokens"). A command that makes a
//! token prints it alone on its last line.

use crate::cmd::client::{Client, Target, encode_key};
use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::process::ExitCode;

#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// The cluster's first admin token; works once per cluster.
    Bootstrap,
    /// A new token with the given permissions. NS may end with `*` (every
    /// namespace starting so); /PREFIX limits it to keys starting so.
    Create {
        name: String,
        /// Read keys of NS[/PREFIX] (get, scan, snapshot).
        #[arg(long, value_name = "NS[/PREFIX]")]
        read: Vec<String>,
        /// Write keys of NS[/PREFIX] (put, del, incr, sadd, srem, locks).
        #[arg(long, value_name = "NS[/PREFIX]")]
        write: Vec<String>,
        /// Watch keys of NS[/PREFIX].
        #[arg(long, value_name = "NS[/PREFIX]")]
        watch: Vec<String>,
        /// Every permission, and namespaces, Raft membership, tokens, backups.
        #[arg(long)]
        admin: bool,
        /// `/metrics`.
        #[arg(long)]
        metrics: bool,
        /// Lifetime: 30m, 12h, 90d (default 90d).
        #[arg(long)]
        ttl: Option<String>,
        /// Print the whole JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Every token: name, permissions, state, expiry.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token on every node (within 2 s).
    Revoke { name: String },
}

fn targets(v: &Value, field: &str) -> String {
    v[field].as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")).unwrap_or_default()
}

/// One line describing a token.
fn describe(v: &Value) -> String {
    let mut perms = Vec::new();
    if v["admin"] == true {
        perms.push("admin".to_string());
    }
    if v["metrics"] == true {
        perms.push("metrics".to_string());
    }
    for field in ["read", "write", "watch"] {
        let t = targets(v, field);
        if !t.is_empty() {
            perms.push(format!("{field}={t}"));
        }
    }
    let expires = v["expires_ms"].as_u64().map_or("never".to_string(), |ms| format!("{ms}"));
    format!(
        "{}\t{}\t{}\texpires_ms={expires}",
        v["name"].as_str().unwrap_or("?"),
        v["state"].as_str().unwrap_or("?"),
        perms.join(" ")
    )
}

pub fn run(args: TokenArgs) -> Result<ExitCode> {
    let client = Client::of(&args.target);
    match args.command {
        TokenCommand::Bootstrap => {
            let v = client.ok("POST", "/v1/auth/bootstrap", None)?;
            println!("{}", describe(&v));
            println!("{}", v["token"].as_str().unwrap_or_default());
        }
        TokenCommand::Create { name, read, write, watch, admin, metrics, ttl, json } => {
            if let Some(ttl) = &ttl {
                chorus_daemon::auth::parse_ttl(ttl)?;
            }
            let body = json!({
                "name": name, "read": read, "write": write, "watch": watch,
                "admin": admin, "metrics": metrics, "ttl": ttl,
            });
            let v = client.ok("POST", "/v1/tokens", Some(&body))?;
            if json {
                println!("{v}");
            } else {
                println!("{}", describe(&v));
            }
            println!("{}", v["token"].as_str().unwrap_or_default());
        }
        TokenCommand::List { json } => {
            let v = client.ok("GET", "/v1/tokens", None)?;
            if json {
                println!("{v}");
            } else {
                for t in v["tokens"].as_array().into_iter().flatten() {
                    println!("{}", describe(t));
                }
            }
        }
        TokenCommand::Revoke { name } => {
            let v = client.ok("DELETE", &format!("/v1/tokens/{}", encode_key(&name)), None)?;
            println!("{}", describe(&v));
        }
    }
    Ok(ExitCode::SUCCESS)
}
