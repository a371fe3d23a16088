#!/usr/bin/env bash
# Remote configuration and commands over a local mosquitto (docs/remote.md, "Figures"):
# desired -> reported `applied` for camera-only changes, and a snapshot command's round trip.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GST_REGISTRY=${GST_REGISTRY:-$PWD/local/gst-registry.bin}
cargo build --workspace --bins --tests -q
cargo test -q -p storeguard --test it remote::bench_remote -- --ignored --nocapture 2>&1 \
    | grep -E "desired ->|sg-control: snapshot"
