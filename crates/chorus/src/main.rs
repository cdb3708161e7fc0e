//! The `chorus` command: runs the daemon and talks to it, and runs the
//! simulator. Only this crate (and the daemon's API layer) knows JSON.

mod cmd;

/// mimalloc instead of the system allocator: the daemon allocates small,
/// short-lived buffers per request and per message, and glibc malloc took
/// ~16% of a node's CPU under `chorus bench write` (perf); see
/// docs/design/daemon.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use cmd::client::Target;

#[derive(Parser)]
#[command(name = "chorus", version, about = "Keyed state kept in sync across many nodes.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: `chorus agent --config chorus.toml`.
    Agent(cmd::agent::AgentArgs),
    /// Start a local cluster on loopback (default 3 nodes) and print its URLs.
    Dev(cmd::dev::DevArgs),
    /// Cluster CA and node certificates.
    Ca(cmd::ca::CaArgs),
    /// Write a value (lww or mv namespaces).
    Put {
        key: String,
        value: String,
        /// Print the whole JSON answer (with its `session` token).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Print a key's value alone (one line per sibling or member); exit 1 if absent.
    Get {
        key: String,
        /// Print the whole JSON answer (with its `session` token).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a key.
    Del {
        key: String,
        /// Print the whole JSON answer (with its `session` token).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// List keys (and values) starting with PREFIX.
    Scan {
        #[arg(default_value = "")]
        prefix: String,
        /// Keys per request.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print the whole JSON answer (with its `session` token).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Add N (default 1, may be negative) to a counter.
    Incr {
        key: String,
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        amount: i64,
        /// Print the whole JSON answer (with its `session` token).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Add a member to a set.
    Sadd {
        key: String,
        member: String,
        /// Print the whole JSON answer (with its `session` token).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a member from a set.
    Srem {
        key: String,
        member: String,
        /// Print the whole JSON answer (with its `session` token).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// List the members of the cluster as a node sees them.
    Members {
        #[command(flatten)]
        target: Target,
    },
    /// A node's status: health, members, clock (per-peer offsets), namespaces.
    Status {
        /// Print the raw `/v1/status` JSON instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Create or list namespaces.
    Ns(cmd::client::NsArgs),
    /// Strong namespaces: set KEY to VALUE if it holds --expected (or is
    /// absent when --expected is not given); exit 1 when it did not.
    Cas {
        key: String,
        value: String,
        /// The value KEY must hold now.
        #[arg(long)]
        expected: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Strong namespaces: run a transaction (JSON, from FILE or stdin; see
    /// docs/design/http-api.md); exit 1 when its compares failed.
    Txn {
        file: Option<std::path::PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Strong namespaces: grant, keep alive, revoke or show leases.
    Lease(cmd::strong::LeaseArgs),
    /// Strong namespaces: acquire a lock under a lease; prints the fencing
    /// token; exit 1 when the lock is busy.
    Lock {
        name: String,
        #[arg(long)]
        lease: u64,
        /// Share the lock with other shared holders.
        #[arg(long)]
        shared: bool,
        /// Wait up to this many milliseconds for the lock.
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Strong namespaces: release a lock held under a lease.
    Unlock {
        name: String,
        #[arg(long)]
        lease: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Print change events of keys under PREFIX as JSON lines (every
    /// namespace type and mode). Resumes by itself after a disconnect or a
    /// `lagged` event; exits 3 after a `reset` (re-read, then `--resume`).
    Watch {
        #[arg(default_value = "")]
        prefix: String,
        /// Continue after the event that carried this `token` (from this or
        /// any other node).
        #[arg(long, conflicts_with = "from_revision")]
        resume: Option<String>,
        /// Strong namespaces: first revision to print, from the node's
        /// revision-ordered history (default: only new events).
        #[arg(long)]
        from_revision: Option<u64>,
        /// Stop after this many milliseconds (0: never).
        #[arg(long, default_value_t = 0)]
        timeout_ms: u64,
        #[command(flatten)]
        target: Target,
    },
    /// The Raft group of strong namespaces: status, add-voter, remove-voter.
    Raft(cmd::strong::RaftArgs),
    /// Client tokens: bootstrap, create, list, revoke.
    Token(cmd::token::TokenArgs),
    /// Benchmarks against a local cluster.
    Bench(cmd::bench::BenchArgs),
    /// Simulate a cluster with the real protocol code, in virtual time.
    Sim(cmd::sim::SimArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent(args) => cmd::agent::run(args),
        Command::Dev(args) => cmd::dev::run(args),
        Command::Ca(args) => cmd::ca::run(args),
        Command::Put { key, value, json, target } => cmd::client::put(&target, &key, &value, json),
        Command::Get { key, json, target } => cmd::client::get(&target, &key, json),
        Command::Del { key, json, target } => cmd::client::del(&target, &key, json),
        Command::Scan { prefix, limit, json, target } => cmd::client::scan(&target, &prefix, limit, json),
        Command::Incr { key, amount, json, target } => cmd::client::incr(&target, &key, amount, json),
        Command::Sadd { key, member, json, target } => cmd::client::set_op(&target, &key, "add", &member, json),
        Command::Srem { key, member, json, target } => cmd::client::set_op(&target, &key, "remove", &member, json),
        Command::Members { target } => cmd::client::members(&target),
        Command::Status { json, target } => cmd::client::status(&target, json),
        Command::Ns(args) => cmd::client::ns(args),
        Command::Cas { key, value, expected, target } => cmd::strong::cas(&target, &key, &value, expected.as_deref()),
        Command::Txn { file, target } => cmd::strong::txn(&target, file.as_deref()),
        Command::Lease(args) => cmd::strong::lease(args),
        Command::Lock { name, lease, shared, wait_ms, target } => {
            cmd::strong::lock(&target, &name, lease, shared, wait_ms)
        }
        Command::Unlock { name, lease, target } => cmd::strong::unlock(&target, &name, lease),
        Command::Watch { prefix, resume: _, from_revision: Some(r), timeout_ms, target } => {
            cmd::strong::watch(&target, &prefix, Some(r), timeout_ms)
        }
        Command::Watch { prefix, resume, from_revision: None, timeout_ms, target } => {
            cmd::watch::run(&target, &prefix, resume, timeout_ms)
        }
        Command::Raft(args) => cmd::strong::raft(args),
        Command::Token(args) => cmd::token::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Sim(args) => cmd::sim::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
