#!/usr/bin/env bash
# By-hand soak of strong snapshots far past the old 48 MiB cap (issue 13,
# docs/design/strong.md "Snapshots"): 3 voters take KEYS puts of 1,000,000-byte
# values into a strong namespace (default 220: ~210 MiB of state) with a
# snapshot every SNAPSHOT_EVERY entries and no log kept behind it; every
# voter is killed with SIGKILL and restarted from its snapshot; then node4,
# wiped, catches up by snapshot alone. Prints the sizes, times and peak RSS
# (VmHWM) of each node. Not run in CI (minutes, ~1 GiB of disk per node).
#
#   scripts/soak-strong-snapshot.sh [--bin PATH] [--keys N] [--dir DIR]
#
# Needs a release build (`cargo build --release -p chorus`), curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/chorus
keys=220
dir=
base_port=17701
snapshot_every=50
while (($#)); do
    case $1 in
        --bin) bin=$2; shift 2 ;;
        --keys) keys=$2; shift 2 ;;
        --dir) dir=$2; shift 2 ;;
        *) echo "soak-strong-snapshot.sh: unknown argument $1 (known: --bin, --keys, --dir)" >&2; exit 2 ;;
    esac
done
bin=$(realpath "$bin")
if [[ -z $dir ]]; then dir=$(mktemp -d /tmp/chorus-soak-snapshot.XXXXXX); fi
mkdir -p "$dir"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
api() { echo "http://127.0.0.1:$((base_port + $1 - 1))"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {'d': d}))" "$1"; }
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.1f}')"; }

# Certificates and configs from `chorus dev` (4 nodes: node1-3 voters, node4 a learner).
"$bin" dev --nodes 4 --dir "$dir" --base-port "$base_port" >"$dir/dev.log" 2>&1 &
dev=$!
for _ in $(seq 600); do grep -q '^ready' "$dir/dev.log" && break; sleep 0.1; done
grep -q '^ready' "$dir/dev.log" || { echo "chorus dev did not get ready: $dir/dev.log" >&2; exit 1; }
kill -TERM "$dev"; wait "$dev" || true
for i in 1 2 3 4; do
    rm -rf "$dir/node$i/data"
    cat >>"$dir/node$i/chorus.toml" <<EOF
strong_snapshot_every_entries = $snapshot_every
strong_snapshot_log_kept_entries = 0
request_timeout_ms = 30000
EOF
done
start() {
    "$bin" agent --config "$dir/node$1/chorus.toml" >>"$dir/node$1/agent.log" 2>&1 &
    pids[$1]=$!
    for _ in $(seq 600); do curl -sf "$(api "$1")/health" >/dev/null && return; sleep 0.1; done
    echo "node$1 did not answer /health: $dir/node$1/agent.log" >&2; exit 1
}
hwm() { awk '/VmHWM/ { printf "%.0f MiB", $2 / 1024 }' "/proc/${pids[$1]}/status"; }
snapshot() { curl -sf "$(api "$1")/v1/raft" | json "d['snapshot']"; }
for i in 1 2 3; do start "$i"; done
for _ in $(seq 600); do
    curl -sf "$(api 1)/v1/raft" | json "d.get('leader')" | grep -q node && break
    sleep 0.1
done
curl -sf -X POST "$(api 1)/v1/ns" -H 'content-type: application/json' -d '{"name":"big","mode":"strong"}' >/dev/null
body=$dir/value.json
python3 -c "import sys; sys.stdout.write('{\"value\":\"' + 'v' * 1000000 + '\"}')" >"$body"
t0=$(now)
retries=0
for k in $(seq -f '%05g' 1 "$keys"); do
    # A put that meets a leader election is retried (a put is idempotent
    # here: the same value under the same key), for up to 60 s.
    for attempt in $(seq 120); do
        node=$(( (10#$k + attempt) % 3 + 1 ))
        code=$(curl -s -o /dev/null -w '%{http_code}' -m 30 -X PUT "$(api "$node")/v1/ns/big/kv/k$k" \
            -H 'content-type: application/json' --data-binary @"$body" || true)
        [[ $code == 200 ]] && break
        retries=$((retries + 1))
        (( attempt == 120 )) && { echo "put k$k failed for 60 s (last answer $code)" >&2; exit 1; }
        sleep 0.5
    done
done
term=$(curl -sf "$(api 1)/v1/raft" | json "d.get('term')")
echo "puts: $keys x 1,000,000 bytes in $(since "$t0") s; $retries retried answers; Raft term now $term"
# The log also holds entries that are not puts (leader blanks, the
# namespace's creation): a snapshot past keys - snapshot_every holds at
# least that many of the puts.
want=$(( keys - snapshot_every ))
t0=$(now)
for i in 1 2 3; do
    for _ in $(seq 3000); do
        last=$(snapshot "$i" | python3 -c "import ast,sys; print(ast.literal_eval(sys.stdin.read())['last_index'] or 0)")
        (( last >= want )) && break
        sleep 0.2
    done
    echo "node$i snapshot: $(snapshot "$i"); peak RSS $(hwm "$i")"
done
echo "snapshots through entry >= $want on all voters within $(since "$t0") s of the last put"
du -sh "$dir"/node1/data | sed 's/^/node1 data: /'
t0=$(now)
for i in 1 2 3; do kill -9 "${pids[$i]}"; wait "${pids[$i]}" 2>/dev/null || true; done
for i in 1 2 3; do start "$i"; done
echo "every voter killed (SIGKILL) and restarted; all answer /health after $(since "$t0") s"
for i in 1 2 3; do
    got=$(curl -s "$(api "$i")/v1/ns/big/kv/k00007?stale=true" | json "len(d['value'])" || echo missing)
    echo "node$i after restart: k00007 has $got bytes; peak RSS $(hwm "$i")"
done
t0=$(now)
start 4
for _ in $(seq 6000); do
    installed=$(snapshot 4 | python3 -c "import ast,sys; print(ast.literal_eval(sys.stdin.read())['installed_total'])")
    (( installed >= 1 )) && break
    sleep 0.1
done
echo "node4 (a learner, empty) installed a snapshot $(since "$t0") s after its start: $(snapshot 4); peak RSS $(hwm 4)"
last=$(printf '%05d' "$keys")
for _ in $(seq 600); do
    got=$(curl -s "$(api 4)/v1/ns/big/kv/k$last?stale=true" | json "len(d['value'])" 2>/dev/null || true)
    [[ $got == 1000000 ]] && break
    sleep 0.1
done
echo "node4 holds k$last ($got bytes) $(since "$t0") s after its start"
echo "logs and data: $dir"
