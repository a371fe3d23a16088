#!/usr/bin/env bash
# Put ONNX Runtime's shared library (CPU build) into DEST and print its path.
#
#   scripts/fetch-onnxruntime.sh [DEST]       DEST defaults to <repo>/local/onnxruntime (gitignored)
#
# The library comes from the PyPI wheel onnxruntime==1.31.1 (manylinux, x86_64 or aarch64, matching
# this host), fetched with pip and unpacked with Python's zipfile: no CDN, no extra tools. It must
# match the `ort` crate's api-31 feature. Point the daemon at it with ORT_DYLIB_PATH=<printed path>.
# Idempotent: an existing library in DEST is reused. Only the path goes to stdout.
set -euo pipefail

VERSION=1.31.1
LIB=libonnxruntime.so.$VERSION
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=${1:-$REPO/local/onnxruntime}
log() { echo "fetch-onnxruntime: $*" >&2; }

case $(uname -m) in
    x86_64) elf_machine=x86-64 ;;
    aarch64|arm64) elf_machine=aarch64 ;;
    *) log "no onnxruntime $VERSION wheel for $(uname -m) (x86_64 and aarch64 only)"; exit 1 ;;
esac

mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
if [[ -s $dest/$LIB ]]; then
    log "reusing $dest/$LIB"
    echo "$dest/$LIB"
    exit 0
fi

python3 -m pip --version >/dev/null 2>&1 \
    || { log "python3 -m pip is required (Debian: apt-get install python3-pip)"; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log "downloading onnxruntime==$VERSION wheel for $(uname -m)"
# The host's own Python picks the wheel; the library inside is the same for every cpXY tag.
python3 -m pip download --quiet --disable-pip-version-check --no-input --no-deps \
    --only-binary=:all: -d "$tmp" "onnxruntime==$VERSION" >&2
wheel=$(ls "$tmp"/onnxruntime-"$VERSION"-*.whl)
log "unpacking $(basename "$wheel")"
python3 - "$wheel" "$tmp/$LIB" "$LIB" <<'EOF'
import shutil, sys, zipfile
wheel, out, lib = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open("onnxruntime/capi/" + lib) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF

# Refuse a library for another machine (e.g. a foreign pip configuration).
if command -v file >/dev/null; then
    file -L "$tmp/$LIB" | grep -qi "$elf_machine" \
        || { log "$LIB is not an $elf_machine ELF: $(file -L "$tmp/$LIB")"; exit 1; }
fi
chmod 0644 "$tmp/$LIB"
mv "$tmp/$LIB" "$dest/$LIB.part"
mv "$dest/$LIB.part" "$dest/$LIB"
ln -sfn "$LIB" "$dest/libonnxruntime.so"
log "installed $dest/$LIB ($(du -h "$dest/$LIB" | cut -f1))"
echo "$dest/$LIB"
