//! Client commands of strong namespaces (`docs/design/http-api.md`,
//! "Strong namespaces"): cas, txn, leases, locks, watch, and Raft voters.

use crate::cmd::client::{Client, RefusalRetry, Target, describe_error, encode_key, request_headers};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::io::{BufRead, Read};
use std::process::ExitCode;

/// Most bytes of a transaction file.
const TXN_FILE_BYTES_MAX: u64 = 16 << 20;

#[derive(Args)]
pub struct LeaseArgs {
    #[command(subcommand)]
    command: LeaseCommand,
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand)]
enum LeaseCommand {
    /// Grant a lease; prints its id.
    Grant {
        /// Time to live in milliseconds.
        ttl_ms: u64,
    },
    /// Push a lease's deadline one TTL ahead.
    Keepalive { id: u64 },
    /// Revoke a lease: its keys are deleted and its locks released.
    Revoke { id: u64 },
    /// Show a lease's TTL, deadline, keys and locks.
    Get { id: u64 },
}

#[derive(Args)]
pub struct RaftArgs {
    #[command(subcommand)]
    command: RaftCommand,
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand)]
enum RaftCommand {
    /// The Raft group as this node sees it: leader, term, voters, learners.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a live member a voter (it catches up as a learner first).
    AddVoter { name: String },
    /// Remove a voter.
    RemoveVoter { name: String },
}

fn ns_path(t: &Target, kind: &str, key: &str) -> String {
    format!("/v1/ns/{}/{kind}/{}", encode_key(&t.ns), encode_key(key))
}

/// `chorus cas KEY VALUE [--expected OLD]`: exit 0 and `OK` when swapped,
/// exit 1 with the current value on stderr when not.
pub fn cas(t: &Target, key: &str, value: &str, expected: Option<&str>) -> Result<ExitCode> {
    let mut body = json!({ "value": value });
    if let Some(e) = expected {
        body["expected"] = json!(e);
    }
    let v = Client::of(t).ok("POST", &ns_path(t, "cas", key), Some(&body))?;
    if v["succeeded"].as_bool() == Some(true) {
        println!("OK revision {}", v["revision"]);
        return Ok(ExitCode::SUCCESS);
    }
    match v["current"].get("value") {
        Some(Value::String(current)) => eprintln!("cas failed: {key:?} holds {current:?}"),
        _ if v["current"].is_null() => eprintln!("cas failed: {key:?} is absent"),
        _ => eprintln!("cas failed: {key:?} holds a non-UTF-8 value"),
    }
    Ok(ExitCode::from(1))
}

/// `chorus txn [FILE]`: send a transaction (the JSON body of
/// `POST /v1/ns/{ns}/txn`, from FILE or stdin); print the answer; exit 1
/// when the compares failed (the `failure` branch ran).
pub fn txn(t: &Target, file: Option<&std::path::Path>) -> Result<ExitCode> {
    let mut text = String::new();
    match file {
        Some(path) => {
            std::fs::File::open(path)
                .with_context(|| format!("opening {}", path.display()))?
                .take(TXN_FILE_BYTES_MAX)
                .read_to_string(&mut text)?;
        }
        None => {
            std::io::stdin().take(TXN_FILE_BYTES_MAX).read_to_string(&mut text)?;
        }
    }
    let body: Value = serde_json::from_str(&text).context("the transaction is not valid JSON")?;
    let path = format!("/v1/ns/{}/txn", encode_key(&t.ns));
    let v = Client::of(t).ok("POST", &path, Some(&body))?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(if v["succeeded"].as_bool() == Some(true) { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn lease(args: LeaseArgs) -> Result<ExitCode> {
    let client = Client::of(&args.target);
    match args.command {
        LeaseCommand::Grant { ttl_ms } => {
            let v = client.ok("POST", "/v1/leases", Some(&json!({ "ttl_ms": ttl_ms })))?;
            println!("{}", v["lease"]);
        }
        LeaseCommand::Keepalive { id } => {
            let v = client.ok("POST", &format!("/v1/leases/{id}/keepalive"), Some(&json!({})))?;
            println!("OK deadline_ms {}", v["deadline_ms"]);
        }
        LeaseCommand::Revoke { id } => {
            let v = client.ok("DELETE", &format!("/v1/leases/{id}"), None)?;
            println!("OK keys_deleted {}", v["keys_deleted"]);
        }
        LeaseCommand::Get { id } => {
            let v = client.ok("GET", &format!("/v1/leases/{id}"), None)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `chorus lock NAME --lease ID`: prints the fencing token; exit 1 when busy.
pub fn lock(t: &Target, name: &str, lease: u64, shared: bool, wait_ms: u64) -> Result<ExitCode> {
    let mode = if shared { "shared" } else { "exclusive" };
    let body = json!({ "lease": lease, "mode": mode, "wait_ms": wait_ms });
    let (status, v) = Client::of(t).call("POST", &ns_path(t, "lock", name), Some(&body))?;
    if status == 409 && v["error"].as_str() == Some("lock_busy") {
        eprintln!("lock {name:?} is busy: held by lease(s) {}", v["holders"]);
        return Ok(ExitCode::from(1));
    }
    if !(200..300).contains(&status) {
        bail!("{}", describe_error(status, &v));
    }
    println!("{}", v["fencing_token"]);
    Ok(ExitCode::SUCCESS)
}

pub fn unlock(t: &Target, name: &str, lease: u64) -> Result<ExitCode> {
    let v = Client::of(t).ok("DELETE", &format!("{}?lease={lease}", ns_path(t, "lock", name)), None)?;
    println!("{}", if v["was_held"].as_bool() == Some(true) { "OK" } else { "OK (was not held)" });
    Ok(ExitCode::SUCCESS)
}

/// `chorus watch [PREFIX]`: print events as JSON lines until the stream
/// ends (`--timeout-ms`) or the command is interrupted.
pub fn watch(t: &Target, prefix: &str, from_revision: Option<u64>, timeout_ms: u64) -> Result<ExitCode> {
    let mut url = format!(
        "{}/v1/ns/{}/watch?prefix={}&timeout_ms={timeout_ms}",
        t.node.trim_end_matches('/'),
        encode_key(&t.ns),
        encode_key(prefix).replace('/', "%2F")
    );
    if let Some(r) = from_revision {
        url.push_str(&format!("&from_revision={r}"));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    // The stream is not read through `Client::call`, so its refusals are
    // retried here, within the same bound.
    let mut retry = RefusalRetry::new();
    let mut response = loop {
        let mut request = agent.get(&url);
        for (name, value) in request_headers(t.session.as_deref(), t.token.as_deref()) {
            request = request.header(name, value);
        }
        let mut response = request.call().with_context(|| format!("GET {url}"))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            break response;
        }
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !retry.again(status, &v) {
            bail!("{}", describe_error(status, &v));
        }
    };
    let reader = std::io::BufReader::new(response.body_mut().as_reader());
    for line in reader.lines() {
        let line = line.context("reading the watch stream")?;
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn raft(args: RaftArgs) -> Result<ExitCode> {
    let client = Client::of(&args.target);
    let v = match args.command {
        RaftCommand::Status { json } => {
            let v = client.ok("GET", "/v1/raft", None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            v
        }
        RaftCommand::AddVoter { name } => client.ok("POST", "/v1/raft/voters", Some(&json!({ "name": name })))?,
        RaftCommand::RemoveVoter { name } => {
            client.ok("DELETE", &format!("/v1/raft/voters/{}", encode_key(&name)), None)?
        }
    };
    let s = |x: &Value| x.as_str().unwrap_or("-").to_string();
    println!("node {} is {} (term {}), leader {}", s(&v["name"]), s(&v["state"]), v["term"], s(&v["leader"]));
    for (role, list) in [("voter", &v["voters"]), ("learner", &v["learners"])] {
        for p in list.as_array().into_iter().flatten() {
            let reach = if p["reachable"].as_bool() == Some(true) { "reachable" } else { "unreachable" };
            println!("  {role:<8} {:<24} {:<22} {reach}", s(&p["name"]), s(&p["addr"]));
        }
    }
    Ok(ExitCode::SUCCESS)
}
