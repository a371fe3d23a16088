#!/usr/bin/env bash
# A full 31-day ring (docs/reliability.md, "A full ring"): builds the index of a 24-camera,
# 31-day ring (2.1 M segments, 32 M keyframes; synthetic rows through the real schema,
# an empty file per synthetic segment, the newest ~2 minutes of every camera real video),
# then measures on it:
#   generation time, database and WAL size;
#   daemon start-up to READY (control socket answers), reconciliation included;
#   `storeguard cameras`, `events`, `status` round trips against that daemon; its WAL;
#   the hot-path queries, one eviction pass, press commits (p50/p99/max over 200), and
#   cutting + sealing a 90 s clip of real footage (examples/full_ring.rs `bench`).
#
#   scripts/bench-ring.sh [DAYS] [CAMERAS]       default: 31 24
#
# Needs: release build (made if missing), ffmpeg, python3, vtest.avi (scripts/setup.sh
# media), ~3 GB and ~2.2 M inodes free under target/ (SG_RING_DIR to put it elsewhere).
# The ring is deleted at the end unless SG_KEEP=1 (SG_REUSE=1 then measures a kept ring
# again without generating it); the recorded real footage is cached in
# target/bench-media/ring-real. SG_BIN=DIR runs binaries from DIR (with
# examples/full_ring) instead of building target/release.
set -euo pipefail

DAYS=${1:-31}
CAMS=${2:-24}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SG_BIN:-$ROOT/target/release}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$ROOT/local/onnxruntime/libonnxruntime.so.1.31.1}
if [[ -z ${SG_BIN:-} ]]; then
    (cd "$ROOT" && cargo build --release --workspace --bins && cargo build --release -p storeguard --example full_ring) >&2
fi
EX=$BIN/examples/full_ring
WORK=${SG_RING_DIR:-$ROOT/target/ring-bench}
CACHE=$ROOT/target/bench-media
REAL=$CACHE/ring-real
mkdir -p "$CACHE"
FC_PID=""
FC_IN=""
SG_PID=""

# shellcheck source=bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
cleanup() {
    [[ -n $SG_PID ]] && kill "$SG_PID" 2>/dev/null || true
    [[ -n ${FC_PID:-} ]] && kill "$FC_PID" 2>/dev/null || true
    [[ -n ${FC_IN:-} ]] && exec {FC_IN}>&- 2>/dev/null || true
    wait 2>/dev/null || true
    [[ ${SG_KEEP:-} == 1 ]] || rm -rf "$WORK"
}
trap cleanup EXIT
now_ms() { date +%s%3N; }
figures=()
fig() { figures+=("$1|$2"); }

# 1. Real footage: one camera recorded by the daemon for 130 s (once; cached).
if [[ ! -s $REAL/data/storeguard.db ]]; then
    rm -rf "$REAL"
    mkdir -p "$REAL"
    bench_source "$ROOT" "$CACHE"
    WORK_FC=$REAL
    start_fakecam "$BIN" "$WORK_FC" "$CACHE" 1
    printf '[site]\nsite_id = "bench"\ndevice_id = "bench"\n\n[storage]\ndata_dir = "data"\nsegment_length = "30s"\n\n[control]\nsocket = "control.sock"\n\n[[cameras]]\nid = "cam1"\nurl = "rtsp://127.0.0.1:%d/cam1"\n' \
        "$PORT" >"$REAL/sg.toml"
    echo "recording 130 s of real footage into $REAL..." >&2
    NO_COLOR=1 "$BIN/storeguard" --config "$REAL/sg.toml" run >"$REAL/log" 2>&1 &
    SG_PID=$!
    sleep 130
    kill -TERM "$SG_PID"
    wait "$SG_PID" || true
    SG_PID=""
    kill "$FC_PID" 2>/dev/null || true
    exec {FC_IN}>&-
    FC_IN=""
    wait "$FC_PID" 2>/dev/null || true
    FC_PID=""
    rm -f "$REAL/fc.in" "$REAL/control.sock"
fi

# 2. The ring.
if [[ ${SG_REUSE:-} == 1 && -s $WORK/gen.out ]]; then
    echo "measuring the ring kept in $WORK" >&2
else
    rm -rf "$WORK"
    mkdir -p "$WORK"
    echo "generating a $DAYS-day ring of $CAMS cameras in $WORK..." >&2
    "$EX" generate "$WORK/data" --real "$REAL/data" --days "$DAYS" --cameras "$CAMS" | tee "$WORK/gen.out"
fi
used=$(sed -n 's/^FIGURE used_bytes \([0-9]*\) B/\1/p' "$WORK/gen.out")

# 3. The daemon on it: cameras unreachable (nothing serves port 9), budget just above what
# the ring holds, so start-up reconciles and evicts nothing.
{
    printf '[site]\nsite_id = "bench"\ndevice_id = "bench"\n\n[storage]\ndata_dir = "data"\nsegment_length = "30s"\n'
    printf 'budget = "%dB"\n\n[control]\nsocket = "control.sock"\n' "$((used + (1 << 30)))"
    for i in $(seq 1 "$CAMS"); do
        printf '\n[[cameras]]\nid = "cam%02d"\nurl = "rtsp://127.0.0.1:9/cam%02d"\n' "$i" "$i"
    done
    printf '\n[[buttons]]\nname = "till"\nchip = "sim"\nline = 0\nwiring = "normally-open"\ncameras = ["cam01", "cam02", "cam03", "cam04"]\n'
} >"$WORK/sg.toml"
sync
t0=$(now_ms)
NO_COLOR=1 "$BIN/storeguard" --config "$WORK/sg.toml" run >"$WORK/log" 2>&1 &
SG_PID=$!
until python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' "$WORK/control.sock" 2>/dev/null; do
    kill -0 "$SG_PID" 2>/dev/null || { tail -20 "$WORK/log" >&2; echo "daemon exited during start-up" >&2; exit 1; }
    sleep 0.02
done
t1=$(now_ms)
fig "daemon start-up to READY (reconciliation included)" "$((t1 - t0)) ms"
grep -i "reconcil" "$WORK/log" | head -3 >&2 || true
sg() { "$BIN/storeguard" --config "$WORK/sg.toml" "$@" >/dev/null; }
median_ms() {
    local v=() t
    for _ in 1 2 3 4 5; do
        t=$(now_ms)
        sg "$@"
        v+=($(($(now_ms) - t)))
    done
    printf '%s\n' "${v[@]}" | sort -n | sed -n 3p
}
sleep 5
fig "storeguard cameras (CLI round trip, median of 5)" "$(median_ms cameras --json) ms"
fig "storeguard events --limit 100 (median of 5)" "$(median_ms events --limit 100 --json) ms"
fig "storeguard status (median of 5)" "$(median_ms status --json) ms"
fig "WAL while the daemon runs" "$(stat -c %s "$WORK/data/storeguard.db-wal" 2>/dev/null || echo 0) B"
fig "daemon RSS (VmHWM)" "$(awk '$1 == "VmHWM:" { print $2 " kB" }' "/proc/$SG_PID/status")"
kill -TERM "$SG_PID"
wait "$SG_PID" || true
SG_PID=""
fig "WAL after the daemon stopped" "$(stat -c %s "$WORK/data/storeguard.db-wal" 2>/dev/null || echo 0) B"

# 4. The store on it, directly (SG_SKIP_STORE=1: the daemon's figures only).
if [[ ${SG_SKIP_STORE:-} == 1 ]]; then : >"$WORK/bench.out"; else
    "$EX" bench "$WORK/data" | tee "$WORK/bench.out"
fi

echo
echo "storeguard $(git -C "$ROOT" describe --always --dirty 2>/dev/null), $DAYS days x $CAMS cameras, load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
printf '| %-58s | %s |\n' "what" "figure"
printf '|%s|%s|\n' "$(printf -- '-%.0s' {1..60})" "$(printf -- '-%.0s' {1..40})"
while read -r _ name rest; do
    printf '| %-58s | %s |\n' "$name" "$rest"
done < <(grep -h '^FIGURE' "$WORK/gen.out")
for f in "${figures[@]}"; do
    printf '| %-58s | %s |\n' "${f%%|*}" "${f#*|}"
done
while read -r _ name rest; do
    printf '| %-58s | %s |\n' "$name" "$rest"
done < <(grep -h '^FIGURE' "$WORK/bench.out")
