#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/, docs/reliability.md#fuzzing), one after the other
# (the machine is small), and prints per target: runs executed, coverage, crashes.
#
#   scripts/fuzz.sh [--ci] [--merge] [--jobs N] [SECONDS_PER_TARGET] [TARGET...]
#
#   SECONDS_PER_TARGET  default 60; --ci: 10
#   TARGET...           default: every target in fuzz/fuzz_targets/
#   --merge             add what found new coverage to fuzz/corpus/<target> (to commit)
#   --jobs N            run N targets at a time (default 1; one core each)
#
# New inputs go to fuzz/target/new-corpus/<target>, so a run leaves the committed corpus
# alone unless --merge. A crash is kept in fuzz/artifacts/<target>/; copy it into
# fuzz/regressions/<target>/ with the fix, and the normal test suite replays it.
# FUZZ_FLAGS adds cargo-fuzz build options to both build and runs, e.g. a cheaper build
# for CI: FUZZ_FLAGS="--sanitizer none" or "--dev" (debug profile: quicker to build,
# slower to run). Exits 1 if any target crashed, hung or ran out of memory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

secs=60 merge=0 jobs=1 targets=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --ci) secs=10 ;;
        --merge) merge=1 ;;
        --jobs) jobs=${2:?--jobs needs a number}; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        [0-9]*) secs=$1 ;;
        *) targets+=("$1") ;;
    esac
    shift
done
if [[ ${#targets[@]} -eq 0 ]]; then
    for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz.sh: cargo fuzz needs a nightly toolchain: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
fi

# The MP4 cutter runs GStreamer; its registry cache must be writable.
export GST_REGISTRY="${GST_REGISTRY:-$root/local/gst-registry.bin}"
mkdir -p local

# Targets make scratch data directories (SQLite with synchronous=FULL): on tmpfs the
# fsyncs cost nothing, so the runs go to the parsers.
if [[ -z ${TMPDIR:-} && -w /dev/shm ]]; then export TMPDIR=/dev/shm; fi

cd fuzz
t0=$SECONDS
# All targets in one build: they share every dependency.
# shellcheck disable=SC2086
cargo +nightly fuzz build ${FUZZ_FLAGS:-}
echo "fuzz.sh: built in $((SECONDS - t0)) s"

# One target: its run, its summary line in target/fuzz-$t.result, then the merge.
run_target() {
    local t=$1 new="target/new-corpus/$1" log="target/fuzz-$1.log" rc=0 runs last cov ft corp result
    mkdir -p "$new" "artifacts/$t" "corpus/$t"
    echo "fuzz.sh: $t for $secs s"
    # Leaks: GStreamer and glib keep process-wide allocations on purpose; off for all,
    # both libFuzzer's check and LeakSanitizer's at exit (which called a clean mp4_cut
    # run of 20k inputs a crash).
    # shellcheck disable=SC2086
    ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}" cargo +nightly fuzz run ${FUZZ_FLAGS:-} "$t" "$new" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=60 -rss_limit_mb=2048 -max_len=262144 \
        -detect_leaks=0 -print_final_stats=1 >"$log" 2>&1 || rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
    if [[ $rc -eq 0 ]]; then
        result=ok
    else
        result="CRASH (exit $rc): $(grep -m1 -oE 'artifacts/[^ ]+' "$log" || echo "see fuzz/$log")"
        grep -m3 -E "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | sed 's/^/    /' || true
    fi
    printf '%-14s %10s %8s %8s %7s %s\n' "$t" "${runs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result" \
        | tee "target/fuzz-$t.result"
    if [[ $merge -eq 1 && $rc -eq 0 ]]; then
        # shellcheck disable=SC2086
        ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}" cargo +nightly fuzz run ${FUZZ_FLAGS:-} "$t" "corpus/$t" "$new" -- -merge=1 -detect_leaks=0 \
            >"target/fuzz-$t-merge.log" 2>&1 || true
    fi
}

for t in "${targets[@]}"; do
    rm -f "target/fuzz-$t.result"
    while [[ $(jobs -rp | wc -l) -ge $jobs ]]; do wait -n || true; done
    run_target "$t" &
done
wait
failed=()
printf '%-14s %10s %8s %8s %7s %s\n' target runs cov ft corpus result > target/fuzz-summary.txt
for t in "${targets[@]}"; do
    line=$(cat "target/fuzz-$t.result" 2>/dev/null || echo "$t ? ? ? ? DID NOT FINISH")
    echo "$line" >> target/fuzz-summary.txt
    [[ $line == *" ok" ]] || failed+=("$t")
done
echo
cat target/fuzz-summary.txt
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz.sh: crashed: ${failed[*]} (inputs in fuzz/artifacts/, logs in fuzz/target/)" >&2
    exit 1
fi
