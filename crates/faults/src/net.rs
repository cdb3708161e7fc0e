//! The test network: one network namespace per node, all joined by veth
//! pairs to a bridge that lives in a namespace of its own, plus one veth
//! from the harness's namespace to the bridge so the client workers reach
//! the nodes' HTTP APIs. Every address (10.A.B.0/24) exists only inside
//! namespaces this run created; deleting the namespaces deletes every link.
//!
//! Faults are kernel-level and per node namespace: nft rules in table
//! `ip chf` (drops for partitions and one-way loss, `numgen random` drops,
//! `dup to` duplication), `ip link set down`, and `tc` qdiscs on the node's
//! veth (netem delay/jitter/loss/duplication/reordering when the kernel has
//! `sch_netem`, else a `tbf` rate limit that adds queueing delay).
//!
//! Without root or namespaces the network is plain loopback (127.0.T.i)
//! and only process faults apply.

use std::net::Ipv4Addr;
use std::process::Command;

/// Prefix of every namespace and link this harness creates.
pub const PREFIX: &str = "chf";

/// Why the network could not be built or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("not root (euid {0}): network namespaces need CAP_NET_ADMIN")]
    NotRoot(u32),
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("cannot run `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("no free 10.x.y.0/24 subnet found")]
    NoSubnet,
}

/// What the kernel offers for link faults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    /// `tc qdisc ... netem` works.
    pub netem: bool,
    /// `nft` is installed and works in our namespaces.
    pub nft: bool,
}

fn run(cmd: &str, args: &[&str]) -> Result<String, NetError> {
    let shown = || format!("{cmd} {}", args.join(" "));
    let out = Command::new(cmd).args(args).output().map_err(|source| NetError::Spawn { cmd: shown(), source })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetError::Command { cmd: shown(), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

fn ip(args: &[&str]) -> Result<String, NetError> {
    run("ip", args)
}

/// Whether a process id is alive (kill(pid, 0)).
fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid, 0) == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) }
}

/// Delete `chf*` namespaces left by runs that were killed (their owner pid,
/// encoded in the name, is gone). Namespaces of live runs are left alone, so
/// concurrent runs do not destroy each other. Returns how many were removed.
pub fn cleanup_stale() -> usize {
    let Ok(list) = ip(&["netns", "list"]) else { return 0 };
    let mut removed = 0;
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        if !name.starts_with(PREFIX) {
            continue;
        }
        // chf<tag>-p<pid>-<role>
        let owner = name.split('-').find_map(|p| p.strip_prefix('p')).and_then(|p| p.parse::<u32>().ok());
        if owner.is_some_and(pid_alive) {
            continue;
        }
        if ip(&["netns", "del", name]).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Where the nodes live.
#[derive(Debug)]
pub enum Mode {
    /// Namespaces `ns[i]`, node i at `10.a.b.(i+1)`, harness at `10.a.b.254`.
    Namespaces { subnet: (u8, u8), ns: Vec<String>, switch: String, caps: Caps },
    /// Loopback `127.0.block.(i+1)`; `why` says why namespaces were not used.
    Loopback { block: u8, why: String },
}

/// The network of one run. Dropping it deletes every namespace (and so
/// every link) it made, also when a run panics.
#[derive(Debug)]
pub struct Net {
    pub tag: String,
    pub mode: Mode,
    nodes: usize,
}

impl Net {
    /// Namespaces for `nodes` nodes, or an error saying why not.
    pub fn namespaces(nodes: usize, tag: &str) -> Result<Net, NetError> {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Err(NetError::NotRoot(euid));
        }
        let pid = std::process::id();
        let switch = format!("{PREFIX}{tag}-p{pid}-sw");
        let ns: Vec<String> = (0..nodes).map(|i| format!("{PREFIX}{tag}-p{pid}-n{i}")).collect();
        let subnet = pick_subnet(tag)?;
        let mut net = Net {
            tag: tag.to_string(),
            mode: Mode::Namespaces { subnet, ns: Vec::new(), switch: switch.clone(), caps: Caps::default() },
            nodes,
        };
        ip(&["netns", "add", &switch])?;
        net.set_ns(Vec::new());
        ip(&["-n", &switch, "link", "add", "name", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        let mut made = Vec::new();
        for (i, name) in ns.iter().enumerate() {
            ip(&["netns", "add", name])?;
            made.push(name.clone());
            net.set_ns(made.clone());
            let (node_if, br_if) = (format!("{PREFIX}{tag}v{i}"), format!("{PREFIX}{tag}b{i}"));
            ip(&["-n", name, "link", "set", "lo", "up"])?;
            ip(&[
                "link", "add", "name", &node_if, "netns", name, "type", "veth", "peer", "name", &br_if, "netns",
                &switch,
            ])?;
            ip(&["-n", &switch, "link", "set", &br_if, "master", "br0", "up"])?;
            let addr = format!("{}/24", Ipv4Addr::new(10, subnet.0, subnet.1, i as u8 + 1));
            ip(&["-n", name, "addr", "add", &addr, "dev", &node_if])?;
            ip(&["-n", name, "link", "set", &node_if, "up"])?;
        }
        // The harness's own leg onto the bridge; it dies with the switch namespace.
        let (root_if, root_br) = (format!("{PREFIX}{tag}r"), format!("{PREFIX}{tag}rb"));
        ip(&["link", "add", "name", &root_if, "type", "veth", "peer", "name", &root_br, "netns", &switch])?;
        ip(&["-n", &switch, "link", "set", &root_br, "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("10.{}.{}.254/24", subnet.0, subnet.1), "dev", &root_if])?;
        ip(&["link", "set", &root_if, "up"])?;
        let caps = net.probe_caps();
        if let Mode::Namespaces { caps: c, .. } = &mut net.mode {
            *c = caps;
        }
        Ok(net)
    }

    /// Plain loopback (no privileges needed).
    pub fn loopback(nodes: usize, block: u8, why: String) -> Net {
        Net { tag: String::new(), mode: Mode::Loopback { block, why }, nodes }
    }

    fn set_ns(&mut self, list: Vec<String>) {
        if let Mode::Namespaces { ns, .. } = &mut self.mode {
            *ns = list;
        }
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    pub fn is_namespaces(&self) -> bool {
        matches!(self.mode, Mode::Namespaces { .. })
    }

    pub fn caps(&self) -> Caps {
        match &self.mode {
            Mode::Namespaces { caps, .. } => *caps,
            Mode::Loopback { .. } => Caps::default(),
        }
    }

    /// Node `i`'s address.
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        match &self.mode {
            Mode::Namespaces { subnet, .. } => Ipv4Addr::new(10, subnet.0, subnet.1, i as u8 + 1),
            Mode::Loopback { block, .. } => Ipv4Addr::new(127, 0, *block, i as u8 + 1),
        }
    }

    /// The namespace node `i` runs in (namespaces mode only).
    pub fn node_ns(&self, i: usize) -> Option<&str> {
        match &self.mode {
            Mode::Namespaces { ns, .. } => ns.get(i).map(String::as_str),
            Mode::Loopback { .. } => None,
        }
    }

    fn node_if(&self, i: usize) -> String {
        format!("{PREFIX}{}v{i}", self.tag)
    }

    fn nft(&self, i: usize, args: &[&str]) -> Result<(), NetError> {
        let ns = self.node_ns(i).unwrap_or_default().to_string();
        let mut full = vec!["netns", "exec", ns.as_str(), "nft"];
        full.extend_from_slice(args);
        ip(&full).map(|_| ())
    }

    fn tc(&self, i: usize, args: &[&str]) -> Result<(), NetError> {
        let ns = self.node_ns(i).unwrap_or_default().to_string();
        let mut full = vec!["-n", ns.as_str()];
        full.extend_from_slice(args);
        run("tc", &full).map(|_| ())
    }

    fn probe_caps(&self) -> Caps {
        let nft = (0..self.nodes).all(|i| {
            self.nft(i, &["add", "table", "ip", "chf"]).is_ok()
                && self
                    .nft(i, &["add", "chain", "ip", "chf", "input", "{ type filter hook input priority 0; }"])
                    .is_ok()
                && self
                    .nft(i, &["add", "chain", "ip", "chf", "output", "{ type filter hook output priority 0; }"])
                    .is_ok()
        });
        let dev = self.node_if(0);
        let netem = self.tc(0, &["qdisc", "replace", "dev", &dev, "root", "netem", "delay", "1ms"]).is_ok();
        if netem {
            let _ = self.tc(0, &["qdisc", "del", "dev", &dev, "root"]);
        }
        Caps { netem, nft }
    }

    fn peers_set(&self, nodes: &[usize]) -> String {
        let ips: Vec<String> = nodes.iter().map(|&j| self.node_ip(j).to_string()).collect();
        format!("{{ {} }}", ips.join(", "))
    }

    /// Drop everything between `a` and `b` (both directions) at `a`.
    pub fn cut(&self, a: usize, others: &[usize]) -> Result<(), NetError> {
        if others.is_empty() {
            return Ok(());
        }
        let set = self.peers_set(others);
        self.nft(a, &["add", "rule", "ip", "chf", "input", "ip", "saddr", &set, "drop"])?;
        self.nft(a, &["add", "rule", "ip", "chf", "output", "ip", "daddr", &set, "drop"])
    }

    /// Packets from `from` never arrive at `to`; the other direction works.
    pub fn one_way(&self, from: usize, to: usize) -> Result<(), NetError> {
        let set = self.peers_set(&[from]);
        self.nft(to, &["add", "rule", "ip", "chf", "input", "ip", "saddr", &set, "drop"])
    }

    /// `pct` % of peer packets arriving at `i` are dropped at random.
    pub fn random_loss(&self, i: usize, pct: u8) -> Result<(), NetError> {
        let peers: Vec<usize> = (0..self.nodes).filter(|&j| j != i).collect();
        let set = self.peers_set(&peers);
        let p = pct.to_string();
        self.nft(
            i,
            &[
                "add", "rule", "ip", "chf", "input", "ip", "saddr", &set, "numgen", "random", "mod", "100", "<", &p,
                "drop",
            ],
        )
    }

    /// `pct` % of `i`'s packets to each peer are sent twice.
    pub fn duplicate(&self, i: usize, pct: u8) -> Result<(), NetError> {
        let p = pct.to_string();
        for j in (0..self.nodes).filter(|&j| j != i) {
            let peer = self.node_ip(j).to_string();
            self.nft(
                i,
                &[
                    "add", "rule", "ip", "chf", "output", "ip", "daddr", &peer, "numgen", "random", "mod", "100", "<",
                    &p, "dup", "to", &peer,
                ],
            )?;
        }
        Ok(())
    }

    /// netem on `i`'s link (delay ± jitter, loss, duplication, reordering);
    /// without netem, a tbf rate limit (queueing delay). Returns which.
    pub fn degrade_link(
        &self,
        i: usize,
        delay_ms: u32,
        jitter_ms: u32,
        loss_pct: u8,
        dup_pct: u8,
        reorder_pct: u8,
    ) -> Result<&'static str, NetError> {
        let dev = self.node_if(i);
        if self.caps().netem {
            let (d, j) = (format!("{delay_ms}ms"), format!("{jitter_ms}ms"));
            let (l, du, r) = (format!("{loss_pct}%"), format!("{dup_pct}%"), format!("{reorder_pct}%"));
            self.tc(
                i,
                &[
                    "qdisc",
                    "replace",
                    "dev",
                    &dev,
                    "root",
                    "netem",
                    "delay",
                    &d,
                    &j,
                    "loss",
                    &l,
                    "duplicate",
                    &du,
                    "reorder",
                    &r,
                ],
            )?;
            Ok("netem")
        } else {
            self.tc(
                i,
                &[
                    "qdisc", "replace", "dev", &dev, "root", "tbf", "rate", "256kbit", "burst", "16kbit", "latency",
                    "400ms",
                ],
            )?;
            Ok("tbf")
        }
    }

    /// `ip link set down` on node `i`'s veth.
    pub fn link_down(&self, i: usize) -> Result<(), NetError> {
        let ns = self.node_ns(i).unwrap_or_default().to_string();
        ip(&["-n", &ns, "link", "set", &self.node_if(i), "down"]).map(|_| ())
    }

    /// Undo every link fault on every node; errors are collected, not fatal,
    /// so one failure does not leave other nodes partitioned.
    pub fn heal(&self) -> Vec<NetError> {
        let mut errors = Vec::new();
        if !self.is_namespaces() {
            return errors;
        }
        for i in 0..self.nodes {
            let ns = self.node_ns(i).unwrap_or_default().to_string();
            let dev = self.node_if(i);
            if let Err(e) = ip(&["-n", &ns, "link", "set", &dev, "up"]) {
                errors.push(e);
            }
            // No qdisc to delete is the normal case.
            let _ = self.tc(i, &["qdisc", "del", "dev", &dev, "root"]);
            if self.caps().nft {
                for chain in ["input", "output"] {
                    if let Err(e) = self.nft(i, &["flush", "chain", "ip", "chf", chain]) {
                        errors.push(e);
                    }
                }
            }
        }
        errors
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Mode::Namespaces { ns, switch, .. } = &self.mode {
            // Namespaces die asynchronously in the kernel; our leg in the
            // harness's namespace is deleted here so it is gone on return.
            let _ = ip(&["link", "del", &format!("{PREFIX}{}r", self.tag)]);
            for n in ns {
                let _ = ip(&["netns", "del", n]);
            }
            let _ = ip(&["netns", "del", switch]);
        }
    }
}

/// A /24 in 10.0.0.0/8 derived from the tag and not already routed here.
fn pick_subnet(tag: &str) -> Result<(u8, u8), NetError> {
    let routes = ip(&["-4", "route", "show", "table", "all"]).unwrap_or_default();
    let h = tag.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    for attempt in 0..64u64 {
        let x = h.wrapping_add(attempt.wrapping_mul(0x9E37_79B9));
        let subnet = (200 + (x % 50) as u8, ((x >> 8) % 250) as u8 + 1);
        let prefix = format!("10.{}.{}.", subnet.0, subnet.1);
        if !routes.contains(&prefix) {
            return Ok(subnet);
        }
    }
    Err(NetError::NoSubnet)
}
