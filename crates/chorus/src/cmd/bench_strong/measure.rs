//! The measurement of `chorus bench strong`: closed-loop load runs with
//! their latency percentiles, leader-kill failover trials, and the medians
//! over rounds and trials that the report shows. Clusters come from the
//! harness (`cluster`) through [`Cluster`]; the method is in
//! `docs/design/strong.md`, section "`chorus bench strong --vs-etcd
//! --rounds 3`".

use super::cluster::Cluster;
use super::{
    FAILOVER_DEADLINE, FAILOVER_EVENTS_MAX, FAILOVER_RETRY_PAUSE, FAILOVER_WARM_WRITES, MEMBERS, NAMESPACE,
    READY_DEADLINE, REQUEST_TIMEOUT, System, VALUE_BYTES, Writer, base64,
};
use crate::cmd::load::Request;
use anyhow::{Result, anyhow};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// One load run of one system.
#[derive(Clone, Debug)]
pub(super) struct Run {
    writes: u64,
    pub(super) errors: u64,
    seconds: f64,
    /// Sorted ascending.
    latency_ms: Vec<f64>,
}

impl Run {
    pub(super) fn writes_per_s(&self) -> f64 {
        self.writes as f64 / self.seconds
    }

    pub(super) fn p50(&self) -> f64 {
        percentile(&self.latency_ms, 0.5)
    }

    pub(super) fn p99(&self) -> f64 {
        percentile(&self.latency_ms, 0.99)
    }
}

/// Nearest-rank percentile of an ascending slice (NaN when empty).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `clients` closed-loop clients (the shared load generator,
/// [`crate::cmd::load`]) write back to back for `duration`, client i
/// through member i mod 3, with the same bodies as [`Writer`]. The clock
/// starts when every client is connected.
fn load(system: System, urls: &[String], clients: usize, duration: Duration) -> Result<Run> {
    let raw = "x".repeat(VALUE_BYTES);
    let request = move |c: usize, n: u64| {
        let key = format!("c{c}-{n}");
        match system {
            System::Chorus => Request {
                method: hyper::Method::PUT,
                path: format!("/v1/ns/{NAMESPACE}/kv/{key}"),
                body: Bytes::from(format!("{{\"value\":\"{raw}\"}}")),
            },
            System::Etcd => Request {
                method: hyper::Method::POST,
                path: "/v3/kv/put".into(),
                body: Bytes::from(format!(
                    "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                    base64(key.as_bytes()),
                    base64(raw.as_bytes())
                )),
            },
        }
    };
    let outcome = crate::cmd::load::drive(urls, clients, duration, REQUEST_TIMEOUT, |c| c, request)?;
    let mut latency_ms = outcome.latency_ms;
    latency_ms.sort_by(f64::total_cmp);
    Ok(Run { writes: outcome.ok, errors: outcome.errors, seconds: outcome.seconds, latency_ms })
}

/// One write of the failover client, as the measuring thread sees it.
struct Attempt {
    issued: Instant,
    answered: Instant,
    done: bool,
}

/// One leader-kill trial.
struct Trial {
    /// From the kill until a write issued after it was answered 200 (None:
    /// not within [`FAILOVER_DEADLINE`]).
    ms: Option<f64>,
    /// Writes that failed (error or timeout) after the kill, before that.
    failed: u64,
    /// The longest of those, issue → failure.
    longest_failed_ms: f64,
}

/// Kill the leader while a client writes through a follower.
fn failover(system: System, cluster: &mut dyn Cluster, timeout: Duration) -> Result<Trial> {
    let leader = cluster.leader()?;
    let follower = (leader + 1) % cluster.urls().len();
    let url = cluster.urls()[follower].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::sync_channel::<Attempt>(FAILOVER_EVENTS_MAX);
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let writer = Writer::new(system, &url, timeout);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let done = writer.write(&format!("failover-{n}"));
                n += 1;
                if tx.send(Attempt { issued: t0, answered: Instant::now(), done }).is_err() {
                    break;
                }
                if !done {
                    std::thread::sleep(FAILOVER_RETRY_PAUSE);
                }
            }
        })
    };
    let measured = (|| {
        let mut warm = 0;
        let warm_deadline = Instant::now() + READY_DEADLINE;
        while warm < FAILOVER_WARM_WRITES {
            let left = warm_deadline.saturating_duration_since(Instant::now());
            let attempt = rx
                .recv_timeout(left)
                .map_err(|_| anyhow!("{}: no write through a follower before the kill", system.name()))?;
            warm += usize::from(attempt.done);
        }
        let killed_at = Instant::now();
        cluster.kill(leader)?;
        let deadline = killed_at + FAILOVER_DEADLINE;
        let mut trial = Trial { ms: None, failed: 0, longest_failed_ms: 0.0 };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(attempt) = rx.recv_timeout(left) else { return Ok(trial) };
            if attempt.answered < killed_at {
                continue;
            }
            if attempt.done && attempt.issued >= killed_at {
                trial.ms = Some((attempt.answered - killed_at).as_secs_f64() * 1e3);
                return Ok(trial);
            }
            if !attempt.done {
                trial.failed += 1;
                let ms = (attempt.answered - attempt.issued).as_secs_f64() * 1e3;
                trial.longest_failed_ms = trial.longest_failed_ms.max(ms);
            }
        }
    })();
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    writer.join().map_err(|_| anyhow!("the failover writer panicked"))?;
    measured
}

/// Everything measured for one system.
pub(super) struct Measured {
    /// Per client count, one run per round.
    pub(super) runs: Vec<Vec<Run>>,
    /// One per trial; None: no write succeeded within the deadline.
    pub(super) failover_ms: Vec<Option<f64>>,
    /// Set when the system could not be measured (the rest is skipped).
    pub(super) failed: bool,
}

impl Measured {
    /// The median trial, a failed trial counting as slower than any other
    /// (so a majority of failed trials makes the median None).
    pub(super) fn failover_median(&self) -> Option<f64> {
        let mut sorted = self.failover_ms.clone();
        sorted.sort_by(|a, b| match (a, b) {
            (Some(a), Some(b)) => a.total_cmp(b),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
        sorted.get(sorted.len() / 2).copied().flatten()
    }
}

/// One throughput run on a fresh cluster of `system`.
pub(super) fn throughput(
    system: System,
    clients: usize,
    seconds: u64,
    start: &dyn Fn() -> Result<Box<dyn Cluster>>,
) -> Result<Run> {
    eprintln!("{}: starting {MEMBERS} members", system.name());
    let cluster = start()?;
    eprintln!("{}: leader is member {}; {clients} clients for {seconds} s", system.name(), cluster.leader()? + 1);
    load(system, cluster.urls(), clients, Duration::from_secs(seconds))
}

/// Leader-kill trials on one system, each on a fresh cluster.
pub(super) fn failover_trials(
    system: System,
    failover_runs: usize,
    failover_timeout: Duration,
    start: &dyn Fn() -> Result<Box<dyn Cluster>>,
) -> Result<Vec<Option<f64>>> {
    let mut failover_ms = Vec::new();
    for trial in 0..failover_runs {
        let mut cluster = start()?;
        let t = failover(system, cluster.as_mut(), failover_timeout)?;
        eprintln!(
            "{}: failover trial {}: {} ({} failed writes meanwhile, longest {:.0} ms)",
            system.name(),
            trial + 1,
            t.ms.map_or(format!("no write within {FAILOVER_DEADLINE:?}"), |ms| format!("{ms:.0} ms")),
            t.failed,
            t.longest_failed_ms
        );
        failover_ms.push(t.ms);
    }
    Ok(failover_ms)
}

/// The run of median throughput among rounds (None when there is none).
pub(super) fn median_run(rounds: &[Run]) -> Option<&Run> {
    let mut sorted: Vec<&Run> = rounds.iter().collect();
    sorted.sort_by(|a, b| a.writes_per_s().total_cmp(&b.writes_per_s()));
    sorted.get(sorted.len() / 2).copied()
}

/// The median of the per-round ratios chorus/etcd of writes/s (rounds
/// where both systems ran, each pair measured back to back).
pub(super) fn median_ratio(chorus: &[Run], etcd: &[Run]) -> Option<f64> {
    let mut ratios: Vec<f64> = chorus
        .iter()
        .zip(etcd)
        .filter(|(_, e)| e.writes_per_s() > 0.0)
        .map(|(c, e)| c.writes_per_s() / e.writes_per_s())
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios.get(ratios.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_of_failed_failover_trials_makes_the_median_null() {
        let m = |failover_ms| Measured { runs: Vec::new(), failover_ms, failed: false };
        assert_eq!(m(vec![Some(300.0), None, Some(100.0)]).failover_median(), Some(300.0));
        assert_eq!(m(vec![None, Some(100.0), None]).failover_median(), None);
        assert_eq!(m(vec![Some(5.0)]).failover_median(), Some(5.0));
    }

    #[test]
    fn the_ratio_is_the_median_of_back_to_back_pairs() {
        let run = |writes: u64| Run { writes, errors: 0, seconds: 1.0, latency_ms: Vec::new() };
        let chorus = [run(200), run(90), run(300)];
        let etcd = [run(100), run(100), run(100)];
        assert_eq!(median_ratio(&chorus, &etcd), Some(2.0));
        assert_eq!(median_run(&chorus).map(|r| r.writes), Some(200));
        assert_eq!(median_ratio(&chorus, &[]), None);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), 51.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
