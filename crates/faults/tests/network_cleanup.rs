//! The harness leaves no namespace or link behind, even when a run panics.

mod common;

use chorus_faults::net::{self, Net};
use std::process::Command;

fn namespaces() -> String {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[test]
fn a_panicking_run_still_deletes_every_namespace_it_made() {
    let tag = format!("{:05x}", std::process::id() & 0xf_ffff);
    let made = match Net::namespaces(2, &tag) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("namespaces not available ({e}); checking the loopback fallback only");
            let n = Net::loopback(2, 150, e.to_string());
            assert_eq!(n.node_ip(1).to_string(), "127.0.150.2");
            return;
        }
    };
    let prefix = format!("{}{tag}-", net::PREFIX);
    assert_eq!(namespaces().lines().filter(|l| l.starts_with(&prefix)).count(), 3, "{}", namespaces());
    assert!(made.node_ip(0).to_string().starts_with("10."));
    let result = std::panic::catch_unwind(move || {
        let _owned = made;
        panic!("a run fails half-way");
    });
    assert!(result.is_err());
    assert_eq!(namespaces().lines().filter(|l| l.starts_with(&prefix)).count(), 0, "{}", namespaces());
    // Nothing of ours stays in the harness's own namespace either.
    let links = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(!links.contains(&format!("{}{tag}", net::PREFIX)), "{links}");
}

#[test]
fn stale_namespaces_of_dead_runs_are_removed_and_live_ones_kept() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(!common::namespaces_required(), "not root, and CI is set: this test must run as root");
        eprintln!("stale_namespaces_of_dead_runs_are_removed_and_live_ones_kept: SKIPPED the namespace part: not root");
        assert_eq!(net::cleanup_stale(), 0);
        return;
    }
    // pid 2^22 + 7 is above the default pid_max (2^22), so never alive.
    let dead = format!("{}stale-p4194311-n0", net::PREFIX);
    let live = format!("{}live-p{}-n0", net::PREFIX, std::process::id());
    for n in [&dead, &live] {
        let ok = Command::new("ip").args(["netns", "add", n]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "ip netns add {n}");
    }
    net::cleanup_stale();
    let list = namespaces();
    let _ = Command::new("ip").args(["netns", "del", &live]).status();
    assert!(!list.contains(&dead), "{list}");
    assert!(list.contains(&live), "{list}");
}
