//! A cluster of strong nodes in one process: real QUIC on 127.0.0.1 with
//! certificates from a test CA, redb files in a temporary directory.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_net::{ClusterCa, NodeCredentials, Transport, TransportConfig};
use chorus_storage::{RedbStorage, Storage};
use chorus_strong::{PeerNode, StrongConfig, StrongNode};
use tokio::task::JoinHandle;

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

pub struct Member {
    pub id: u64,
    pub node: StrongNode,
    pub transport: Transport,
    pub serve: JoinHandle<()>,
}

pub struct Cluster {
    pub ca: ClusterCa,
    pub dir: tempfile::TempDir,
    pub creds: BTreeMap<u64, NodeCredentials>,
    pub addrs: BTreeMap<u64, SocketAddr>,
    pub storages: BTreeMap<u64, Arc<dyn Storage>>,
    pub members: BTreeMap<u64, Member>,
    pub tune: fn(&mut StrongConfig),
}

fn transport_config(name: &str, addr: SocketAddr) -> TransportConfig {
    let mut config = TransportConfig::new(name, addr);
    // Give up on dead peers quickly so tests measure Raft, not dialing.
    config.connect_timeout_ms = 300;
    config.reconnect_backoff_min_ms = 20;
    config.reconnect_backoff_max_ms = 200;
    config.idle_timeout_ms = 2_000;
    config.keepalive_interval_ms = 300;
    config
}

pub fn name(id: u64) -> String {
    format!("n{id}")
}

impl Cluster {
    /// Starts `n` nodes and initializes them as voters.
    pub async fn start(n: u64, tune: fn(&mut StrongConfig)) -> Cluster {
        let ca = ClusterCa::generate("strong-test").expect("test CA");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cluster = Cluster {
            ca,
            dir,
            creds: BTreeMap::new(),
            addrs: BTreeMap::new(),
            storages: BTreeMap::new(),
            members: BTreeMap::new(),
            tune,
        };
        for id in 1..=n {
            cluster.add_process(id).await;
        }
        let voters: BTreeMap<u64, PeerNode> = cluster.members.iter().map(|(id, m)| (*id, m.node.peer_node())).collect();
        cluster.members[&1].node.initialize(voters).await.expect("initialize");
        cluster.wait_for_leader(Duration::from_secs(10)).await;
        cluster
    }

    /// Starts node `id` with fresh storage, in no Raft group yet (the
    /// leader adds it as a learner or voter).
    pub async fn add_process(&mut self, id: u64) {
        let creds = self.ca.issue_node(&name(id), &[LOCALHOST]).expect("node cert");
        let storage: Arc<dyn Storage> =
            Arc::new(RedbStorage::open(self.dir.path().join(format!("{id}.redb"))).expect("redb"));
        self.creds.insert(id, creds);
        self.storages.insert(id, storage);
        self.launch(id, SocketAddr::new(LOCALHOST, 0)).await;
    }

    async fn launch(&mut self, id: u64, addr: SocketAddr) {
        // A stopped node's socket may be released a moment after its
        // shutdown returns (its tasks end on their own): retry the bind.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (transport, incoming) = loop {
            match Transport::bind(transport_config(&name(id), addr), &self.creds[&id]) {
                Ok(bound) => break bound,
                Err(e) => assert!(Instant::now() < deadline, "bind {addr}: {e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.addrs.insert(id, transport.local_addr().expect("local addr"));
        let mut config = StrongConfig::new(id);
        (self.tune)(&mut config);
        let node = StrongNode::start(config, Arc::clone(&self.storages[&id]), transport.clone()).await.expect("start");
        let serve = node.serve(incoming);
        self.members.insert(id, Member { id, node, transport, serve });
    }

    /// Stops node `id` as a crash would look to its peers: Raft stops, the
    /// transport closes. Its storage survives.
    pub async fn stop(&mut self, id: u64) {
        if let Some(member) = self.members.remove(&id) {
            member.node.shutdown().await;
            member.serve.abort();
            member.transport.shutdown().await;
        }
    }

    /// Restarts a stopped node on its old address from its storage.
    pub async fn restart(&mut self, id: u64) {
        let addr = self.addrs[&id];
        self.launch(id, addr).await;
    }

    pub fn node(&self, id: u64) -> &StrongNode {
        &self.members[&id].node
    }

    pub fn live(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// Polls until every live node agrees on one live leader.
    pub async fn wait_for_leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let leaders: Vec<Option<u64>> = self.members.values().map(|m| m.node.status().leader).collect();
            if let Some(Some(leader)) = leaders.first()
                && leaders.iter().all(|l| *l == Some(*leader))
                && self.members.contains_key(leader)
                && self.members[leader].node.status().state == "leader"
            {
                return *leader;
            }
            assert!(Instant::now() < deadline, "no leader within {within:?}: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn shutdown(mut self) {
        for id in self.live() {
            self.stop(id).await;
        }
    }
}

pub fn default_tune(_: &mut StrongConfig) {}
