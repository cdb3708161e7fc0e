#!/usr/bin/env bash
# By-hand reproduction of the honest large turn (issue 13, defect 1;
# docs/design/replication.md "The driver contract"): a node of an N-node
# loopback cluster (default 20) is stopped with SIGSTOP while the others
# take WRITES eventual writes (default 40,000), then continued. Each peer
# then repairs it with a sync push of up to 4,096 entries, and the pushes
# drained in one turn may hold more operations than one store batch allows
# (65,536). A build that concatenates a turn's persists into one batch exits
# and exits again at every restart; a build that splits them stays up and
# catches up. Prints whether the node stayed up, how long it took to hold
# every key, and the largest persist turn it logged. Not run in CI.
#
# With --value-bytes near the 1 MiB maximum the bound crossed is the 64 MiB
# of one batch instead.
#
#   scripts/soak-large-turn.sh [--bin PATH] [--nodes N] [--writes W] [--value-bytes B] [--dir DIR]
#
# Needs a release build (`cargo build --release -p chorus`), curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/chorus
nodes=20
writes=40000
value_bytes=100
dir=
base_port=17801
while (($#)); do
    case $1 in
        --bin) bin=$2; shift 2 ;;
        --nodes) nodes=$2; shift 2 ;;
        --writes) writes=$2; shift 2 ;;
        --value-bytes) value_bytes=$2; shift 2 ;;
        --dir) dir=$2; shift 2 ;;
        *) echo "soak-large-turn.sh: unknown argument $1 (known: --bin, --nodes, --writes, --value-bytes, --dir)" >&2; exit 2 ;;
    esac
done
bin=$(realpath "$bin")
if [[ -z $dir ]]; then dir=$(mktemp -d /tmp/chorus-soak-turn.XXXXXX); fi
mkdir -p "$dir"
"$bin" dev --nodes "$nodes" --dir "$dir" --base-port "$base_port" >"$dir/dev.log" 2>&1 &
dev=$!
trap 'kill -TERM $dev 2>/dev/null || true; wait $dev 2>/dev/null || true' EXIT
for _ in $(seq 1200); do grep -q '^ready' "$dir/dev.log" && break; sleep 0.1; done
grep -q '^ready' "$dir/dev.log" || { echo "chorus dev did not get ready: $dir/dev.log" >&2; exit 1; }
api() { echo "http://127.0.0.1:$((base_port + $1 - 1))"; }
curl -sf -X POST "$(api 1)/v1/ns" -H 'content-type: application/json' -d '{"name":"bulk"}' >/dev/null
sleep 2
victim=$(pgrep -f -- "$dir/node$nodes/chorus.toml")
kill -STOP "$victim"
echo "node$nodes (pid $victim) stopped; writing $writes keys of $value_bytes bytes through node1..node$((nodes - 1))"
start=$(date +%s)
python3 - "$base_port" "$((nodes - 1))" "$writes" "$value_bytes" <<'EOF'
import http.client, json, sys, threading
base, peers, writes, value_bytes = (int(a) for a in sys.argv[1:5])
failed = []
def worker(t, threads=16):
    conns = {}
    for k in range(t, writes, threads):
        node = k % peers
        c = conns.get(node) or http.client.HTTPConnection("127.0.0.1", base + node, timeout=30)
        conns[node] = c
        body = json.dumps({"value": "v" * value_bytes})
        try:
            c.request("PUT", f"/v1/ns/bulk/kv/key{k:07}", body, {"content-type": "application/json"})
            r = c.getresponse(); r.read()
            if r.status != 200:
                failed.append(r.status)
        except Exception as e:
            failed.append(str(e)); conns.pop(node, None)
threads = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
for t in threads: t.start()
for t in threads: t.join()
print(f"writes done, {len(failed)} failed {failed[:3]}")
EOF
echo "writes took $(( $(date +%s) - start )) s; continuing node$nodes"
resumed=$(date +%s)
kill -CONT "$victim"
for _ in $(seq 600); do
    if ! kill -0 "$victim" 2>/dev/null; then
        echo "node$nodes EXITED $(( $(date +%s) - resumed )) s after SIGCONT; last log lines:"
        tail -n 5 "$dir/node$nodes/agent.log"
        exit 1
    fi
    keys=$(curl -s "$(api "$nodes")/v1/ns/bulk" | python3 -c "import json,sys; print(json.load(sys.stdin)['keys'])" \
        2>/dev/null || echo 0)
    if (( keys >= writes )); then
        echo "node$nodes stayed up and holds all $keys keys $(( $(date +%s) - resumed )) s after SIGCONT"
        echo "persist turns split at the store's bounds: $(grep -c 'persist turn of' "$dir/node$nodes/agent.log" || true); the largest:"
        grep -o 'persist turn of [0-9]* ops' "$dir/node$nodes/agent.log" | sort -k4 -n | tail -n 1 || true
        exit 0
    fi
    sleep 1
done
echo "node$nodes is up but holds $keys of $writes keys after 600 s" >&2
exit 1
