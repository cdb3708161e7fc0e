//! The README as a newcomer types it: `chorus dev`, and the moment it prints
//! `ready`, every command of the README's "Try it" section in order, with no
//! pause between them. The commands are read from README.md itself, so the
//! README cannot drift from what works.
//!
//! Each command runs once and must succeed (exit 0), except where its
//! README comment says what it prints: then the output must match. Reads of
//! an eventual value on a node other than the one written are the one place
//! a newcomer could see the replication delay (milliseconds): those poll,
//! bounded; namespace creations and strong commands never do.

mod common;

use common::{BIN, CONVERGE, eventually};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

/// Ports of this test's dev cluster (node i: API BASE + i - 1, QUIC BASE + 100 + i).
const BASE_PORT: u16 = 17501;

/// The shell lines of the README's "Try it" code blocks, comments split off.
fn readme_commands() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).expect("README.md");
    let section = readme.split("## Try it").nth(1).expect("a Try it section");
    let section = section.split("\n## ").next().unwrap_or_default();
    let mut out = Vec::new();
    let mut in_code = false;
    for line in section.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code || line.trim().is_empty() {
            continue;
        }
        let (cmd, comment) = match line.find(" #") {
            Some(i) => (line[..i].trim(), line[i + 2..].trim()),
            None => (line.trim(), ""),
        };
        out.push((cmd.to_string(), comment.to_string()));
    }
    out
}

/// The README's ports (710i) moved to this test's.
fn localize(cmd: &str) -> String {
    let mut s = cmd.to_string();
    for i in 1..=3u16 {
        s = s.replace(&format!("127.0.0.1:710{i}"), &format!("127.0.0.1:{}", BASE_PORT + i - 1));
    }
    s
}

struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: plain kill(2) on our own, not yet reaped child.
            unsafe {
                libc::kill(self.0.id() as i32, libc::SIGTERM);
            }
            let _ = self.0.wait();
        }
    }
}

/// Run one README line through `sh`, with `chorus` resolving to this build.
fn sh(line: &str, bin_dir: &std::path::Path, env: &[(&str, String)]) -> Output {
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    Command::new("sh")
        .arg("-c")
        .arg(line)
        .env("PATH", path)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .output()
        .expect("sh runs")
}

#[test]
fn the_readme_commands_work_in_order_the_moment_chorus_dev_is_ready() {
    let commands = readme_commands();
    assert!(commands.len() >= 15, "the README's Try it section lost its commands: {commands:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["dev", "--nodes", "3", "--base-port", &BASE_PORT.to_string(), "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _dev = Dev(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines.next().expect("chorus dev printed `ready`").expect("utf-8");
        seen.push(line.clone());
        if line == "ready" {
            break;
        }
        assert!(seen.len() < 100, "{seen:?}");
    }
    let bin_dir = std::path::Path::new(BIN).parent().expect("bin dir").to_path_buf();
    let node1 = format!("http://127.0.0.1:{BASE_PORT}");
    let env = [("CHORUS_NODE", node1.clone())];
    // `L=$(chorus lease grant …)` and `$L` span two lines: run the README's
    // lines in one shell state by carrying the variables they assign.
    let mut vars: Vec<(String, String)> = Vec::new();
    for (raw, comment) in &commands {
        let line = localize(raw);
        let prefix: String = vars.iter().map(|(k, v)| format!("{k}={v}; ")).collect();
        if let Some((var, rhs)) = line.split_once("=$(").filter(|(v, _)| v.chars().all(|c| c.is_ascii_uppercase())) {
            let inner = rhs.trim_end_matches(')');
            let out = sh(&format!("{prefix}{inner}"), &bin_dir, &env);
            assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
            vars.push((var.to_string(), String::from_utf8_lossy(&out.stdout).trim().to_string()));
            continue;
        }
        let full = format!("{prefix}{line}");
        eprintln!("README$ {line}");
        // What the comment says it prints, when it says so exactly.
        let expect: Option<String> =
            if let Some(q) = comment.split('"').nth(1).filter(|_| comment.contains("prints \"")) {
                Some(q.to_string())
            } else if comment.chars().next().is_some_and(|c| c.is_ascii_digit()) || comment == "red" {
                Some(comment.split([',', ' ']).next().unwrap_or_default().to_string())
            } else {
                None
            };
        let reads_elsewhere = line.starts_with("chorus get");
        let out = if reads_elsewhere && expect.is_some() {
            let want = expect.clone().unwrap_or_default();
            eventually(&format!("`{line}` to print {want:?}"), CONVERGE, || {
                let out = sh(&full, &bin_dir, &env);
                (String::from_utf8_lossy(&out.stdout).trim() == want).then_some(out)
            })
        } else {
            sh(&full, &bin_dir, &env)
        };
        assert!(
            out.status.success(),
            "`{line}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout);
        if let Some(want) = &expect {
            assert_eq!(printed.trim(), want, "`{line}`");
        }
        if line.starts_with("chorus lock") {
            assert!(printed.trim().parse::<u64>().is_ok(), "a fencing token: {printed}");
        }
        if line.starts_with("curl") {
            assert!(printed.contains("\"status\":\"ok\""), "{printed}");
        }
        if line.starts_with("chorus watch") {
            assert!(printed.lines().count() >= 2, "the put and the cas as events: {printed}");
        }
    }
}
