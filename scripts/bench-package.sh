#!/usr/bin/env bash
# Evidence package cost: 4 cameras x 5 minutes straight from the ring (no transcoding) into
# a folder and into a .zip, then `evidence verify` of each. Goal: package <= 10 s.
#
#   scripts/bench-package.sh [CAMERAS] [MINUTES]          default: 4 5
#
# Cameras: 1080p, 15 fps, 2 s GOP, about 3 Mbit/s (bench-lib.sh, as bench-recording.sh),
# served by one fakecam. The daemon records MINUTES plus a margin,
# then the package covers the last MINUTES. Timed with the wall clock, release build.
# Needs: ffmpeg, vtest.avi from `scripts/setup.sh media`, ~1 GB free in /tmp.
set -euo pipefail

N=${1:-4}
MIN=${2:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
(cd "$ROOT" && cargo build --release -p storeguard --bin storeguard && cargo build --release -p storeguard-fixtures --bin fakecam)
WORK=$(mktemp -d /tmp/sg-bench-pkg.XXXXXX)
CACHE=$ROOT/target/bench-media
mkdir -p "$CACHE"
FC_PID="" SG_PID="" FC_IN=""
# shellcheck source=bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
cleanup() { bench_cleanup ${SG_PID:+"$SG_PID"}; }
trap cleanup EXIT
bench_source "$ROOT" "$CACHE"
start_fakecam "$BIN" "$WORK" "$CACHE" "$N"

{
    printf '[site]\nsite_id = "bench"\ndevice_id = "bench"\n\n[storage]\ndata_dir = "data"\n'
    printf 'budget = "8GiB"\nsegment_length = "10s"\n\n[control]\nsocket = "control.sock"\n'
    for i in $(seq 1 "$N"); do
        printf '\n[[cameras]]\nid = "cam%d"\nname = "Camera %d"\nurl = "rtsp://127.0.0.1:%d/cam%d"\n' "$i" "$i" "$PORT" "$i"
    done
} >"$WORK/sg.toml"
"$BIN/storeguard" --config "$WORK/sg.toml" run >"$WORK/sg.log" 2>&1 &
SG_PID=$!
SG=("$BIN/storeguard" --config "$WORK/sg.toml")
echo "recording $N cameras for $MIN min + 20 s..." >&2
sleep $((MIN * 60 + 20))
TO=$(date -u -d '-5 seconds' +%Y-%m-%dT%H:%M:%S.000Z)
FROM=$(date -u -d "-$((MIN * 60 + 5)) seconds" +%Y-%m-%dT%H:%M:%S.000Z)
CAMS=$(seq -s, -f 'cam%g' 1 "$N")
KEY=$("${SG[@]}" status --json | sed -n 's/.*"public_key": *"\([^"]*\)".*/\1/p')

t() { local s e; s=$(date +%s.%N); "$@" >"$WORK/last.out" 2>&1 || { cat "$WORK/last.out" >&2; exit 1; }; e=$(date +%s.%N); awk -v s="$s" -v e="$e" 'BEGIN { printf "%.2f", e - s }'; }
for kind in dir zip; do
    out=$WORK/pkg-$kind; [[ $kind == zip ]] && out=$out.zip
    p=$(t "${SG[@]}" evidence package --cameras "$CAMS" --from "$FROM" --to "$TO" --out "$out")
    size=$(du -sb "$out" | cut -f1)
    v=$(t "${SG[@]}" evidence verify "$out" --pubkey "$KEY")
    echo "package $kind: $N cameras x $MIN min, $((size / 1000000)) MB: package ${p} s, verify ${v} s"
done
