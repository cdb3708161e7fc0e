//! `chorus agent` processes, one per node, used as a black box through the
//! CLI (`chorus ca init|issue`, `chorus agent --config`), a TOML config and
//! the HTTP API. In namespaces mode each runs under `ip netns exec`, which
//! execs the agent in place, so the child's pid is the agent's pid and
//! `kill -9` / `SIGSTOP` hit the agent itself.

use crate::net::Net;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment knob of the daemon that shifts its clock (crates/daemon/src/clock.rs).
pub const CLOCK_OFFSET_ENV: &str = "CHORUS_TEST_CLOCK_OFFSET_MS";
/// Ports in namespaces mode (each node has its own namespace).
pub const NS_PORTS: (u16, u16) = (7101, 7201);
/// Ports in loopback mode (clear of the `chorus` crate's tests, 17101/17201).
pub const LOOPBACK_PORTS: (u16, u16) = (18101, 18201);
/// Per-request deadline of the harness's own HTTP calls (not the workers').
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the cluster could not be prepared or driven.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error("cannot run {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("`chorus {args}` failed: {stderr}")]
    Cli { args: String, stderr: String },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("node {node} exited: {log_tail}")]
    Exited { node: usize, log_tail: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// A small blocking HTTP client. Answers with non-2xx statuses are answers,
/// not errors.
#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
}

/// A request that got no HTTP answer.
#[derive(Debug)]
pub struct NoAnswer {
    /// True when the request certainly never reached the server (the
    /// connection was refused or never opened): the op did not happen.
    pub definite: bool,
    pub reason: String,
}

impl Http {
    pub fn new(timeout: Duration) -> Http {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into();
        Http { agent }
    }

    pub fn req(&self, method: &str, url: &str, body: Option<&str>) -> Result<(u16, Value), NoAnswer> {
        let r = match (method, body) {
            ("PUT", Some(b)) => self.agent.put(url).content_type("application/json").send(b),
            ("POST", Some(b)) => self.agent.post(url).content_type("application/json").send(b),
            ("DELETE", _) => self.agent.delete(url).call(),
            _ => self.agent.get(url).call(),
        };
        let mut r = r.map_err(|e| {
            let definite = match &e {
                ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
                ureq::Error::Timeout(t) => matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve),
                ureq::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
                _ => false,
            };
            NoAnswer { definite, reason: e.to_string() }
        })?;
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().map_err(|e| NoAnswer { definite: false, reason: e.to_string() })?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }
}

/// One node's files and process.
pub struct NodeProc {
    pub name: String,
    pub api: String,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub netns: Option<String>,
    pub clock_offset_ms: i64,
    child: Option<Child>,
    paused: bool,
    starts: u32,
}

/// Every node of one run. Dropping it kills every agent.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    bin: PathBuf,
    pub admin: Http,
}

fn chorus_cli(bin: &Path, args: &[&str]) -> Result<(), ClusterError> {
    let out = Command::new(bin).args(args).output().map_err(io(format!("{}", bin.display())))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ClusterError::Cli { args: args.join(" "), stderr: String::from_utf8_lossy(&out.stderr).into_owned() })
    }
}

impl Cluster {
    /// CA, certificates and configs for every node of `net`, under `dir`.
    pub fn prepare(bin: &Path, net: &Net, dir: &Path, anti_entropy_ms: u64) -> Result<Cluster, ClusterError> {
        let ca = dir.join("ca");
        let ca_s = ca.display().to_string();
        chorus_cli(bin, &["ca", "init", "--dir", &ca_s, "--cluster", "faults"])?;
        let (api_port, peer_port) = if net.is_namespaces() { NS_PORTS } else { LOOPBACK_PORTS };
        let seed = format!("{}:{peer_port}", net.node_ip(0));
        let voters = crate::strong::voter_names(net.nodes());
        let mut nodes = Vec::new();
        for i in 0..net.nodes() {
            let name = format!("node{}", i + 1);
            let ip = net.node_ip(i);
            chorus_cli(bin, &["ca", "issue", &name, "--dir", &ca_s, "--ip", &ip.to_string()])?;
            let node_dir = dir.join(&name);
            std::fs::create_dir_all(&node_dir).map_err(io(node_dir.display().to_string()))?;
            let data_dir = node_dir.join("data");
            let config = format!(
                "name = \"{name}\"\ncluster_name = \"faults\"\ndata_dir = {:?}\ntls_dir = {:?}\n\
                 api_addr = \"{ip}:{api_port}\"\npeer_addr = \"{ip}:{peer_port}\"\nseeds = [\"{seed}\"]\n\
                 anti_entropy_interval_ms = {anti_entropy_ms}\nrequest_timeout_ms = 2000\nlog = \"warn\"\n\
                 strong_voters = {voters:?}\n",
                data_dir.display().to_string(),
                ca.join(&name).display().to_string(),
            );
            let config_path = node_dir.join("chorus.toml");
            std::fs::write(&config_path, config).map_err(io(config_path.display().to_string()))?;
            nodes.push(NodeProc {
                name,
                api: format!("http://{ip}:{api_port}"),
                config: config_path,
                data_dir,
                log: node_dir.join("agent.log"),
                netns: net.node_ns(i).map(str::to_string),
                clock_offset_ms: 0,
                child: None,
                paused: false,
                starts: 0,
            });
        }
        Ok(Cluster { nodes, bin: bin.to_path_buf(), admin: Http::new(ADMIN_TIMEOUT) })
    }

    /// Start node `i` with its clock shifted by `offset_ms`. Must be called
    /// from the thread that lives for the whole run: the agent gets
    /// SIGKILL when the spawning thread dies (PR_SET_PDEATHSIG).
    pub fn start(&mut self, i: usize, offset_ms: i64) -> Result<(), ClusterError> {
        self.start_with_env(i, offset_ms, &[])
    }

    /// [`Cluster::start`] with extra environment variables (test knobs such
    /// as `CHORUS_TEST_ACK_BEFORE_FSYNC`).
    pub fn start_with_env(&mut self, i: usize, offset_ms: i64, env: &[(&str, &str)]) -> Result<(), ClusterError> {
        let bin = self.bin.clone();
        let n = &mut self.nodes[i];
        if n.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .map_err(io(n.log.display().to_string()))?;
        let err = log.try_clone().map_err(io("log file"))?;
        let mut cmd = match &n.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.arg("agent").arg("--config").arg(&n.config).env(CLOCK_OFFSET_ENV, offset_ms.to_string());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(err);
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and touches no parent memory.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        n.child = Some(cmd.spawn().map_err(io("chorus agent"))?);
        n.clock_offset_ms = offset_ms;
        n.paused = false;
        n.starts += 1;
        Ok(())
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    pub fn is_paused(&self, i: usize) -> bool {
        self.nodes[i].paused
    }

    /// SIGKILL node `i` and reap it (no leave, no flush).
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.nodes[i].paused = false;
    }

    fn signal(&mut self, i: usize, sig: libc::c_int) -> bool {
        let Some(c) = &self.nodes[i].child else { return false };
        let Ok(pid) = libc::pid_t::try_from(c.id()) else { return false };
        // SAFETY: plain kill(2) on our own child's pid, which we have not reaped.
        unsafe { libc::kill(pid, sig) == 0 }
    }

    /// SIGSTOP: the process freezes with its sockets open.
    pub fn pause(&mut self, i: usize) -> bool {
        let ok = self.signal(i, libc::SIGSTOP);
        self.nodes[i].paused |= ok;
        ok
    }

    /// SIGCONT.
    pub fn resume(&mut self, i: usize) -> bool {
        let ok = self.signal(i, libc::SIGCONT);
        if ok {
            self.nodes[i].paused = false;
        }
        ok
    }

    /// Delete node `i`'s data directory (the node must be down).
    pub fn wipe_data(&mut self, i: usize) -> Result<(), ClusterError> {
        let d = &self.nodes[i].data_dir;
        match std::fs::remove_dir_all(d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(d.display().to_string())(e)),
            _ => Ok(()),
        }
    }

    fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let start = text.len().saturating_sub(2_000);
        text.get(start..).unwrap_or_default().to_string()
    }

    /// Poll until every running node answers `/health` and sees the other
    /// `n - 1` members alive, or `deadline` passes.
    pub fn wait_all_alive(&mut self, deadline: Duration) -> Result<(), ClusterError> {
        let end = Instant::now() + deadline;
        let n = self.nodes.len();
        let mut pending: Vec<usize> = (0..n).collect();
        while !pending.is_empty() {
            for i in 0..n {
                if let Some(c) = self.nodes[i].child.as_mut()
                    && let Ok(Some(_)) = c.try_wait()
                {
                    self.nodes[i].child = None;
                    return Err(ClusterError::Exited { node: i, log_tail: self.log_tail(i) });
                }
            }
            pending.retain(|&i| {
                let url = format!("{}/v1/members", self.nodes[i].api);
                let alive = self.admin.req("GET", &url, None).ok().and_then(|(s, v)| {
                    (s == 200)
                        .then(|| v["members"].as_array().map(|m| m.iter().filter(|m| m["state"] == "alive").count()))
                });
                alive.flatten() != Some(n - 1)
            });
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= end {
                return Err(ClusterError::Timeout {
                    what: format!("nodes {pending:?} to see all {n} members alive"),
                    after: deadline,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// How many times each node was started (1 = never restarted).
    pub fn starts(&self, i: usize) -> u32 {
        self.nodes[i].starts
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
    }
}
