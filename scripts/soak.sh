#!/usr/bin/env bash
# The outage soak (docs/reliability.md, "Outage soak"): a broker outage of OUTAGE_SECONDS
# (default 3600) with a press every 10 s, telemetry and clip backlog, then the drain;
# checks that nothing is lost or duplicated and that the daemon's resources stay bounded.
#
#   scripts/soak.sh [OUTAGE_SECONDS] [sg-soak options...]
#
# Env: SOAK_PROFILE=release|debug (default release), SOAK_CAMERAS (default 20),
# SOAK_OUT (default target/soak/run-<UTC time>). Figures: $SOAK_OUT/report.json,
# $SOAK_OUT/samples.tsv (one row per sample) and the summary on stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
outage=${1:-3600}
shift || true
profile=${SOAK_PROFILE:-release}
export GST_REGISTRY=${GST_REGISTRY:-$PWD/local/gst-registry.bin}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/local/onnxruntime/libonnxruntime.so.1.31.1}
if [[ $profile == release ]]; then
    cargo build --release --workspace --bins -q
else
    cargo build --workspace --bins -q
fi
out=${SOAK_OUT:-target/soak/run-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
echo "soak: $outage s outage, $profile build, output in $out" >&2
# Work files (site, receiver, broker) live under $out/work and are kept for inspection.
exec "target/$profile/sg-soak" --outage "$outage" --cameras "${SOAK_CAMERAS:-20}" \
    --clip-cameras 4 --budget 1GiB --work-dir "$out/work" \
    --report "$out/report.json" --samples "$out/samples.tsv" "$@"
