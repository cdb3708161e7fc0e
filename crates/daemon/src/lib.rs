//! # chorus-daemon
//!
//! The driver that runs the sans-IO replication core (`chorus-core`) for
//! real: a redb store with group commit (`chorus-storage`), QUIC with mutual
//! TLS and SWIM membership (`chorus-net`), the OS clock, and the HTTP/JSON
//! API. See `docs/design/daemon.md` for the task structure and data path,
//! and `docs/design/http-api.md` for the routes.
//!
//! Tasks of a running node:
//! * the **node task** ([`runtime`]) owns the `Node`; everything else talks
//!   to it through a bounded command channel;
//! * the HTTP server (axum routes on hyper's HTTP/1.1 server), one task per
//!   connection, under the bounds of [`api::limits`];
//! * chorus-net's transport and membership tasks;
//! * the clock prober ([`probe`]): one NTP-style probe per live peer of an
//!   adjacent tier every `clock_probe_interval_ms`, feeding the clock
//!   service whose corrected time the node task hands to the core;
//! * the metrics upkeep task;
//! * the group-commit writer thread of chorus-storage.

pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
#[cfg(feature = "test-knobs")]
pub mod knobs;
pub mod probe;
pub mod rate;
pub mod revocation;
pub mod runtime;
pub mod strong;
pub mod telemetry;
pub mod token;
pub mod watch_hub;

pub use clock::{Clock, ClockHandle, SystemClock};
pub use config::{Config, ConfigError};

use anyhow::Context;
use chorus_core::persist::RecoveryImage;
use chorus_core::{Node, NodeId, ValueType};
use chorus_net::{Membership, MembershipConfig, NodeCredentials, NodeIdentity, Transport, TransportConfig};
use chorus_storage::{GroupCommitter, RedbStorage, Storage, WriteBatch};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The store file inside `data_dir`.
pub const STORE_FILE: &str = "chorus.redb";
/// Space of the daemon's own records (the core ignores it at recovery).
pub const DAEMON_SPACE: &str = "daemon";
/// Key of the membership generation, a big-endian u64.
pub const GENERATION_KEY: &[u8] = b"generation";
/// The namespace every cluster has from the start (`docs/design/daemon.md`,
/// "Startup").
pub const DEFAULT_NAMESPACE: &str = "default";
/// How long a graceful leave may take at shutdown.
const LEAVE_DEADLINE: Duration = Duration::from_secs(2);
/// Period of the metrics upkeep task.
const UPKEEP_PERIOD: Duration = Duration::from_secs(1);

/// A running node.
pub struct Daemon {
    api_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    node_task: tokio::task::JoinHandle<Result<(), runtime::DriverError>>,
    http_task: tokio::task::JoinHandle<std::io::Result<()>>,
    membership: Membership,
    transport: Transport,
    strong: Option<Arc<strong::StrongService>>,
}

impl Daemon {
    /// The bound HTTP API address (the real port when configured as 0).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Run until `stop` resolves (then leave gracefully) or the node task
    /// fails (then return its error: the node must not keep serving).
    pub async fn run_until(mut self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let outcome = tokio::select! {
            _ = stop => None,
            r = &mut self.node_task => Some(r),
        };
        match outcome {
            None => {
                self.shutdown().await;
                Ok(())
            }
            Some(r) => {
                let _ = self.shutdown.send(true);
                if let Some(svc) = &self.strong {
                    svc.node.shutdown().await;
                }
                self.transport.shutdown().await;
                match r {
                    Ok(Ok(())) => anyhow::bail!("node task stopped"),
                    Ok(Err(e)) => Err(e).context("node task failed; stopping"),
                    Err(e) => Err(e).context("node task panicked"),
                }
            }
        }
    }

    /// Leave the cluster gracefully and stop every task.
    pub async fn shutdown(self) {
        let _ = tokio::time::timeout(LEAVE_DEADLINE, self.membership.leave()).await;
        let _ = self.shutdown.send(true);
        let _ = self.http_task.await;
        let _ = self.node_task.await;
        if let Some(svc) = &self.strong {
            svc.node.shutdown().await;
        }
        self.transport.shutdown().await;
    }
}

/// Read every space of the store into a recovery image.
fn load_image(store: &RedbStorage) -> anyhow::Result<RecoveryImage> {
    let mut image = RecoveryImage::new();
    for space in store.spaces().context("listing store spaces")? {
        // The Raft log and state machine belong to chorus-strong, which
        // reads them itself.
        if space.starts_with(chorus_strong::store::SPACE_PREFIX) {
            continue;
        }
        let mut entries = std::collections::BTreeMap::new();
        store
            .for_each(&space, &mut |k, v| {
                entries.insert(k.to_vec(), v.to_vec());
                ControlFlow::Continue(())
            })
            .with_context(|| format!("reading space {space:?}"))?;
        image.insert(space, entries);
    }
    Ok(image)
}

/// The membership generation must grow across restarts (chorus-net), even
/// when the clock stepped back: one more than the stored one, or the boot
/// time in µs if that is larger. Durable before membership starts.
fn next_generation(store: &RedbStorage, now_us: u64) -> anyhow::Result<u64> {
    let stored = match store.get(DAEMON_SPACE, GENERATION_KEY).context("reading the generation")? {
        Some(bytes) => {
            let arr: [u8; 8] = bytes.as_slice().try_into().context("stored generation is not 8 bytes")?;
            u64::from_be_bytes(arr)
        }
        None => 0,
    };
    let generation = stored.saturating_add(1).max(now_us);
    let mut batch = WriteBatch::new();
    batch.put(DAEMON_SPACE, GENERATION_KEY, generation.to_be_bytes().to_vec());
    store.commit(batch).context("storing the generation")?;
    Ok(generation)
}

/// Start a node: recover the store, bind QUIC, check the local clock
/// against the seeds, join the cluster, serve HTTP.
///
/// `clock` is the raw OS clock (production: [`SystemClock::os`]);
/// the core receives it corrected by the node's clock service. Fails with
/// [`probe::JoinRefused`] in the error chain when the seeds' clocks are
/// further than `max_offset_ms` from ours.
pub async fn start(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Daemon> {
    config.validate()?;
    let clock_service = Arc::new(ClockHandle::new(clock.clone(), config.clock_config()).context("clock service")?);
    let creds = NodeCredentials::load(&config.tls_dir)
        .with_context(|| format!("loading node.pem, node.key and ca.pem from {}", config.tls_dir.display()))?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    let path = config.data_dir.join(STORE_FILE);
    let now_us = clock.now_us();
    let (store, image, generation) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let store = RedbStorage::open(&path).with_context(|| format!("opening store {}", path.display()))?;
        let image = load_image(&store)?;
        let generation = next_generation(&store, now_us)?;
        Ok((store, image, generation))
    })
    .await
    .context("store loader panicked")??;

    let id = NodeId::from_name(&config.name);
    let seed = now_us ^ id.0 ^ generation.rotate_left(17);
    #[allow(unused_mut)]
    let mut node_config = config.node_config();
    #[cfg(feature = "test-knobs")]
    let knobs = knobs::DriverKnobs::from_env();
    #[cfg(feature = "test-knobs")]
    if knobs.ack_before_fsync {
        tracing::warn!(
            "{} is set: writes are acknowledged BEFORE they are durable (a test knob that breaks durability)",
            knobs::ACK_BEFORE_FSYNC_ENV
        );
        node_config.injected_bug = Some(chorus_core::InjectedBug::ReleaseReceiptsBeforeDurable);
    }
    let mut node = Node::recover(id, node_config, seed, &image).context("recovering the node from its store")?;
    node.enable_change_feed();
    let signer = if config.signing_enabled {
        let Some(sc) = &creds.signing else {
            anyhow::bail!(
                "signing_enabled is set but {} has no signing.json (credentials issued before signed writes): \
                 issue them again with `chorus ca issue`, or set signing_enabled = false on every node",
                config.tls_dir.display()
            );
        };
        if !chorus_net::verify_signing_card(&creds.ca_pem, &config.name, &sc.card) {
            anyhow::bail!(
                "{}/signing.json is not the cluster CA's key for node {:?}: issue it again with `chorus ca issue`",
                config.tls_dir.display(),
                config.name
            );
        }
        let signer = Arc::new(chorus_core::signing::Ed25519Signing::new(id, &sc.secret));
        node.enable_signing(signer.clone());
        Some(signer)
    } else {
        None
    };
    let watch_hub = watch_hub::WatchHub::new();
    drop(image);
    // Corrected time never goes below what the HLC already issued, even if
    // the OS clock stepped back while the node was down.
    clock_service.set_floor_us(node.hlc_high_water().physical_us);
    if node.namespace(DEFAULT_NAMESPACE).is_none() {
        node.create_namespace(DEFAULT_NAMESPACE, ValueType::Lww).context("creating the default namespace")?;
    }
    let store = Arc::new(store);
    let committer = Arc::new(GroupCommitter::start(store).context("starting the group-commit writer")?);

    let mut tconfig = TransportConfig::new(config.name.clone(), config.peer_addr);
    tconfig.frame_bytes_max = chorus_core::limits::FRAME_BYTES_MAX as u32;
    let revocations = match &config.revocation_list {
        Some(path) => revocation::load_at_start(path, &creds.ca_pem, &config.data_dir)?,
        None => chorus_net::RevocationList::default(),
    };
    revocation::apply_to_signer(&revocations, signer.as_deref());
    let (transport, incoming) = Transport::bind_with_revocations(tconfig, &creds, revocations.clone())
        .with_context(|| format!("binding QUIC on {}", config.peer_addr))?;

    let peer_addr = config.advertised_peer_addr();
    // Measure the seeds' clocks before anyone can see us: before SWIM
    // starts and before the API accepts writes (`docs/design/daemon.md`,
    // "Startup").
    let own = [peer_addr, config.peer_addr];
    let verdict =
        probe::join_check(&clock_service, &transport, &config.seeds, &own, config.tier, config.max_offset_ms).await;
    match verdict {
        Ok(probe::JoinCheck::Checked { offset_us, seeds }) => {
            tracing::info!(offset_us, seeds, "local clock checked against the seeds")
        }
        Ok(probe::JoinCheck::Unchecked) => {
            tracing::warn!("no seed answered a clock probe: the local clock is unchecked until peers can be probed")
        }
        Err(refused) => {
            transport.shutdown().await;
            return Err(refused.into());
        }
    }
    let mconfig = MembershipConfig {
        probe_period_ms: config.probe_period_ms,
        probe_rtt_ms: (config.probe_period_ms / 3).max(10),
        suspect_to_down_after_ms: config.suspect_to_down_after_ms,
        ..MembershipConfig::default()
    };
    // The API listener is bound before SWIM starts so that the identity
    // carries the real port (a configured port 0 included); connections
    // wait in its backlog until HTTP is served below.
    let listener = tokio::net::TcpListener::bind(config.api_addr)
        .await
        .with_context(|| format!("binding the HTTP API on {}", config.api_addr))?;
    let api_addr = listener.local_addr()?;
    let identity = NodeIdentity {
        name: config.name.clone(),
        addr: peer_addr,
        api_addr: Some(advertised_api_addr(api_addr, peer_addr)),
        generation,
        tier: config.tier,
        signing_key: creds.signing.as_ref().map(|sc| sc.card.clone()),
    };
    let membership =
        Membership::start(transport.clone(), identity, config.seeds.clone(), mconfig).context("starting membership")?;

    let strong = strong::StrongService::start(
        &config,
        committer.clone() as Arc<dyn Storage>,
        transport.clone(),
        clock_service.clone(),
    )
    .await
    .context("starting strong namespaces (Raft)")?;
    let peer_rate = rate::RateLimiter::new(
        config.rate_limit_peer_per_s,
        if config.rate_limit_peer_burst == 0 { config.rate_limit_peer_per_s } else { config.rate_limit_peer_burst },
    );
    let incoming = demux(incoming, strong.clone(), peer_rate);

    let mut driver = runtime::Driver {
        node,
        clock: clock_service.clone(),
        committer,
        transport: transport.clone(),
        tier: config.tier,
        value_bytes_max: config.max_value_bytes as usize,
        group_writes_max: config.group_commit_writes_max,
        watch_hub: watch_hub.clone(),
        keys: runtime::OriginKeys::new(signer.clone(), creds.ca_pem.clone()),
        #[cfg(feature = "test-knobs")]
        knobs,
    };
    // The default namespace's record is durable before anyone can write.
    driver.persist_startup().await.context("persisting the default namespace")?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    if let Some(path) = &config.revocation_list {
        tokio::spawn(revocation::watch_file(
            path.clone(),
            creds.ca_pem.clone(),
            config.data_dir.clone(),
            revocations,
            transport.clone(),
            signer.clone(),
            shutdown_rx.clone(),
        ));
    }
    let (handle, node_task) = runtime::spawn(
        driver,
        incoming,
        membership.watch_members(),
        shutdown_rx.clone(),
        config.command_queue_max,
        Duration::from_millis(config.request_timeout_ms),
    );

    let metrics = telemetry::install();
    let info = Arc::new(api::NodeInfo {
        name: config.name.clone(),
        node_id: id,
        cluster_name: config.cluster_name.clone(),
        tier: config.tier,
        generation,
        api_addr,
        peer_addr,
        value_bytes_max: config.max_value_bytes as usize,
        started: Instant::now(),
    });
    let state = api::ApiState {
        node: handle.clone(),
        membership: membership.clone(),
        clock: clock_service.clone(),
        info,
        metrics: metrics.clone(),
        strong: strong.clone(),
        eventual_names: api::EventualNames::default(),
        watch_hub,
        session_wait: Duration::from_millis(config.session_wait_ms),
        auth: Arc::new(
            auth::Auth::new(config.auth_enabled, config.metrics_public)
                .with_client_rate(config.rate_limit_client_per_s, config.rate_limit_client_burst),
        ),
    };
    tokio::spawn(api::auth::refresh_loop(state.clone(), shutdown_rx.clone()));
    let app = api::router(state, api::HttpLimits::from_config(&config));
    let header_timeout = Duration::from_millis(config.http_header_timeout_ms);
    let http_task = tokio::spawn(serve_http(listener, app, header_timeout, shutdown_rx.clone()));
    tokio::spawn(probe::run_prober(
        clock_service.clone(),
        transport.clone(),
        membership.watch_members(),
        config.tier,
        Duration::from_millis(config.clock_probe_interval_ms),
        shutdown_rx.clone(),
    ));
    if let Some(svc) = &strong {
        tokio::spawn(strong::run_upkeep(svc.clone(), membership.clone(), shutdown_rx.clone()));
    }
    tokio::spawn(upkeep(handle, membership.clone(), transport.clone(), metrics, shutdown_rx));
    tracing::info!(name = %config.name, %api_addr, %peer_addr, generation, "chorus node started");
    Ok(Daemon { api_addr, shutdown: shutdown_tx, node_task, http_task, membership, transport, strong })
}

/// Pause after a failed `accept` (out of file descriptors, say) before the
/// next one, so the accept loop does not spin while the condition lasts.
const HTTP_ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How long shutdown waits for open HTTP connections to finish their
/// current request; streams still open then are cut.
const HTTP_SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// Serves the API over HTTP/1.1 until `stop`, one task per connection.
/// hyper's server builder is used directly (not `axum::serve`) because it
/// is what sets the header timeout: a connection that has not sent a whole
/// request header within `header_timeout` of the connection's start or of
/// its previous answer is closed, so a crowd of slow or idle connections
/// costs a task each only for that long (`docs/design/http-api.md`,
/// "Limits").
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    // Every connection task holds a receiver; shutdown waits until all are
    // dropped.
    let (connections_tx, connections_rx) = watch::channel(());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut stop) => break,
        };
        let (stream, client) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(HTTP_ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Every request learns its client's address (rate limits key on it).
        let with_addr =
            tower::ServiceExt::map_request(app.clone(), move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(auth::ClientAddr(client));
                request
            });
        let service = hyper_util::service::TowerToHyperService::new(with_addr);
        let connection = http.serve_connection(TokioIo::new(stream), service).with_upgrades();
        let mut stop = stop.clone();
        let held = connections_rx.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(held);
        });
    }
    drop(connections_rx);
    let _ = tokio::time::timeout(HTTP_SHUTDOWN_DRAIN, connections_tx.closed()).await;
    Ok(())
}

/// Resolves once `stop` says so (or its sender is gone), holding no guard
/// of the channel across awaits.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The API address other nodes and clients are told: the bound one, except
/// that a wildcard IP (`0.0.0.0`, `::`) is replaced by the IP this node
/// advertises to its peers, which they can reach.
fn advertised_api_addr(bound: SocketAddr, advertised_peer: SocketAddr) -> SocketAddr {
    if bound.ip().is_unspecified() { SocketAddr::new(advertised_peer.ip(), bound.port()) } else { bound }
}

/// Bound of the queue of peer traffic into the node task.
const INCOMING_QUEUE_MAX: usize = 4096;

/// Splits peer traffic: strong-namespace (Raft) requests go straight to the
/// Raft node, one task each, so they never wait behind the eventual node
/// task's group commit; everything else goes to the node task. Without
/// strong namespaces their requests are dropped (the requester sees no
/// answer).
fn demux(
    mut incoming: tokio::sync::mpsc::Receiver<chorus_net::Incoming>,
    strong: Option<Arc<strong::StrongService>>,
    peer_rate: rate::RateLimiter<String>,
) -> tokio::sync::mpsc::Receiver<chorus_net::Incoming> {
    let (tx, rx) = tokio::sync::mpsc::channel(INCOMING_QUEUE_MAX);
    tokio::spawn(async move {
        while let Some(message) = incoming.recv().await {
            // `rate_limit_peer_per_s`, per authenticated peer name, on
            // replication traffic. A dropped request's sender sees no answer
            // (as for a lost one). Raft requests are exempt: dropping a
            // leader's heartbeats and appends would cause elections, and
            // Raft bounds its own traffic (appends in flight, in bytes).
            let raft = matches!(&message, chorus_net::Incoming::Request { payload, .. }
                if chorus_strong::is_strong_request(payload));
            if peer_rate.enabled() && !raft {
                let from = match &message {
                    chorus_net::Incoming::Message { from, .. } | chorus_net::Incoming::Request { from, .. } => {
                        Some(&from.name)
                    }
                    _ => None,
                };
                if let Some(name) = from
                    && peer_rate.check(name, Instant::now()).is_err()
                {
                    telemetry::rate_limited("peer");
                    continue;
                }
            }
            match message {
                chorus_net::Incoming::Request { payload, respond, .. }
                    if chorus_strong::is_strong_request(&payload) =>
                {
                    if let Some(svc) = &strong {
                        let node = svc.node.clone();
                        tokio::spawn(async move {
                            let answer = node.handle_request(&payload).await;
                            let _ = respond.send(answer);
                        });
                    }
                }
                other => {
                    if tx.send(other).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

async fn upkeep(
    node: runtime::NodeHandle,
    membership: Membership,
    transport: Transport,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(UPKEEP_PERIOD);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Ok(stats) = node.inspect(|n: &Node| n.stats().clone()).await {
            telemetry::upkeep(&stats, transport.stats(), api::is_partitioned(&membership));
        }
        if let Some(m) = &metrics {
            m.run_upkeep();
        }
    }
}

/// Install a `tracing` subscriber: `RUST_LOG` if set, else `default_filter`.
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_api_address_is_advertised_with_the_peer_ip_and_the_bound_port() {
        let peer: SocketAddr = "10.0.0.7:7201".parse().unwrap();
        let wildcard: SocketAddr = "0.0.0.0:40123".parse().unwrap();
        assert_eq!(advertised_api_addr(wildcard, peer), "10.0.0.7:40123".parse().unwrap());
        let v6_wildcard: SocketAddr = "[::]:7101".parse().unwrap();
        assert_eq!(advertised_api_addr(v6_wildcard, peer), "10.0.0.7:7101".parse().unwrap());
        let bound: SocketAddr = "127.0.0.3:7101".parse().unwrap();
        assert_eq!(advertised_api_addr(bound, peer), bound);
    }
}
