#!/usr/bin/env bash
# Benchmark the fake-camera fleet: CAMERAS cameras (default 24 at 1080p15, 2 Mbit/s) served
# to as many RTSP readers (one gst-launch-1.0 with one `rtspsrc ! fakesink` per camera).
# Reports fakecam's CPU (% of one core, from /proc/PID/stat over SECONDS), RSS, threads,
# and the frames each camera delivered per second, with the readers' CPU for context.
#
# Usage: scripts/bench-fakecam.sh
# Env:   CAMERAS=24 WIDTH=1920 HEIGHT=1080 FPS=15 GOP=30 BITRATE=2000 (kbit/s)
#        SECONDS_MEASURED=30 WARMUP=10 PROTOCOLS=tcp (rtspsrc protocols: tcp, udp, udp+tcp)
#        FAKECAM_BIN=path (default: cargo build --release -p storeguard-fixtures --bin fakecam)
set -euo pipefail
cd "$(dirname "$0")/.."

CAMERAS=${CAMERAS:-24}
WIDTH=${WIDTH:-1920}
HEIGHT=${HEIGHT:-1080}
FPS=${FPS:-15}
GOP=${GOP:-30}
BITRATE=${BITRATE:-2000}
SECONDS_MEASURED=${SECONDS_MEASURED:-30}
WARMUP=${WARMUP:-10}
PROTOCOLS=${PROTOCOLS:-tcp}

if [[ -z ${FAKECAM_BIN:-} ]]; then
    cargo build --release -p storeguard-fixtures --bin fakecam >&2
    FAKECAM_BIN=target/release/fakecam
fi

work=$(mktemp -d)
fc_pid=""
rd_pid=""
cleanup() {
    [[ -n $rd_pid ]] && kill "$rd_pid" 2>/dev/null || true
    exec 3>&- 2>/dev/null || true # EOF on fakecam's stdin makes it quit
    if [[ -n $fc_pid ]]; then
        sleep 1
        kill "$fc_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# CPU time (utime + stime, clock ticks) of a process; fields counted after "(comm)".
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
status_field() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
# "OK cam1=running:clients=1:pushed=N ..." -> sum of pushed, and cameras with a client.
stats() {
    echo stats >&3
    local line=""
    for _ in $(seq 50); do
        line=$(grep '^OK cam1=' "$work/out" | tail -n 1 || true)
        [[ $line != "${1:-}" && -n $line ]] && break
        sleep 0.1
    done
    echo "$line"
}

mkfifo "$work/ctl"
: >"$work/out"
"$FAKECAM_BIN" --port 0 --cameras "$CAMERAS" --width "$WIDTH" --height "$HEIGHT" \
    --fps "$FPS" --gop "$GOP" --bitrate "$BITRATE" <"$work/ctl" >"$work/out" 2>"$work/err" &
fc_pid=$!
exec 3>"$work/ctl"

for _ in $(seq 600); do
    grep -q '^READY ' "$work/out" && break
    kill -0 "$fc_pid" 2>/dev/null || { cat "$work/err" >&2; echo "fakecam exited" >&2; exit 1; }
    sleep 0.1
done
base=$(sed -n 's/^READY //p' "$work/out")
[[ -n $base ]] || { cat "$work/err" >&2; echo "fakecam not READY after 60 s" >&2; exit 1; }

readers=()
for i in $(seq 1 "$CAMERAS"); do
    readers+=(rtspsrc "location=${base}cam$i" "protocols=$PROTOCOLS" latency=200 ! fakesink sync=false)
done
gst-launch-1.0 -q "${readers[@]}" >"$work/readers.log" 2>&1 &
rd_pid=$!

alive() {
    for p in "$fc_pid" "$rd_pid"; do
        if ! kill -0 "$p" 2>/dev/null; then
            echo "process $p died; fakecam stderr tail:" >&2
            tail -n 20 "$work/err" >&2
            echo "readers log tail:" >&2
            tail -n 20 "$work/readers.log" >&2
            exit 1
        fi
    done
}

sleep "$WARMUP"
alive
s0=$(stats)
attached=$(tr ' ' '\n' <<<"$s0" | grep -c ':clients=[1-9]' || true)
pushed0=$(grep -o 'pushed=[0-9]*' <<<"$s0" | cut -d= -f2 | paste -sd+ | bc)
fc0=$(ticks "$fc_pid")
rd0=$(ticks "$rd_pid")
sleep "$SECONDS_MEASURED"
alive
fc1=$(ticks "$fc_pid")
rd1=$(ticks "$rd_pid")
s1=$(stats "$s0")
pushed1=$(grep -o 'pushed=[0-9]*' <<<"$s1" | cut -d= -f2 | paste -sd+ | bc)
hz=$(getconf CLK_TCK)

pct() { echo "scale=1; ($2 - $1) * 100 / $hz / $SECONDS_MEASURED" | bc; }
echo "fakecam bench: $CAMERAS cameras ${WIDTH}x${HEIGHT}@${FPS} gop $GOP ${BITRATE} kbit/s, readers over $PROTOCOLS, ${SECONDS_MEASURED}s after ${WARMUP}s warm-up, $(nproc) cores"
echo "cameras with a reader attached: $attached / $CAMERAS"
echo "frames delivered per camera per second: $(echo "scale=2; ($pushed1 - $pushed0) / $CAMERAS / $SECONDS_MEASURED" | bc) (target $FPS)"
echo "fakecam CPU: $(pct "$fc0" "$fc1")% of one core; RSS $(status_field "$fc_pid" VmRSS) kB; threads $(status_field "$fc_pid" Threads)"
echo "readers (one gst-launch-1.0) CPU: $(pct "$rd0" "$rd1")% of one core; RSS $(status_field "$rd_pid" VmRSS) kB"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
