#!/usr/bin/env bash
# Detection cost on this box (docs/detect.md, "Benchmarks").
#
#   scripts/bench-detect.sh [SECONDS]          default: 90 (each measured window)
#
# 1. Inference per image: `storeguard detect --bench` on a vtest.avi frame, batch 1 and 4,
#    ONNX Runtime alone against storeguard's whole path (preprocess, run, decode, NMS) on
#    the same session and threads (goal: ≤ 1.1×).
# 2. 24 cameras recording with detection on: 4 show people (vtest.avi at 1080p15 with
#    film grain, 2 s GOP, 3 Mbit/s), 20 are still (SMPTE bars at 1080p15, 2 s GOP; the
#    bars' noise square is masked, as a shop masks a TV). Measured over the window after
#    warm-up: daemon CPU, inferences per second, picture → tracked result latency on the
#    people cameras (p50/p95, from `cameras --json`), peak RSS, recording gaps opened
#    during the window, and inferences on the still cameras.
# 3. What a still camera costs: the 20 still cameras alone, detection off, then on; the
#    CPU difference divided by 20 (goal: ≤ 0.3 % of a core each).
# Needs: release build (built if missing), ffmpeg, python3, vtest.avi (scripts/setup.sh),
# the model and ONNX Runtime (scripts/setup.sh).
set -euo pipefail

SECS=${1:-90}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release
if [[ ! -x $BIN/storeguard || ! -x $BIN/fakecam ]]; then
    (cd "$ROOT" && cargo build --release --workspace --bins)
fi
MODEL=$ROOT/models/nanodet-m-416-fp16w.onnx
ORT=${ORT_DYLIB_PATH:-$ROOT/local/onnxruntime/libonnxruntime.so.1.31.1}
[[ -f $MODEL && -f $ORT ]] || { echo "no model or ONNX Runtime: run scripts/setup.sh" >&2; exit 1; }
WORK=$(mktemp -d /tmp/sg-bench-detect.XXXXXX)
CACHE=$ROOT/target/bench-media
mkdir -p "$CACHE"
FC_PID=""
FC_IN=""
SG_PID=""
STILL_PID=""
STILL_IN=""

# shellcheck source=bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
cleanup() {
    [[ -n $STILL_PID ]] && kill "$STILL_PID" 2>/dev/null || true
    [[ -n $STILL_IN ]] && exec {STILL_IN}>&- 2>/dev/null || true
    bench_cleanup $SG_PID
}
trap cleanup EXIT
TCK=$(getconf CLK_TCK)
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$1/stat"; }
kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

echo "storeguard $(git -C "$ROOT" describe --always --dirty 2>/dev/null), ${SECS}s windows, load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores" >&2

# --- 1. inference per image
ffmpeg -nostdin -loglevel error -y -i "${STOREGUARD_MEDIA:-$ROOT/local/media}/vtest.avi" \
    -vf "select=eq(n\,0)" -frames:v 1 "$WORK/vtest-0.png"
for b in 1 4; do
    "$BIN/storeguard" --config /nonexistent detect --model "$MODEL" --onnxruntime "$ORT" \
        --bench $((120 / b)) --batch "$b" "$WORK/vtest-0.png" | tee "$WORK/infer-$b.json"
done

# --- the fleets: 4 people cameras (fakecam from bench-lib.sh), 20 still ones
bench_source "$ROOT" "$CACHE"
start_fakecam "$BIN" "$WORK" "$CACHE" 4
PEOPLE_PORT=$PORT
mkfifo "$WORK/still.in"
"$BIN/fakecam" --port 0 --cameras 20 --width 1920 --height 1080 --fps 15 --gop 30 --bitrate 3000 \
    --source static <"$WORK/still.in" >"$WORK/still.out" 2>"$WORK/still.err" &
STILL_PID=$!
exec {STILL_IN}>"$WORK/still.in"
for _ in $(seq 1 120); do grep -q READY "$WORK/still.out" 2>/dev/null && break; sleep 0.5; done
STILL_PORT=$(sed -n 's/^READY rtsp:\/\/127.0.0.1:\([0-9]*\)\/.*/\1/p' "$WORK/still.out")
[[ -n $STILL_PORT ]] || { cat "$WORK/still.err" >&2; echo "still fakecam not ready" >&2; exit 1; }

# config NAME PEOPLE STILL DETECT: writes $WORK/NAME/sg.toml
config() {
    local dir=$WORK/$1 people=$2 still=$3 detect=$4
    mkdir -p "$dir"
    {
        printf '[site]\nsite_id = "bench"\ndevice_id = "bench"\n\n[storage]\ndata_dir = "data"\n'
        printf 'segment_length = "10s"\nsync_interval = "1s"\n\n[control]\nsocket = "control.sock"\n'
        printf '\n[detect]\nenabled = %s\nmodel = "%s"\nonnxruntime = "%s"\n' "$detect" "$MODEL" "$ORT"
        for i in $(seq 1 "$people"); do
            printf '\n[[cameras]]\nid = "people%d"\nurl = "rtsp://127.0.0.1:%d/cam%d"\n' "$i" "$PEOPLE_PORT" "$i"
            printf '[[cameras.detect.zones]]\nname = "floor"\npolygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]\n'
        done
        for i in $(seq 1 "$still"); do
            printf '\n[[cameras]]\nid = "still%d"\nurl = "rtsp://127.0.0.1:%d/cam%d"\n' "$i" "$STILL_PORT" "$i"
            printf '[cameras.detect]\nmasks = [[[0.7, 0.7], [1.0, 0.7], [1.0, 1.0], [0.7, 1.0]]]\n'
        done
    } >"$dir/sg.toml"
}

cams() { "$BIN/storeguard" --config "$WORK/$1/sg.toml" cameras --json; }

# run NAME N: starts the daemon, waits for N cameras recording plus a warm-up, measures
# one window, prints one JSON line of figures.
run() {
    local name=$1 n=$2 dir=$WORK/$1
    STOREGUARD_LOG=info NO_COLOR=1 "$BIN/storeguard" --config "$dir/sg.toml" run >"$dir/log" 2>&1 &
    SG_PID=$!
    for _ in $(seq 1 240); do
        cams "$name" 2>/dev/null | python3 -c '
import json, sys
try:
    c = json.load(sys.stdin)["cameras"]
except ValueError:
    sys.exit(1)
sys.exit(0 if len(c) == int(sys.argv[1]) and all(x["state"] == "recording" for x in c) else 1)' "$n" && break
        sleep 0.5
    done
    # Warm-up: motion backgrounds, first full looks, ONNX Runtime's first runs, and still
    # cameras settling into their quiet rate (15 s without motion).
    sleep 30
    cams "$name" >"$dir/before.json"
    local t0 t1 w0
    t0=$(ticks "$SG_PID")
    w0=$(date +%s%N)
    sleep "$SECS"
    t1=$(ticks "$SG_PID")
    cams "$name" >"$dir/after.json"
    local hwm
    hwm=$(kb "$SG_PID" VmHWM)
    python3 - "$name" "$dir" "$t0" "$t1" "$TCK" "$SECS" "$hwm" "$w0" <<'PY'
import json, sqlite3, sys
name, d, t0, t1, tck, secs, hwm, w0 = sys.argv[1:]
secs = float(secs)
b = {c["id"]: c for c in json.load(open(f"{d}/before.json"))["cameras"]}
a = {c["id"]: c for c in json.load(open(f"{d}/after.json"))["cameras"]}
def det(c, k):
    return (c.get("detect") or {}).get(k) or 0
inf = sum(det(a[i], "inferences") - det(b[i], "inferences") for i in a)
still_inf = sum(det(a[i], "inferences") - det(b[i], "inferences") for i in a if i.startswith("still"))
saved = sum(det(a[i], "skipped_static") - det(b[i], "skipped_static") for i in a)
dropped = sum(det(a[i], "dropped") - det(b[i], "dropped") for i in a)
lat = [a[i]["detect"]["latency_ms"] for i in a if i.startswith("people") and a[i].get("detect") and a[i]["detect"].get("latency_ms")]
db = sqlite3.connect(f"{d}/data/storeguard.db")
gaps = db.execute("SELECT count(*) FROM gap WHERE start_ns >= ?", (int(w0),)).fetchone()[0]
cpu = (int(t1) - int(t0)) / int(tck)
print(json.dumps({
    "run": name, "cameras": len(a), "cpu_s": round(cpu, 2), "cpu_pct_of_core": round(100 * cpu / secs, 1),
    "inferences_per_s": round(inf / secs, 2), "still_camera_inferences": still_inf,
    "inferences_saved_by_motion": saved, "dropped": dropped,
    "latency_p50_ms": max((l["p50"] for l in lat), default=None),
    "latency_p95_ms": max((l["p95"] for l in lat), default=None),
    "peak_rss_mb": round(int(hwm) / 1024), "gaps_opened": gaps,
}))
PY
    kill -TERM "$SG_PID"
    wait "$SG_PID" || true
    SG_PID=""
}

config mixed 4 20 true
run mixed 24 | tee "$WORK/mixed.json"
config still-off 0 20 false
run still-off 20 | tee "$WORK/still-off.json"
config still-on 0 20 true
run still-on 20 | tee "$WORK/still-on.json"

python3 - "$WORK" <<'PY'
import json, sys
w = sys.argv[1]
i1, i4 = (json.load(open(f"{w}/infer-{b}.json")) for b in (1, 4))
m = json.load(open(f"{w}/mixed.json"))
off, on = (json.load(open(f"{w}/still-{k}.json")) for k in ("off", "on"))
per_still = (on["cpu_pct_of_core"] - off["cpu_pct_of_core"]) / 20
print()
print("| figure | measured | goal |")
print("|---|---|---|")
for r in (i1, i4):
    print(f"| inference per image, batch {r['batch']}, {r['threads']} thread: ONNX Runtime alone / storeguard | {r['raw_ms_per_image']} ms / {r['storeguard_ms_per_image']} ms = {r['ratio']}× | ≤ 1.1× |")
print(f"| 24 cameras (4 people, 20 still): daemon CPU | {m['cpu_pct_of_core']} % of one core | |")
print(f"| inferences per second | {m['inferences_per_s']} | |")
print(f"| picture → tracked result, people cameras (worst camera) | p50 {m['latency_p50_ms']} ms, p95 {m['latency_p95_ms']} ms | p95 ≤ 1000 ms |")
print(f"| peak RSS | {m['peak_rss_mb']} MB | ≤ 300 MB |")
print(f"| recording gaps opened in the window | {m['gaps_opened']} | none |")
print(f"| inferences on the 20 still cameras in the window | {m['still_camera_inferences']} | 0 |")
print(f"| a still camera's detection cost ((on − off) / 20) | {per_still:.2f} % of a core ({off['cpu_pct_of_core']} → {on['cpu_pct_of_core']} % for 20) | ≤ 0.3 % |")
PY
