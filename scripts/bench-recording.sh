#!/usr/bin/env bash
# Recording cost: storeguard on each of its ingests (retina, the default, and the
# gstreamer fallback) vs. one `ffmpeg -c copy -f segment` per camera (the Frigate way),
# each recording the same fake cameras for the same time, one after the other.
#
#   scripts/bench-recording.sh [SECONDS] [CAMERA COUNTS...]      default: 60 1 8 24
#
# Cameras: 1080p, 15 fps, 2 s GOP, about 3 Mbit/s (vtest.avi scaled up with film grain,
# so the encoder really spends its bitrate), served by ONE fakecam process that is not
# measured. Measured per recorder, over the window after every camera records:
#   CPU s    utime+stime from /proc/PID/stat, children included (cutime+cstime)
#   RSS      VmHWM (peak resident set; ffmpeg: summed over its processes)
#   PSS      from /proc/PID/smaps_rollup at the end of the window (ffmpeg: summed;
#            shared libraries counted once overall, as they are really paid)
#   threads  /proc/PID/status Threads at the end
#   MB/cam-min  bytes written under the output directory per camera-minute
#   write MB/cam-min  what the kernel was asked to write (/proc/PID/io write_bytes):
#            for storeguard the recordings plus the SQLite index and its WAL
# SG_TRANSPORT=udp records over RTP/UDP instead of RTSP-interleaved TCP (all recorders; the
# retina ingest is TCP only, so it is left out then).
# SG_INGESTS="retina gstreamer" (default) picks the storeguard ingests to run.
# Needs: release build (built if missing), ffmpeg, python3 (for JSON), ~1 GB free in /tmp,
# and vtest.avi from `scripts/setup.sh media`.
set -euo pipefail

SECS=${1:-60}
TRANSPORT=${SG_TRANSPORT:-tcp}
read -r -a INGESTS <<<"${SG_INGESTS:-retina gstreamer}"
if [[ $TRANSPORT == udp ]]; then
    kept=()
    for i in "${INGESTS[@]}"; do [[ $i == retina ]] || kept+=("$i"); done
    INGESTS=("${kept[@]}")
fi
shift || true
COUNTS=("$@")
[[ ${#COUNTS[@]} -gt 0 ]] || COUNTS=(1 8 24)
MAX=0
for n in "${COUNTS[@]}"; do ((n > MAX)) && MAX=$n; done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release
if [[ ! -x $BIN/storeguard || ! -x $BIN/fakecam ]]; then
    (cd "$ROOT" && cargo build --release --workspace --bins)
fi
WORK=$(mktemp -d /tmp/sg-bench.XXXXXX)
CACHE=$ROOT/target/bench-media
mkdir -p "$CACHE"
FC_PID=""
REC_PIDS=()
FC_IN=""

# shellcheck source=bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
cleanup() { bench_cleanup "${REC_PIDS[@]}"; }
trap cleanup EXIT
bench_source "$ROOT" "$CACHE"
start_fakecam "$BIN" "$WORK" "$CACHE" "$MAX"
TCK=$(getconf CLK_TCK)

# CPU ticks of a pid with its reaped children (fields 14-17 of /proc/PID/stat).
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$1/stat"; }
kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/${3:-status}"; }
bytes_under() { du -sb "$1" 2>/dev/null | cut -f1; }
wbytes() { awk '$1 == "write_bytes:" { print $2 }' "/proc/$1/io"; }

results=()

# measure NAME DIR PIDS...: one window of SECS seconds.
measure() {
    local name=$1 dir=$2 n=$3
    shift 3
    local pids=("$@") t0=0 t1=0 b0 b1 hwm=0 pss=0 thr=0 w0=0 w1=0
    for p in "${pids[@]}"; do
        t0=$((t0 + $(ticks "$p")))
        w0=$((w0 + $(wbytes "$p")))
    done
    b0=$(bytes_under "$dir")
    sleep "$SECS"
    for p in "${pids[@]}"; do
        kill -0 "$p" 2>/dev/null || { echo "$name: pid $p died during the window" >&2; exit 1; }
        t1=$((t1 + $(ticks "$p")))
        w1=$((w1 + $(wbytes "$p")))
        hwm=$((hwm + $(kb "$p" VmHWM)))
        pss=$((pss + $(kb "$p" Pss smaps_rollup)))
        thr=$((thr + $(kb "$p" Threads)))
    done
    b1=$(bytes_under "$dir")
    local cpu
    cpu=$(awk -v a="$t0" -v b="$t1" -v t="$TCK" 'BEGIN { printf "%.2f", (b - a) / t }')
    local pct
    pct=$(awk -v c="$cpu" -v s="$SECS" 'BEGIN { printf "%.1f", 100 * c / s }')
    local mbcm
    mbcm=$(awk -v a="$b0" -v b="$b1" -v n="$n" -v s="$SECS" 'BEGIN { printf "%.2f", (b - a) / 1e6 / n / (s / 60) }')
    local wmbcm
    wmbcm=$(awk -v a="$w0" -v b="$w1" -v n="$n" -v s="$SECS" 'BEGIN { printf "%.2f", (b - a) / 1e6 / n / (s / 60) }')
    results+=("$name|$n|$cpu|$pct|$((hwm / 1024))|$((pss / 1024))|$thr|$mbcm|$wmbcm")
    echo "$name $n cameras: ${cpu} CPU s (${pct}% of one core), VmHWM $((hwm / 1024)) MB, PSS $((pss / 1024)) MB, $thr threads, ${mbcm} MB/camera-minute recorded, ${wmbcm} written" >&2
}

run_storeguard() {
    local n=$1 ingest=$2 dir=$WORK/sg-$2-$1
    mkdir -p "$dir"
    {
        printf '[site]\nsite_id = "bench"\ndevice_id = "bench"\n\n[storage]\ndata_dir = "data"\n'
        printf 'segment_length = "10s"\nsync_interval = "1s"\n\n[control]\nsocket = "control.sock"\n'
        for i in $(seq 1 "$n"); do
            printf '\n[[cameras]]\nid = "cam%d"\nurl = "rtsp://127.0.0.1:%d/cam%d"\ntransport = "%s"\ningest = "%s"\n' \
                "$i" "$PORT" "$i" "$TRANSPORT" "$ingest"
        done
    } >"$dir/sg.toml"
    STOREGUARD_LOG=${STOREGUARD_LOG:-info} NO_COLOR=1 "$BIN/storeguard" --config "$dir/sg.toml" run \
        >"$dir/log" 2>&1 &
    local pid=$!
    REC_PIDS=("$pid")
    local ok=""
    for _ in $(seq 1 240); do
        if "$BIN/storeguard" --config "$dir/sg.toml" cameras --json 2>/dev/null | python3 -c '
import json, sys
try:
    c = json.load(sys.stdin)["cameras"]
except ValueError:
    sys.exit(1)
sys.exit(0 if len(c) == int(sys.argv[1]) and all(x["state"] == "recording" for x in c) else 1)' "$n"; then
            ok=1
            break
        fi
        sleep 0.5
    done
    [[ -n $ok ]] || { tail -20 "$dir/log" >&2; echo "storeguard: cameras not recording" >&2; exit 1; }
    sleep 3
    measure "storeguard-$ingest" "$dir/data/recordings" "$n" "$pid"
    kill -TERM "$pid"
    wait "$pid" || true
    REC_PIDS=()
    rm -rf "$dir/data/recordings"
}

run_ffmpeg() {
    local n=$1 dir=$WORK/ff-$n pids=()
    for i in $(seq 1 "$n"); do
        mkdir -p "$dir/cam$i"
        ffmpeg -nostdin -loglevel error -rtsp_transport "$TRANSPORT" -i "rtsp://127.0.0.1:$PORT/cam$i" \
            -c copy -f segment -segment_time 10 "$dir/cam$i/out%03d.ts" 2>"$dir/cam$i.err" &
        pids+=($!)
    done
    REC_PIDS=("${pids[@]}")
    for _ in $(seq 1 240); do
        local started=0
        for i in $(seq 1 "$n"); do [[ -s $dir/cam$i/out000.ts ]] && started=$((started + 1)); done
        ((started == n)) && break
        sleep 0.5
    done
    sleep 3
    measure ffmpeg "$dir" "$n" "${pids[@]}"
    for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    REC_PIDS=()
    rm -rf "$dir"
}

echo "storeguard $(git -C "$ROOT" describe --always --dirty 2>/dev/null), RTSP over $TRANSPORT, ${SECS}s windows, load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores" >&2
for n in "${COUNTS[@]}"; do
    for i in "${INGESTS[@]}"; do run_storeguard "$n" "$i"; done
    run_ffmpeg "$n"
done

echo
echo "| recorder | cameras | CPU s / ${SECS} s | % of a core | peak RSS MB | PSS MB | threads | recorded MB / camera-min | written MB / camera-min |"
echo "|---|---|---|---|---|---|---|---|---|"
for r in "${results[@]}"; do
    IFS='|' read -r name n cpu pct hwm pss thr mbcm wmbcm <<<"$r"
    echo "| $name | $n | $cpu | $pct | $hwm | $pss | $thr | $mbcm | $wmbcm |"
done
echo
for n in "${COUNTS[@]}"; do
    ff=$(printf '%s\n' "${results[@]}" | awk -F'|' -v n="$n" '$1 == "ffmpeg" && $2 == n { print $3 }')
    for i in "${INGESTS[@]}"; do
        sg=$(printf '%s\n' "${results[@]}" | awk -F'|' -v n="$n" -v r="storeguard-$i" '$1 == r && $2 == n { print $3 }')
        awk -v n="$n" -v i="$i" -v a="$sg" -v b="$ff" 'BEGIN { printf "%d cameras: CPU storeguard (%s) / ffmpeg = %.2f\n", n, i, (b > 0 ? a / b : 0) }'
    done
done
