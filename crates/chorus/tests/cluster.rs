//! Real `chorus agent` processes over real sockets (layer 4 of
//! `docs/ARCHITECTURE.md`, "Testing layers"): replication, convergence, crash
//! durability, membership and mutual TLS.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

#[test]
fn a_write_on_any_node_becomes_readable_on_all_five_nodes() {
    let c = Cluster::start(31, 5, "");
    for (i, a) in c.agents.iter().enumerate() {
        a.put(&c.http, "default", &format!("from-{i}"), &format!("value-{i}"));
    }
    for reader in &c.agents {
        for i in 0..c.agents.len() {
            let key = format!("from-{i}");
            let v =
                eventually(&format!("{key} on {}", reader.name), CONVERGE, || reader.read(&c.http, "default", &key));
            assert_eq!(v["value"], format!("value-{i}"), "{} read {v}", reader.name);
        }
    }
}

#[test]
fn concurrent_writes_converge_to_one_lww_value_the_same_mv_siblings_and_the_counter_sum() {
    let c = Cluster::start(32, 3, "");
    let n0 = &c.agents[0];
    for (name, ty) in [("siblings", "mv"), ("hits", "counter")] {
        let body = json!({ "name": name, "mode": "eventual", "type": ty }).to_string();
        let (status, v) = c.http.req("POST", &n0.url("/v1/ns"), Some(&body)).unwrap();
        assert_eq!(status, 201, "{v}");
    }
    for a in &c.agents {
        for ns in ["siblings", "hits"] {
            eventually(&format!("namespace {ns} on {}", a.name), CONVERGE, || {
                c.http.get(&a.url(&format!("/v1/ns/{ns}"))).filter(|(s, _)| *s == 200)
            });
        }
    }
    const INCREMENTS: i64 = 20;
    std::thread::scope(|s| {
        for (i, a) in c.agents.iter().enumerate() {
            let http = &c.http;
            s.spawn(move || {
                a.put(http, "default", "contended", &format!("from-{i}"));
                a.put(http, "siblings", "contended", &format!("from-{i}"));
                for _ in 0..INCREMENTS {
                    let (status, v) = http
                        .req("POST", &a.url("/v1/ns/hits/counter/total"), Some(&json!({ "amount": i + 1 }).to_string()))
                        .unwrap();
                    assert_eq!(status, 200, "{v}");
                }
            });
        }
    });
    let expected_sum = INCREMENTS * (1 + 2 + 3);
    let lww: Vec<Value> = c
        .agents
        .iter()
        .map(|a| {
            eventually("counter sum", CONVERGE, || {
                a.read(&c.http, "hits", "total").filter(|v| v["value"] == expected_sum)
            });
            eventually("three mv siblings", CONVERGE, || {
                a.read(&c.http, "siblings", "contended")
                    .filter(|v| v["values"].as_array().is_some_and(|s| s.len() == 3))
            })
        })
        .collect();
    let all: BTreeSet<String> = (0..3).map(|i| format!("from-{i}")).collect();
    for v in &lww {
        let siblings: BTreeSet<String> =
            v["values"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
        assert_eq!(siblings, all, "mv siblings differ: {v}");
    }
    let winner = eventually("one lww value everywhere", CONVERGE, || {
        let values: Vec<Value> = c
            .agents
            .iter()
            .filter_map(|a| a.read(&c.http, "default", "contended").map(|v| v["value"].clone()))
            .collect();
        (values.len() == 3 && values.iter().all(|v| *v == values[0])).then(|| values[0].clone())
    });
    assert!(all.contains(winner.as_str().unwrap()), "winner {winner} was never written");
}

#[test]
fn a_node_killed_during_acknowledged_writes_keeps_them_is_reported_down_and_rejoins_as_the_same_member() {
    let mut c = Cluster::start(33, 3, "");
    let generation_before = c.agents[0]
        .members(&c.http)
        .into_iter()
        .find(|m| m["name"] == "node3")
        .and_then(|m| m["generation"].as_u64())
        .expect("node3 known");

    // Stream writes at node3 and kill it with SIGKILL in the middle.
    let acked: Vec<String> = std::thread::scope(|s| {
        let victim = &c.agents[2];
        let http = Http::new();
        let writer = s.spawn(move || {
            let mut acked = Vec::new();
            for j in 0..100_000 {
                let key = format!("ack-{j}");
                let body = json!({ "value": format!("v{j}") }).to_string();
                match http.req("PUT", &victim.url(&format!("/v1/ns/default/kv/{key}")), Some(&body)) {
                    Some((200, _)) => acked.push(key),
                    _ => break,
                }
            }
            acked
        });
        // Kill once a few hundred writes were acknowledged.
        eventually("writes to be acknowledged", CONVERGE, || {
            let n = c.agents[0].read(&c.http, "default", "ack-200");
            n.map(|_| ())
        });
        let child = c.agents[2].child.as_ref().unwrap();
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        writer.join().unwrap()
    });
    c.agents[2].kill9();
    assert!(acked.len() > 200, "only {} writes acknowledged", acked.len());

    // The others report it down.
    for a in &c.agents[..2] {
        eventually(&format!("{} to report node3 down", a.name), CONVERGE, || {
            a.members(&c.http).iter().any(|m| m["name"] == "node3" && m["state"] == "down").then_some(())
        });
    }
    c.agents[0].put(&c.http, "default", "missed-while-down", "yes");

    c.agents[2].start();
    c.agents[2].wait_healthy(&c.http);
    let restarted = &c.agents[2];
    let missing: Vec<&String> = acked.iter().filter(|k| restarted.read(&c.http, "default", k).is_none()).collect();
    assert!(missing.is_empty(), "{} acknowledged writes lost, e.g. {:?}", missing.len(), missing.first());
    eventually("the restarted node to catch up", CONVERGE, || {
        restarted.read(&c.http, "default", "missed-while-down").filter(|v| v["value"] == "yes")
    });
    for a in &c.agents[..2] {
        eventually(&format!("{} to see node3 alive again, once", a.name), CONVERGE, || {
            let members = a.members(&c.http);
            let node3: Vec<&Value> = members.iter().filter(|m| m["name"] == "node3").collect();
            (members.len() == 2
                && node3.len() == 1
                && node3[0]["state"] == "alive"
                && node3[0]["generation"].as_u64() > Some(generation_before))
            .then_some(())
        });
    }
}

#[test]
fn nodes_without_a_certificate_or_with_another_cas_certificate_cannot_join_or_write() {
    let mut c = Cluster::start(34, 3, "");

    // No certificate at all: the agent refuses to start and says why.
    let mut bare = c.add_node(7, &c.dir.path().join("ca"), "");
    let text = std::fs::read_to_string(&bare.config).unwrap();
    let empty_tls = c.dir.path().join("empty-tls");
    std::fs::create_dir_all(&empty_tls).unwrap();
    let text =
        text.replace(&c.dir.path().join("ca").join("node7").display().to_string(), &empty_tls.display().to_string());
    std::fs::write(&bare.config, text).unwrap();
    bare.start();
    let status =
        eventually("the certificate-less agent to exit", CONVERGE, || bare.child.as_mut().unwrap().try_wait().unwrap());
    assert!(!status.success());
    let log = std::fs::read_to_string(&bare.log).unwrap();
    assert!(log.contains("node.pem"), "the error names the missing file: {log}");

    // A rogue node with a certificate from another CA, and (as a control) a
    // legitimate fourth node, both seeded to node1.
    let rogue_ca = c.dir.path().join("rogue-ca");
    let out = chorus(&["ca", "init", "--dir", rogue_ca.to_str().unwrap(), "--cluster", "test"]);
    assert!(out.status.success());
    let mut rogue = c.add_node(8, &rogue_ca, "");
    let mut legit = c.add_node(4, &c.dir.path().join("ca"), "");
    rogue.start();
    legit.start();
    rogue.wait_healthy(&c.http);
    legit.wait_healthy(&c.http);
    rogue.put(&c.http, "default", "forged", "from-rogue");
    legit.put(&c.http, "default", "genuine", "from-legit");

    let n1 = &c.agents[0];
    eventually("the legitimate node's write on node1", CONVERGE, || n1.read(&c.http, "default", "genuine"));
    eventually("the legitimate node alive on node1", CONVERGE, || {
        n1.members(&c.http).iter().any(|m| m["name"] == "node4" && m["state"] == "alive").then_some(())
    });
    // By now the rogue has had as long as the control node to join and
    // spread its write; it must have done neither, on any node.
    for a in c.agents.iter().chain([&legit]) {
        assert!(a.read(&c.http, "default", "forged").is_none(), "{} accepted the rogue's write", a.name);
        assert!(!a.members(&c.http).iter().any(|m| m["name"] == "node8"), "{} lists the rogue", a.name);
    }
    assert!(rogue.members(&c.http).is_empty(), "the rogue sees members: {:?}", rogue.members(&c.http));
    c.agents.push(legit);
    drop(rogue);
}

#[test]
fn every_node_lists_the_api_address_of_itself_and_every_member_even_one_bound_to_port_0() {
    let mut c = Cluster::prepare(36, 3, "");
    // node3 asks for any free port: only membership can tell where it is.
    let port_0 = std::fs::read_to_string(&c.agents[2].config)
        .unwrap()
        .replace(&format!("api_addr = \"{}:{API_PORT}\"", c.ip(3)), &format!("api_addr = \"{}:0\"", c.ip(3)));
    assert!(port_0.contains(":0\""), "{port_0}");
    std::fs::write(&c.agents[2].config, port_0).unwrap();
    for a in &mut c.agents {
        a.start();
    }
    c.agents[0].wait_healthy(&c.http);
    c.agents[1].wait_healthy(&c.http);
    let node3_api = eventually("node1 to learn node3's API address", CONVERGE, || {
        let members = c.agents[0].members(&c.http);
        let node3 = members.iter().find(|m| m["name"] == "node3" && m["state"] == "alive")?;
        node3["api_addr"].as_str().map(str::to_string)
    });
    let (ip, port) = node3_api.rsplit_once(':').unwrap();
    assert_eq!(ip, c.ip(3), "{node3_api}");
    assert_ne!(port, "0", "node3 advertised the configured port 0, not the bound one");
    c.agents[2].api = format!("http://{node3_api}");
    c.agents[2].wait_healthy(&c.http);
    c.wait_all_alive();
    let (_, status) = c.http.get(&c.agents[2].url("/v1/status")).expect("node3 answers where node1 said");
    assert_eq!(status["api_addr"], node3_api, "{status}");

    let expected = |name: &str| match name {
        "node3" => node3_api.clone(),
        n => format!("{}:{API_PORT}", c.ip(n.trim_start_matches("node").parse().unwrap())),
    };
    for a in &c.agents {
        let (status, v) = c.http.get(&a.url("/v1/members")).unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["self"]["name"], a.name.as_str(), "{v}");
        assert_eq!(v["self"]["api_addr"], expected(&a.name), "{} about itself: {v}", a.name);
        let members = v["members"].as_array().unwrap();
        assert_eq!(members.len(), 2, "{v}");
        for m in members {
            let name = m["name"].as_str().unwrap();
            assert_eq!(m["api_addr"], expected(name), "{} about {name}: {v}", a.name);
            // The advertised address really serves that member's API.
            let (_, other) = c.http.get(&format!("http://{}/v1/status", m["api_addr"].as_str().unwrap())).unwrap();
            assert_eq!(other["name"], name, "{other}");
        }
    }
}

#[test]
fn bad_requests_get_json_errors_that_name_the_problem_and_the_node_keeps_serving() {
    let c = Cluster::start(35, 1, "max_value_bytes = 1024");
    let a = &c.agents[0];
    let cases: Vec<(&str, String, Option<String>, u16, &str)> = vec![
        ("PUT", a.url("/v1/ns/default/kv/k"), Some("{not json".into()), 400, "bad_json"),
        ("PUT", a.url("/v1/ns/default/kv/k"), Some(r#"{"value":"v","colour":1}"#.into()), 400, "bad_json"),
        ("PUT", a.url("/v1/ns/default/kv/k"), Some(r#"{}"#.into()), 400, "bad_request"),
        ("PUT", a.url("/v1/ns/default/kv/k"), Some(r#"{"value":"v","context":"!!"}"#.into()), 400, "bad_context"),
        (
            "PUT",
            a.url("/v1/ns/default/kv/k"),
            Some(json!({"value": "x".repeat(2000)}).to_string()),
            413,
            "value_too_large",
        ),
        (
            "PUT",
            a.url(&format!("/v1/ns/default/kv/{}", "k".repeat(5000))),
            Some(r#"{"value":"v"}"#.into()),
            400,
            "key_too_large",
        ),
        ("PUT", a.url("/v1/ns/nope/kv/k"), Some(r#"{"value":"v"}"#.into()), 404, "no_such_namespace"),
        ("POST", a.url("/v1/ns/default/counter/k"), Some(r#"{"amount":1}"#.into()), 400, "wrong_type"),
        (
            "POST",
            a.url("/v1/ns"),
            Some(r#"{"name":"s","mode":"strong","type":"lww"}"#.into()),
            501,
            "strong_unavailable",
        ),
        ("POST", a.url("/v1/ns"), Some(r#"{"name":"s","mode":"eventual","type":"blob"}"#.into()), 400, "bad_type"),
        ("POST", a.url("/v1/ns"), Some(r#"{"name":"bad name!","type":"lww"}"#.into()), 400, "bad_namespace_name"),
        ("POST", a.url("/v1/ns"), Some(r#"{"name":"default","type":"mv"}"#.into()), 409, "type_conflict"),
        ("GET", a.url("/v1/ns/default/kv/absent"), None, 404, "not_found"),
        ("GET", a.url("/v1/ns/default/scan?limit=0"), None, 400, "bad_limit"),
        ("GET", a.url("/v2/whatever"), None, 404, "no_such_route"),
    ];
    for (method, url, body, status, code) in cases {
        let (got, v) = c.http.req(method, &url, body.as_deref()).expect("node answers");
        assert_eq!((got, v["error"].as_str()), (status, Some(code)), "{method} {url}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    let (_, health) = c.http.get(&a.url("/health")).unwrap();
    assert_eq!(health["status"], "ok");
    // A good write with a context token read back from the node still works.
    let w = a.put(&c.http, "default", "k", "v1");
    let body = json!({ "value": "v2", "context": w["context"] }).to_string();
    let (status, v) = c.http.req("PUT", &a.url("/v1/ns/default/kv/k"), Some(&body)).unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(a.read(&c.http, "default", "k").unwrap()["value"], "v2");
    let (status, metrics) = c.http.get(&a.url("/metrics")).unwrap();
    assert_eq!(status, 200);
    assert!(metrics.as_str().is_some_and(|m| m.contains("chorus_writes_total")), "{metrics}");
}

#[test]
fn chorus_dev_starts_a_cluster_that_the_cli_can_put_to_and_get_from() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut dev = std::process::Command::new(BIN)
        .args(["dev", "--nodes", "3", "--base-port", "17301", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                // SIGTERM lets `chorus dev` stop its agents.
                // SAFETY: plain kill(2) on our own, not yet reaped child.
                unsafe {
                    libc::kill(self.0.id() as i32, libc::SIGTERM);
                }
                let _ = self.0.wait();
            }
        }
    }
    let stdout = dev.stdout.take().unwrap();
    let mut dev = KillOnDrop(dev);
    let mut urls = Vec::new();
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://"))
            && line.starts_with("node")
        {
            urls.push(url.to_string());
        }
        lines.push(line.clone());
        if line == "ready" {
            break;
        }
    }
    assert_eq!(lines.last().map(String::as_str), Some("ready"), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("Ctrl-C")), "{lines:?}");
    assert_eq!(urls, ["http://127.0.0.1:17301", "http://127.0.0.1:17302", "http://127.0.0.1:17303"]);
    // `ready` means at once, with no retry: every node sees the others
    // alive and names the same Raft leader.
    let http = Http::new();
    let mut leaders = BTreeSet::new();
    for url in &urls {
        let (_, members) = http.get(&format!("{url}/v1/members")).unwrap();
        let alive = members["members"].as_array().unwrap().iter().filter(|m| m["state"] == "alive").count();
        assert_eq!(alive, 2, "{url}: {members}");
        let (status, raft) = http.get(&format!("{url}/v1/raft")).unwrap();
        assert_eq!(status, 200, "{raft}");
        leaders.insert(raft["leader"].as_str().unwrap_or_else(|| panic!("{url} knows no leader: {raft}")).to_string());
    }
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    let out = chorus(&["ns", "create", "locks", "--mode", "strong", "--node", &urls[1]]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = chorus(&["put", "greeting", "hello world", "--node", &urls[0]]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = eventually("the value on node3 through the CLI", CONVERGE, || {
        let out = chorus(&["get", "greeting", "--node", &urls[2]]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(got, "hello world\n");
    let out = chorus(&["get", "absent", "--node", &urls[1]]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));

    // SIGTERM stops every agent.
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(dev.0.id() as i32, libc::SIGTERM);
    }
    let status = dev.0.wait().unwrap();
    assert!(status.success(), "{status}");
    eventually("every agent to stop", Duration::from_secs(10), || {
        urls.iter().all(|u| http.get(&format!("{u}/health")).is_none()).then_some(())
    });
}

/// Run `chorus watch` until it has printed `n` lines or `deadline` passed;
/// returns the lines (the child is killed then).
fn watch_lines(args: &[&str], n: usize, deadline: Duration) -> Vec<Value> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(BIN)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chorus watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let end = std::time::Instant::now() + deadline;
    let mut out = Vec::new();
    while out.len() < n {
        match rx.recv_timeout(end.saturating_duration_since(std::time::Instant::now())) {
            Ok(line) => out.push(serde_json::from_str(&line).unwrap_or(Value::String(line))),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    out
}

#[test]
fn chorus_watch_prints_the_writes_of_other_nodes_and_resumes_from_a_token_on_a_third_node() {
    let c = Cluster::start(38, 3, "");
    // Start from a snapshot's position, so no write can slip in before the stream opens.
    let (status, body) = {
        let url = c.agents[1].url("/v1/ns/default/snapshot?prefix=w%2F");
        let text = ureq::get(&url).call().expect("snapshot").body_mut().read_to_string().expect("body");
        (200, text)
    };
    assert_eq!(status, 200);
    let end: Value = serde_json::from_str(body.lines().last().expect("an end line")).expect("json");
    assert_eq!(end["type"], "end", "{body}");
    let start = end["token"].as_str().expect("token").to_string();
    for i in 0..10 {
        let writer = &c.agents[if i % 2 == 0 { 0 } else { 2 }];
        writer.put(&c.http, "default", &format!("w/{i}"), &format!("v{i}"));
    }
    let node2 = c.agents[1].api.clone();
    let events = watch_lines(&["watch", "w/", "--node", &node2, "--resume", &start], 10, CONVERGE);
    let keys: BTreeSet<String> = events.iter().filter_map(|e| e["key"].as_str().map(str::to_string)).collect();
    let want: BTreeSet<String> = (0..10).map(|i| format!("w/{i}")).collect();
    assert_eq!(keys, want, "node 2's stream: {events:?}");
    assert!(events.iter().all(|e| e["type"] == "put" && e["dots"].is_array()), "{events:?}");
    // Resume on node 3 after the fifth event: exactly the other five keys.
    let token = events[4]["token"].as_str().expect("token").to_string();
    let seen_first: BTreeSet<String> =
        events[..5].iter().map(|e| e["key"].as_str().unwrap_or("").to_string()).collect();
    let node3 = c.agents[2].api.clone();
    let rest = watch_lines(&["watch", "w/", "--node", &node3, "--resume", &token], 5, CONVERGE);
    let rest_keys: BTreeSet<String> = rest.iter().filter_map(|e| e["key"].as_str().map(str::to_string)).collect();
    let expected: BTreeSet<String> = want.difference(&seen_first).cloned().collect();
    assert_eq!(rest_keys, expected, "node 3 resumed with {rest:?}");
    // Nothing more follows: a sixth line would be a duplicate.
    let more = watch_lines(&["watch", "w/", "--node", &node3, "--resume", &token, "--timeout-ms", "1500"], 6, CONVERGE);
    assert_eq!(more.len(), 5, "{more:?}");
}
