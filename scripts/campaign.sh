#!/usr/bin/env bash
# The crash and power-cut campaigns (docs/reliability.md):
#
#   scripts/campaign.sh kill|cut [CYCLES] [sg-campaign options...]     default: 100 cycles
#
# kill: SIGKILL the daemon at random moments and aimed at eviction, clip sealing, upload
# resume and config reload; cut: the same, then a power cut of the data dir's filesystem
# (sg-lazyfs drops every write not yet fsynced). Each restart runs on what survived and is
# checked: integrity_check, every new or changed indexed segment decodes to its indexed
# end, video lost per camera <= sync_interval + one frame, every accepted press still
# committed, every sealed clip verifies; at the end every accepted press must be at the
# receiver exactly once. 8 cameras, presses every 1-2.5 s, a broker that comes and goes.
#
# Builds the debug binaries and runs copies of them (target/campaign/<fault>/bin), so a
# rebuild meanwhile does not change the binaries under test. Output, the JSON report
# and the work directory of a failed run stay in target/campaign/<fault>/.
# SG_PROFILE=release uses a release build instead. SG_CAMPAIGN_SEED replays a run.
set -euo pipefail

FAULT=${1:-}
[[ $FAULT == kill || $FAULT == cut ]] || {
    echo "usage: scripts/campaign.sh kill|cut [CYCLES] [sg-campaign options...]" >&2
    exit 2
}
CYCLES=${2:-100}
shift $(($# >= 2 ? 2 : 1))

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/local/onnxruntime/libonnxruntime.so.1.31.1}"
export GST_REGISTRY="${GST_REGISTRY:-$ROOT/local/gst-registry.bin}"
PROFILE=${SG_PROFILE:-debug}
flags=()
[[ $PROFILE == release ]] && flags=(--release)
cargo build "${flags[@]}" --workspace --bins

OUT=target/campaign/$FAULT
mkdir -p "$OUT/bin"
for b in sg-campaign storeguard fakecam sg-receiver sg-lazyfs; do
    [[ -e target/$PROFILE/$b ]] && cp -f "target/$PROFILE/$b" "$OUT/bin/$b"
done
seed=()
[[ -n ${SG_CAMPAIGN_SEED:-} ]] && seed=(--seed "$SG_CAMPAIGN_SEED")
echo "campaign: $FAULT, $CYCLES cycles, $PROFILE build; log $OUT/campaign.log" >&2
start=$(date +%s)
rc=0
"$OUT/bin/sg-campaign" --fault "$FAULT" --cycles "$CYCLES" --report "$OUT/report.json" \
    "${seed[@]}" "$@" 2>&1 | tee "$OUT/campaign.log" || rc=$?
echo "wall time: $(( $(date +%s) - start )) s; report: $OUT/report.json" | tee -a "$OUT/campaign.log"
exit "$rc"
