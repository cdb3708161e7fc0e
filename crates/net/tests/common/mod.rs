//! Helpers shared by the integration tests: a CA, credentials, transports
//! on 127.0.0.1 with ephemeral ports, and polling with a deadline.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use chorus_net::{ClusterCa, Incoming, NodeCredentials, PeerAddr, Transport, TransportConfig};
use tokio::sync::mpsc;

pub const LOCALHOST: &str = "127.0.0.1:0";

pub fn creds(ca: &ClusterCa, name: &str) -> NodeCredentials {
    ca.issue_node(name, &["127.0.0.1".parse().expect("ip")]).expect("issue node certificate")
}

pub fn config(name: &str) -> TransportConfig {
    let mut config = TransportConfig::new(name, LOCALHOST.parse().expect("addr"));
    config.connect_timeout_ms = 1_000;
    config.reconnect_backoff_min_ms = 20;
    config.reconnect_backoff_max_ms = 200;
    config
}

pub fn bind(ca: &ClusterCa, name: &str) -> (Transport, mpsc::Receiver<Incoming>) {
    Transport::bind(config(name), &creds(ca, name)).expect("bind transport")
}

pub fn addr_of(transport: &Transport) -> PeerAddr {
    PeerAddr { name: transport.node_name().to_owned(), addr: local(transport) }
}

pub fn local(transport: &Transport) -> SocketAddr {
    transport.local_addr().expect("local addr")
}

/// Polls `check` every 10 ms until it is true or `deadline` passes.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next incoming event, or panic after `deadline`.
pub async fn next(rx: &mut mpsc::Receiver<Incoming>, deadline: Duration) -> Incoming {
    tokio::time::timeout(deadline, rx.recv())
        .await
        .expect("an incoming event before the deadline")
        .expect("incoming channel open")
}
