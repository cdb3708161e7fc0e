#!/usr/bin/env bash
# Runs fuzz targets of fuzz/ one after the other, each until it has made
# --runs executions or run --seconds, whichever comes first, at the lowest
# CPU priority, and prints one line per target for the table in
# docs/design/fault-injection.md, "Fuzzing". Needs nightly and cargo-fuzz
# (`scripts/setup.sh --fuzz`). New corpus inputs land in fuzz/corpus/TARGET;
# a crash stops that target and leaves its input in fuzz/artifacts/TARGET.
#
#   scripts/fuzz.sh [--runs N] [--seconds S] [TARGET...]   # default: all targets
#
# FUZZ_TARGET_DIR, when set, is where the targets are built (cargo fuzz
# --target-dir); FUZZ_LOG_DIR (default fuzz/logs) keeps each run's output.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=10000000
seconds=3600
targets=()
while (($#)); do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        -*) echo "fuzz.sh: unknown flag $1 (known: --runs N, --seconds S)" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
root=$PWD
target_dir=()
if [[ -n ${FUZZ_TARGET_DIR:-} ]]; then target_dir=(--target-dir "$FUZZ_TARGET_DIR"); fi
logs=${FUZZ_LOG_DIR:-fuzz/logs}
mkdir -p "$logs"
logs=$(cd "$logs" && pwd)
printf '%-26s %12s %9s %7s %8s %7s %10s %s\n' target executions exec/s time_s crashes files bytes stopped_by
not_run=0
for target in "${targets[@]}"; do
    log=$logs/$target.log
    started=$SECONDS
    crashes=0
    # One job, one worker: libFuzzer then fuzzes in a single child process
    # whose output goes to fuzz-0.log, so run it from the log directory.
    if ! (cd "$logs" && nice -n 19 cargo +nightly fuzz run --fuzz-dir "$root/fuzz" "${target_dir[@]}" "$target" -- \
        -runs="$runs" -max_total_time="$seconds" -rss_limit_mb=2048 -jobs=1 -workers=1 \
        -print_final_stats=1 >"$target.driver.log" 2>&1); then
        crashes=1
    fi
    if [[ -f $logs/fuzz-0.log ]]; then
        mv "$logs/fuzz-0.log" "$log"
    else
        cp "$logs/$target.driver.log" "$log"
    fi
    elapsed=$((SECONDS - started))
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    per_second=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    if grep -q -e '^==[0-9]*== ERROR' -e 'deadly signal' -e 'panicked at' "$log"; then
        crashes=1
    fi
    if [[ -z ${executions:-} ]] && ! grep -q -e '^==[0-9]*== ERROR' -e 'deadly signal' -e 'panicked at' "$log"; then
        crashes=0
        # No libFuzzer statistics: the fuzzer never ran (cargo-fuzz missing,
        # a build error). Say so instead of reporting a crash or a clean run.
        stopped_by="not run (see $target.driver.log)"
        not_run=$((not_run + 1))
    elif ((${executions:-0} >= runs)); then stopped_by=runs; else stopped_by=time; fi
    files=0
    bytes=0
    if [[ -d fuzz/corpus/$target ]]; then
        files=$(find "fuzz/corpus/$target" -type f | wc -l)
        bytes=$(find "fuzz/corpus/$target" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
    fi
    printf '%-26s %12s %9s %7s %8s %7s %10s %s\n' "$target" "${executions:-?}" "${per_second:-?}" \
        "$elapsed" "$crashes" "$files" "$bytes" "$stopped_by"
done
if ((not_run > 0)); then
    echo "fuzz.sh: $not_run target(s) did not run (logs in $logs)" >&2
    exit 1
fi
