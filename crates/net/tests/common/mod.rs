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

/// A plain quinn client presenting `creds` (a valid node certificate), for
/// tests that speak to a transport the way a hostile peer would.
pub fn raw_client(creds: &NodeCredentials) -> (quinn::Endpoint, quinn::ClientConfig) {
    use std::sync::{Arc, RwLock};
    let revocations = Arc::new(RwLock::new(chorus_net::RevocationList::default()));
    let tls = chorus_net::tls::client_config(creds, revocations, false).expect("client tls");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let client_config = quinn::ClientConfig::new(Arc::new(crypto));
    let endpoint = quinn::Endpoint::client(LOCALHOST.parse().expect("addr")).expect("client endpoint");
    (endpoint, client_config)
}

/// The application close code and reason of a closed connection, if it was
/// closed by the application.
pub fn application_close(error: &quinn::ConnectionError) -> Option<(u32, String)> {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => Some((
            u32::try_from(close.error_code.into_inner()).unwrap_or(u32::MAX),
            String::from_utf8_lossy(&close.reason).into_owned(),
        )),
        _ => None,
    }
}
