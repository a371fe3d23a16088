#!/usr/bin/env bash
# Install test of the Debian packages in a fresh Debian 12 root (debootstrap + chroot).
#
#   scripts/test-deb.sh [--profile dev|release] [--no-build] [--keep]
#
# 1. scripts/build-deb.sh --arch amd64 (--profile, default dev: CI has a debug build already).
# 2. A fresh root: a copy of a cached minbase bookworm debootstrap (local/deb-test/base, made on
#    the first run, ~40 s), with the .debs that apt downloaded before (local/deb-test/archives).
# 3. `apt-get install ./storeguard*.deb` inside it: apt resolves the packages' own Depends.
# 4. Checks inside the root (listed below), then `deb-install: N passed, M failed`.
# --keep leaves the root in local/deb-test/run for a look. Needs root, debootstrap, chroot, and
# a Debian mirror (the one apt uses here, or DEB_TEST_MIRROR). Exit status 0 only if all passed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
STATE=$REPO/local/deb-test
SUITE=bookworm
die() { echo "test-deb: $*" >&2; exit 1; }
log() { echo "test-deb: $*" >&2; }
start=$SECONDS

profile=dev build=(--profile dev) keep=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --profile) profile=${2:?}; build=(--profile "$profile"); shift 2 ;;
        --no-build) build+=(--no-build); shift ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ $(id -u) == 0 ]] || die "needs root (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap; scripts/check-delivery.sh does)"

# The Debian mirror apt already uses on this machine (deb822 or one-line form), else the CDN.
mirror=${DEB_TEST_MIRROR:-}
if [[ -z $mirror ]]; then
    mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | grep -oE 'https?://[^ ]*/debian/?( |$)' | head -n1 | tr -d ' ' || true)
    mirror=${mirror:-http://deb.debian.org/debian}
fi

# --- 1. packages ---
mapfile -t debs < <(scripts/build-deb.sh "${build[@]}" --arch amd64)
[[ ${#debs[@]} == 3 ]] || die "build-deb.sh gave ${#debs[@]} packages, expected 3"
version=$(dpkg-deb -f "${debs[0]}" Version)
t_build=$((SECONDS - start))

# --- 2. root ---
run=$STATE/run
# Never rm -rf a root that still has something mounted in it (proc here).
unmount_run() {
    local m
    for m in $(findmnt -rn -o TARGET | grep -E "^$run(/|$)" | sort -r || true); do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
    if findmnt -rn -o TARGET | grep -qE "^$run(/|$)"; then
        die "still mounted under $run; not removing it"
    fi
}
cleanup() {
    unmount_run
    [[ $keep == 1 ]] || rm -rf "$run"
}
trap cleanup EXIT
mkdir -p "$STATE/archives/partial"
unmount_run
rm -rf "$run"

base=$STATE/base
if [[ ! -f $base/.storeguard-base ]] || [[ $(cat "$base/.storeguard-base") != "$SUITE $mirror" ]]; then
    log "debootstrap --variant=minbase $SUITE from $mirror (once; cached in $base)"
    rm -rf "$base" "$base.new"
    t0=$SECONDS
    debootstrap --variant=minbase "$SUITE" "$base.new" "$mirror" >"$STATE/debootstrap.log" 2>&1 \
        || { tail -20 "$STATE/debootstrap.log" >&2; die "debootstrap failed (log: $STATE/debootstrap.log)"; }
    # Daemons in packages must not start in the chroot.
    printf '#!/bin/sh\nexit 101\n' >"$base.new/usr/sbin/policy-rc.d"
    chmod 0755 "$base.new/usr/sbin/policy-rc.d"
    rm -f "$base.new"/var/cache/apt/archives/*.deb
    echo "$SUITE $mirror" >"$base.new/.storeguard-base"
    mv "$base.new" "$base"
    log "debootstrap took $((SECONDS - t0)) s"
fi
cp -a "$base" "$run"
mount -t proc proc "$run/proc"
cp -a "$STATE/archives/." "$run/var/cache/apt/archives/"
mkdir -p "$run/tmp/debs"
cp "${debs[@]}" "$run/tmp/debs/"
t_root=$((SECONDS - start))

# --- 3. install ---
in_root() { chroot "$run" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "$@"; }
apt_install() {
    # gstreamer1.0-tools only for the element check below; it is not a dependency.
    # --force-unsafe-io: no fsync per unpacked file; this root is thrown away (halves the time).
    in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o DPkg::Options::=--force-unsafe-io \
        "${debs[@]/#*\//\/tmp\/debs\/}" gstreamer1.0-tools
}
log "installing $(basename -a "${debs[@]}" | tr '\n' ' ')with apt in the fresh root"
if ! apt_install >"$STATE/install.log" 2>&1; then
    # Cached lists can go stale (mirror moved on): refresh once and retry.
    log "install failed, running apt-get update and retrying"
    in_root apt-get update -q >>"$STATE/install.log" 2>&1 || true
    apt_install >>"$STATE/install.log" 2>&1 \
        || { tail -30 "$STATE/install.log" >&2; die "apt-get install failed (log: $STATE/install.log)"; }
fi
# Keep what apt downloaded for the next run.
cp -a -n "$run"/var/cache/apt/archives/*.deb "$STATE/archives/" 2>/dev/null || true
t_install=$((SECONDS - start))

# --- 4. checks ---
pass=0 fail=0
check() {
    local name=$1; shift
    local out
    if out=$("$@" 2>&1); then
        echo "PASS $name"; pass=$((pass + 1))
    else
        echo "FAIL $name"; [[ -n $out ]] && echo "$out" | sed 's/^/     /'; fail=$((fail + 1))
    fi
}
expect_eq() { [[ $1 == "$2" ]] || { echo "got:      $1"; echo "expected: $2"; return 1; }; }
expect_empty_ok() { local out rc=0; out=$("$@" 2>&1) || rc=$?; [[ $rc == 0 && -z $out ]] || { echo "$out (exit $rc)"; return 1; }; }

check "storeguard --version is $version" expect_eq "$(in_root storeguard --version 2>&1)" "storeguard $version"
check "config validate /etc/storeguard/storeguard.toml, as user storeguard" \
    in_root runuser -u storeguard -- storeguard config validate /etc/storeguard/storeguard.toml
check "systemd-analyze verify storeguard.service: no output" \
    expect_empty_ok in_root systemd-analyze verify /usr/lib/systemd/system/storeguard.service
check "user storeguard (home /var/lib/storeguard, nologin) in group gpio" bash -c '
    set -e
    [[ $(chroot "$1" getent passwd storeguard | cut -d: -f6,7) == /var/lib/storeguard:/usr/sbin/nologin ]]
    chroot "$1" id -nG storeguard | tr " " "\n" | grep -qx gpio' _ "$run"
check "directories and config: owner, group, mode" expect_eq \
    "$(cd "$run" && in_root stat -c '%n %U:%G %a' /etc/storeguard /etc/storeguard/storeguard.toml \
        /var/lib/storeguard /var/log/storeguard /var/cache/storeguard | tr '\n' ';')" \
    "/etc/storeguard root:storeguard 770;/etc/storeguard/storeguard.toml root:storeguard 660;/var/lib/storeguard storeguard:storeguard 750;/var/log/storeguard storeguard:storeguard 750;/var/cache/storeguard storeguard:storeguard 750;"
check "/etc/storeguard/storeguard.toml is a conffile" \
    bash -c 'chroot "$1" dpkg-query -W -f="\${Conffiles}" storeguard | grep -q "^ /etc/storeguard/storeguard.toml "' _ "$run"
check "one binary, no fixtures (fakecam, sg-demo, sg-receiver)" bash -c '
    set -e
    [[ $(chroot "$1" dpkg -L storeguard | grep -c "/bin/") == 1 ]]
    for b in fakecam sg-demo sg-receiver; do [[ ! -e $1/usr/bin/$b ]]; done' _ "$run"
check "every shared library of storeguard and libonnxruntime resolves" bash -c '
    ! chroot "$1" ldd /usr/bin/storeguard /usr/lib/storeguard/onnxruntime/libonnxruntime.so.1.31.1 | grep "not found"' _ "$run"
check "GStreamer elements the daemon creates are installed" in_root bash -c '
    for e in rtspsrc rtph264depay rtph265depay h264parse h265parse mp4mux qtmux jpegenc appsink filesink fakesink; do
        gst-inspect-1.0 --exists "$e" || { echo "missing element $e"; exit 1; }
    done'
check "model at /usr/share/storeguard/models matches SHA256SUMS" \
    in_root bash -c 'cd /usr/share/storeguard/models && sha256sum --quiet -c SHA256SUMS'
check "service drop-in points ORT_DYLIB_PATH at the installed library" bash -c '
    p=$(sed -n "s/^Environment=ORT_DYLIB_PATH=//p" "$1/usr/lib/systemd/system/storeguard.service.d/onnxruntime.conf")
    [[ -n $p && -f $1$p ]]' _ "$run"
check "remove and reinstall keeps /var/lib/storeguard and its owner" bash -c '
    set -e
    touch "$1/var/lib/storeguard/keep"
    chroot "$1" dpkg --purge storeguard >/dev/null
    [[ -e $1/var/lib/storeguard/keep ]]
    chroot "$1" dpkg -i "/tmp/debs/$2" >/dev/null
    [[ $(chroot "$1" stat -c %U /var/lib/storeguard/keep) == root && $(chroot "$1" stat -c %U /var/lib/storeguard) == storeguard ]]
    [[ -f $1/etc/storeguard/storeguard.toml ]]' _ "$run" "$(basename "${debs[0]}")"

t_all=$((SECONDS - start))
echo "test-deb: timings: packages ${t_build} s, root $((t_root - t_build)) s, apt install $((t_install - t_root)) s, checks $((t_all - t_install)) s, total ${t_all} s"
echo "deb-install: $pass passed, $fail failed"
[[ $fail == 0 ]]
