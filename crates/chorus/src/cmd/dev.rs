//! `chorus dev`: a throwaway local cluster on loopback in one command.

use crate::cmd::client::Client;
use anyhow::{Context, Result, bail};
use chorus_net::{ClusterCa, NodeCredentials};
use clap::Args;
use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// How long each node may take to answer `/health` after it is spawned.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a started cluster may take to become ready (see
/// [`DevCluster::wait_ready`]): SWIM convergence takes a few probe periods,
/// the first Raft election a few election timeouts.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between two readiness checks.
const READY_POLL: Duration = Duration::from_millis(50);
/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// Largest cluster `chorus dev` starts.
const DEV_NODES_MAX: u16 = 32;

#[derive(Args)]
pub struct DevArgs {
    /// Nodes in the local cluster.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Directory for certificates, configs, data and logs (default: a fresh
    /// temporary directory, deleted on exit). Reusing a directory keeps the data.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Node i serves its HTTP API on 127.0.0.1:(base-port + i - 1) and QUIC on
    /// 127.0.0.1:(base-port + 100 + i).
    #[arg(long, default_value_t = 7101)]
    base_port: u16,
    /// Start with client tokens on (`auth_enabled`): bootstraps the cluster
    /// and prints `admin token: TOKEN` (kept in DIR/admin-token, so a reused
    /// --dir prints the same one).
    #[arg(long)]
    auth: bool,
}

/// Where a dev cluster puts its nodes.
#[derive(Clone, Debug)]
pub struct DevLayout {
    pub nodes: u16,
    pub dir: PathBuf,
    pub base_port: u16,
    pub ip: Ipv4Addr,
    /// Extra config lines for every node (TOML).
    pub extra_config: String,
}

/// Running agent processes; stopped (SIGTERM, then SIGKILL) on drop.
pub struct DevCluster {
    pub children: Vec<Child>,
    pub urls: Vec<String>,
    /// The admin token, when the cluster runs with auth on.
    pub token: Option<String>,
}

impl DevLayout {
    pub fn api_addr(&self, i: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), self.base_port + i - 1)
    }

    pub fn peer_addr(&self, i: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), self.base_port + 100 + i)
    }

    fn node_dir(&self, i: u16) -> PathBuf {
        self.dir.join(format!("node{i}"))
    }

    /// Write the CA, certificates and configs (reusing existing ones).
    pub fn prepare(&self) -> Result<()> {
        if self.nodes == 0 || self.nodes > DEV_NODES_MAX {
            bail!("--nodes must be in 1..={DEV_NODES_MAX}");
        }
        if u32::from(self.base_port) + 100 + u32::from(self.nodes) > u32::from(u16::MAX) {
            bail!("--base-port {} leaves no room for {} nodes", self.base_port, self.nodes);
        }
        let ca_dir = self.dir.join("ca");
        let ca = if ca_dir.join("ca.key").exists() {
            ClusterCa::load(&ca_dir)?
        } else {
            let ca = ClusterCa::generate("chorus-dev")?;
            ca.save(&ca_dir)?;
            ca
        };
        // The strong namespaces' Raft voters: the first 1, 3, 5 or 7 nodes.
        let voters = [7u16, 5, 3, 1].into_iter().find(|v| *v <= self.nodes).unwrap_or(1);
        let voter_list: Vec<String> = (1..=voters).map(|i| format!("\"node{i}\"")).collect();
        let strong_line = if self.extra_config.contains("strong_voters") {
            String::new()
        } else {
            format!("strong_voters = [{}]\n", voter_list.join(", "))
        };
        for i in 1..=self.nodes {
            let dir = self.node_dir(i);
            let tls = dir.join("tls");
            let name = format!("node{i}");
            // Credentials from before signed writes lack signing.json: issue again.
            if NodeCredentials::load(&tls).map_or(true, |c| c.signing.is_none()) {
                ca.issue_node(&name, &[IpAddr::V4(self.ip)])?.save(&tls)?;
            }
            let config = format!(
                "name = \"{name}\"\ncluster_name = \"chorus-dev\"\ndata_dir = {data:?}\ntls_dir = {tls:?}\n\
                 api_addr = \"{api}\"\npeer_addr = \"{peer}\"\nseeds = [\"{seed}\"]\n{strong_line}{extra}\n",
                data = dir.join("data").display().to_string(),
                tls = tls.display().to_string(),
                api = self.api_addr(i),
                peer = self.peer_addr(i),
                seed = self.peer_addr(1),
                extra = self.extra_config,
            );
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("chorus.toml"), config)?;
        }
        Ok(())
    }

    /// Spawn every node and wait until each answers `/health`.
    pub fn start(&self) -> Result<DevCluster> {
        self.prepare()?;
        let exe = std::env::current_exe().context("locating the chorus binary")?;
        let mut cluster = DevCluster { children: Vec::new(), urls: Vec::new(), token: None };
        for i in 1..=self.nodes {
            let dir = self.node_dir(i);
            cluster.children.push(spawn_agent(&exe, &dir.join("chorus.toml"), &dir.join("agent.log"))?);
            cluster.urls.push(format!("http://{}", self.api_addr(i)));
        }
        for (i, url) in cluster.urls.iter().enumerate() {
            wait_healthy(url, &mut cluster.children[i], &self.node_dir(i as u16 + 1).join("agent.log"))?;
        }
        Ok(cluster)
    }
}

/// Spawn `chorus agent --config config`, logging to `log`. On Linux the
/// agent receives SIGTERM if the spawning thread dies, so no agent outlives
/// a crashed `chorus dev`.
pub fn spawn_agent(exe: &Path, config: &Path, log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(exe);
    cmd.arg("agent").arg("--config").arg(config).stdin(Stdio::null()).stdout(out).stderr(err);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    cmd.spawn().with_context(|| format!("spawning {}", exe.display()))
}

/// Poll `url/health` until it answers, the child exits, or the deadline passes.
pub fn wait_healthy(url: &str, child: &mut Child, log: &Path) -> Result<()> {
    let client = Client::new(url);
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Ok((200, _)) = client.call("GET", "/health", None) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            bail!(
                "node at {url} exited ({status}); log tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if Instant::now() > deadline {
            bail!("node at {url} did not answer /health within {START_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl DevCluster {
    /// Bootstraps client tokens through node 1 and keeps the admin token in
    /// `dir/admin-token` (a cluster bootstraps once: a reused directory
    /// reads the token back).
    pub fn bootstrap_auth(&mut self, dir: &Path) -> Result<String> {
        let file = dir.join("admin-token");
        let client = Client::new(&self.urls[0]);
        let deadline = Instant::now() + READY_DEADLINE;
        let token = loop {
            match client.call_once("POST", "/v1/auth/bootstrap", None) {
                Ok((201, v)) => {
                    let token = v["token"].as_str().unwrap_or_default().to_string();
                    std::fs::write(&file, &token).with_context(|| format!("writing {}", file.display()))?;
                    break token;
                }
                Ok((409, _)) => {
                    let token = std::fs::read_to_string(&file)
                        .with_context(|| format!("the cluster is bootstrapped but {} is missing", file.display()))?;
                    break token.trim().to_string();
                }
                other if Instant::now() >= deadline => bail!("bootstrapping auth failed: {other:?}"),
                _ => std::thread::sleep(READY_POLL),
            }
        };
        self.token = Some(token.clone());
        Ok(token)
    }

    /// Wait until every command of the README works on every node: each
    /// node sees every other one alive and, when the cluster has strong
    /// namespaces, each node names the same Raft leader (so a strong write
    /// through any node finds it). Fails after `deadline` saying what is
    /// still missing.
    pub fn wait_ready(&self, deadline: Duration) -> Result<()> {
        let clients: Vec<Client> = self.urls.iter().map(|u| Client::new(u).with_token(self.token.clone())).collect();
        let end = Instant::now() + deadline;
        loop {
            let Some(missing) = self.not_ready(&clients) else { return Ok(()) };
            if Instant::now() >= end {
                bail!("the dev cluster was not ready within {deadline:?}: {missing}");
            }
            std::thread::sleep(READY_POLL);
        }
    }

    /// What keeps the cluster from being ready, or `None` when it is.
    fn not_ready(&self, clients: &[Client]) -> Option<String> {
        let others = clients.len() - 1;
        let mut leaders = BTreeSet::new();
        for (client, url) in clients.iter().zip(&self.urls) {
            let members = match client.call_once("GET", "/v1/members", None) {
                Ok((200, v)) => v,
                other => return Some(format!("{url}/v1/members answered {other:?}")),
            };
            let alive = members["members"].as_array().map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
            if alive < others {
                return Some(format!("{url} sees {alive} of the {others} other nodes alive"));
            }
            match client.call_once("GET", "/v1/raft", None) {
                Ok((200, v)) => match v["leader"].as_str() {
                    Some(leader) => {
                        leaders.insert(leader.to_string());
                    }
                    None => return Some(format!("{url} knows no Raft leader yet")),
                },
                // 501 `strong_unavailable`: this cluster has no strong namespaces.
                Ok((501, _)) => {}
                other => return Some(format!("{url}/v1/raft answered {other:?}")),
            }
        }
        (leaders.len() > 1).then(|| format!("the nodes name different Raft leaders: {leaders:?}"))
    }
}

/// Ask a child to stop (SIGTERM), kill it after [`STOP_DEADLINE`].
pub fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: plain syscall on our own child's pid.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_DEADLINE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: plain syscall on our own child's pid; stop all first, wait after.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        for child in &mut self.children {
            stop_child(child);
        }
    }
}

pub fn run(args: DevArgs) -> Result<ExitCode> {
    let (dir, _temp) = match args.dir {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new().prefix("chorus-dev-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .context("installing the Ctrl-C handler")?;
    let layout = DevLayout {
        nodes: args.nodes,
        dir: dir.clone(),
        base_port: args.base_port,
        ip: Ipv4Addr::LOCALHOST,
        extra_config: if args.auth { "auth_enabled = true".to_string() } else { String::new() },
    };
    let mut cluster = layout.start()?;
    println!("chorus dev: {} nodes, data and logs in {}", args.nodes, dir.display());
    for (i, url) in cluster.urls.iter().enumerate() {
        println!("node{}: {url}", i + 1);
    }
    if args.auth {
        let token = cluster.bootstrap_auth(&dir)?;
        println!("admin token: {token}");
        println!("every client command needs it: export CHORUS_TOKEN={token}");
    }
    cluster.wait_ready(READY_DEADLINE)?;
    println!(
        "try: chorus put hello world && chorus get hello --node {}",
        cluster.urls.last().map_or("", String::as_str)
    );
    println!("press Ctrl-C to stop");
    // The last line, printed only once every README command works: scripts
    // and tests wait for it.
    println!("ready");
    let _ = stop_rx.recv();
    // Whoever read our stdout may be gone by now; that must not stop the cleanup.
    let _ = writeln!(std::io::stdout(), "stopping...");
    drop(cluster);
    Ok(ExitCode::SUCCESS)
}
