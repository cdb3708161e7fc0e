//! `chorus agent --config FILE`: run one node until SIGINT or SIGTERM.

use anyhow::{Context, Result};
use chorus_daemon::{Config, SystemClock};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args)]
pub struct AgentArgs {
    /// The node's TOML configuration (every key has a default).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

pub fn run(args: AgentArgs) -> Result<ExitCode> {
    let config = Config::load(&args.config)?;
    chorus_daemon::init_logging(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime_worker_threads())
        .enable_all()
        .build()
        .context("starting tokio")?;
    #[cfg(feature = "test-knobs")]
    let clock = SystemClock::from_env();
    #[cfg(not(feature = "test-knobs"))]
    let clock = SystemClock::os();
    if clock.test_offset_us() != 0 {
        tracing::warn!(
            offset_us = clock.test_offset_us(),
            "this node's OS clock readings are shifted on purpose (a test knob; never in production)"
        );
    }
    runtime.block_on(async move {
        let daemon = chorus_daemon::start(config, Arc::new(clock)).await?;
        daemon.run_until(stop_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on the first SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("stop signal received; leaving the cluster");
}
