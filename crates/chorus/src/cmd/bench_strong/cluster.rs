//! The cluster harness of `chorus bench strong`: a 3-member chorus cluster
//! (through `chorus dev`'s [`DevLayout`]) or etcd cluster (child processes
//! with their own ports, data directories and logs) on loopback, started
//! fresh for every run, with the leader probe both need and the SIGKILL of
//! a member that the failover trials use. Nothing here measures; the method
//! is in `docs/design/strong.md`, section "`chorus bench strong --vs-etcd
//! --rounds 3`".

use super::{LOG_TAIL_LINES, MEMBERS, NAMESPACE, POLL, READY_DEADLINE, REQUEST_TIMEOUT, System, Writer};
use crate::cmd::client::{Client, describe_error};
use crate::cmd::dev::{DevCluster, DevLayout};
use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// A running 3-member cluster of either system.
pub(super) trait Cluster {
    fn urls(&self) -> &[String];
    /// Index of the member every reachable member names as leader, waiting
    /// up to [`READY_DEADLINE`] for one.
    fn leader(&self) -> Result<usize>;
    /// SIGKILL member `i` and reap it.
    fn kill(&mut self, i: usize) -> Result<()>;
}

/// A chorus cluster and the directory it lives in (dropped after it).
pub(super) struct ChorusCluster {
    cluster: DevCluster,
    _dir: tempfile::TempDir,
}

impl ChorusCluster {
    pub(super) fn start(base_port: u16) -> Result<ChorusCluster> {
        let dir = tempfile::Builder::new().prefix("chorus-bench-strong-").tempdir()?;
        let layout = DevLayout {
            nodes: MEMBERS as u16,
            dir: dir.path().to_path_buf(),
            base_port,
            ip: Ipv4Addr::LOCALHOST,
            extra_config: "log = \"warn\"".into(),
        };
        let cluster = layout.start()?;
        let c = ChorusCluster { cluster, _dir: dir };
        c.leader()?;
        c.create_namespace()?;
        wait_writable(System::Chorus, c.urls())?;
        Ok(c)
    }

    /// Create the strong namespace, retrying while there is no leader yet.
    fn create_namespace(&self) -> Result<()> {
        let client = Client::new(&self.cluster.urls[0]);
        let body = json!({ "name": NAMESPACE, "mode": "strong" });
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            match client.call("POST", "/v1/ns", Some(&body)) {
                Ok((200 | 201, _)) => return Ok(()),
                Ok((503, v)) if Instant::now() < deadline => tracing::debug!("creating {NAMESPACE}: {v}"),
                Ok((status, v)) => bail!("creating namespace {NAMESPACE}: {}", describe_error(status, &v)),
                Err(e) if Instant::now() < deadline => tracing::debug!("creating {NAMESPACE}: {e:#}"),
                Err(e) => return Err(e.context(format!("creating namespace {NAMESPACE}"))),
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Cluster for ChorusCluster {
    fn urls(&self) -> &[String] {
        &self.cluster.urls
    }

    fn leader(&self) -> Result<usize> {
        poll_leader("chorus", || {
            let mut named = None;
            for url in &self.cluster.urls {
                let (status, v) = Client::new(url).call("GET", "/v1/raft", None)?;
                if status != 200 {
                    bail!("GET {url}/v1/raft: {}", describe_error(status, &v));
                }
                let Some(name) = v["leader"].as_str() else { return Ok(None) };
                let i = name
                    .strip_prefix("node")
                    .and_then(|k| k.parse::<usize>().ok())
                    .filter(|k| (1..=self.cluster.urls.len()).contains(k))
                    .ok_or_else(|| anyhow!("{url} names an unknown leader {name:?}"))?;
                if named.is_some_and(|n| n != i - 1) {
                    return Ok(None);
                }
                named = Some(i - 1);
            }
            Ok(named)
        })
    }

    fn kill(&mut self, i: usize) -> Result<()> {
        let child = self.cluster.children.get_mut(i).ok_or_else(|| anyhow!("no chorus node {i}"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

/// Three etcd members as children of this process; all are SIGKILLed on
/// drop (and, on Linux, when this process dies).
pub(super) struct EtcdCluster {
    children: Vec<Child>,
    urls: Vec<String>,
    dir: tempfile::TempDir,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

impl EtcdCluster {
    pub(super) fn start(bin: &Path, base_port: u16) -> Result<EtcdCluster> {
        if u32::from(base_port) + 10 + MEMBERS as u32 > u32::from(u16::MAX) {
            bail!("--etcd-base-port {base_port} leaves no room for {MEMBERS} members");
        }
        let dir = tempfile::Builder::new().prefix("chorus-bench-etcd-").tempdir()?;
        let client_url = |i: usize| format!("http://127.0.0.1:{}", base_port as usize + i);
        let peer_url = |i: usize| format!("http://127.0.0.1:{}", base_port as usize + 10 + i);
        let initial: Vec<String> = (1..=MEMBERS).map(|i| format!("e{i}={}", peer_url(i))).collect();
        let mut cluster = EtcdCluster { children: Vec::new(), urls: Vec::new(), dir };
        for i in 1..=MEMBERS {
            let log_path = cluster.dir.path().join(format!("e{i}.log"));
            let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
            let mut cmd = Command::new(bin);
            cmd.arg("--name")
                .arg(format!("e{i}"))
                .arg("--data-dir")
                .arg(cluster.dir.path().join(format!("e{i}.data")))
                .arg("--listen-client-urls")
                .arg(client_url(i))
                .arg("--advertise-client-urls")
                .arg(client_url(i))
                .arg("--listen-peer-urls")
                .arg(peer_url(i))
                .arg("--initial-advertise-peer-urls")
                .arg(peer_url(i))
                .arg("--initial-cluster")
                .arg(initial.join(","))
                .arg("--initial-cluster-state")
                .arg("new")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            #[cfg(target_os = "linux")]
            {
                use std::os::unix::process::CommandExt;
                // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
            }
            cluster.children.push(cmd.spawn().with_context(|| format!("spawning {}", bin.display()))?);
            cluster.urls.push(client_url(i));
        }
        cluster.wait_healthy()?;
        cluster.leader()?;
        wait_writable(System::Etcd, &cluster.urls)?;
        Ok(cluster)
    }

    /// Poll `GET /health` on every member until it says `{"health":"true"}`.
    fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_DEADLINE;
        for i in 0..self.urls.len() {
            let client = Client::new(&self.urls[i]);
            loop {
                if let Ok((200, v)) = client.call("GET", "/health", None)
                    && v["health"] == "true"
                {
                    break;
                }
                if let Some(status) = self.children[i].try_wait()? {
                    let log =
                        std::fs::read_to_string(self.dir.path().join(format!("e{}.log", i + 1))).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(LOG_TAIL_LINES).collect();
                    bail!(
                        "etcd member e{} exited ({status}); log tail:\n{}",
                        i + 1,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
                if Instant::now() > deadline {
                    bail!("etcd member {} was not healthy within {READY_DEADLINE:?}", self.urls[i]);
                }
                std::thread::sleep(POLL);
            }
        }
        Ok(())
    }
}

impl Cluster for EtcdCluster {
    fn urls(&self) -> &[String] {
        &self.urls
    }

    fn leader(&self) -> Result<usize> {
        poll_leader("etcd", || {
            let mut ids = Vec::new();
            let mut leaders = Vec::new();
            for url in &self.urls {
                let (status, v) = Client::new(url).call("POST", "/v3/maintenance/status", Some(&json!({})))?;
                if status != 200 {
                    bail!("POST {url}/v3/maintenance/status: {}", describe_error(status, &v));
                }
                // u64s are JSON strings in the gateway's protobuf mapping.
                ids.push(v["header"]["member_id"].as_str().unwrap_or_default().to_string());
                leaders.push(v["leader"].as_str().unwrap_or_default().to_string());
            }
            let Some(leader) = leaders.first().filter(|l| !l.is_empty() && *l != "0") else { return Ok(None) };
            if leaders.iter().any(|l| l != leader) {
                return Ok(None);
            }
            Ok(ids.iter().position(|id| id == leader))
        })
    }

    fn kill(&mut self, i: usize) -> Result<()> {
        let child = self.children.get_mut(i).ok_or_else(|| anyhow!("no etcd member {i}"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

/// Call `probe` until it names a leader; errors are retried until the
/// deadline, then returned.
fn poll_leader(what: &str, mut probe: impl FnMut() -> Result<Option<usize>>) -> Result<usize> {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let last = probe();
        if let Ok(Some(i)) = last {
            return Ok(i);
        }
        if Instant::now() > deadline {
            return match last {
                Err(e) => Err(e.context(format!("{what}: no leader within {READY_DEADLINE:?}"))),
                _ => bail!("{what}: members did not agree on a leader within {READY_DEADLINE:?}"),
            };
        }
        std::thread::sleep(POLL);
    }
}

/// Wait until one write through every member succeeds (a follower may
/// learn of the leader, or of a new namespace, a little after it exists).
fn wait_writable(system: System, urls: &[String]) -> Result<()> {
    let deadline = Instant::now() + READY_DEADLINE;
    for url in urls {
        let writer = Writer::new(system, url, REQUEST_TIMEOUT);
        while !writer.write("ready") {
            if Instant::now() > deadline {
                bail!("{}: {url} did not take a write within {READY_DEADLINE:?}", system.name());
            }
            std::thread::sleep(POLL);
        }
    }
    Ok(())
}

/// Starts a fresh cluster of one system.
pub(super) type StartCluster = dyn Fn() -> Result<Box<dyn Cluster>>;

/// `--etcd-bin`, else `etcd` on PATH, else /usr/bin/etcd.
pub(super) fn find_etcd(flag: Option<PathBuf>) -> Result<PathBuf> {
    let found = match flag {
        Some(p) => p.is_file().then_some(p),
        None => std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("etcd")).find(|p| p.is_file()))
            .or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|p| p.is_file())),
    };
    found.ok_or_else(|| {
        anyhow!(
            "--vs-etcd: etcd not found (looked at --etcd-bin, PATH and /usr/bin/etcd); \
             install it with scripts/install-etcd.sh (as root) or pass --etcd-bin PATH"
        )
    })
}

/// First line of `etcd --version` ("etcd Version: 3.4.23").
pub(super) fn etcd_version(bin: &Path) -> Result<String> {
    let out = Command::new(bin).arg("--version").output().with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!("{} --version failed ({})", bin.display(), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}
