#!/usr/bin/env bash
# Static checks of the systemd files in systemd/ (CI runs this).
#
#   scripts/check-systemd.sh [BINARY]
#
# - `systemd-analyze verify` on storeguard.service must print nothing (no warning at all).
#   verify insists that ExecStart's binary exists: when /usr/bin/storeguard is missing, the unit is
#   checked from a temporary copy whose ExecStart points at BINARY (default: target/release or
#   target/debug storeguard of this repo, else /bin/true).
# - `systemd-analyze security --offline=true` exposure must be <= 2.0 (printed).
# - storeguard.sysusers.conf and storeguard.tmpfiles.conf are applied to a throwaway root.
# Needs systemd-analyze (Debian package systemd; scripts/setup.sh installs it). systemd need not be
# PID 1. Exit status 0 only when every check passes.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
UNIT=$REPO/systemd/storeguard.service
MAX_EXPOSURE=2.0

command -v systemd-analyze >/dev/null \
    || { echo "check-systemd: systemd-analyze not found (apt-get install systemd, or scripts/setup.sh)" >&2; exit 1; }

binary=${1:-}
if [[ -z $binary ]]; then
    if [[ -x /usr/bin/storeguard ]]; then
        binary=/usr/bin/storeguard
    else
        for b in "$REPO/target/release/storeguard" "$REPO/target/debug/storeguard"; do
            [[ -x $b ]] && { binary=$b; break; }
        done
    fi
fi
if [[ -z $binary ]]; then
    # verify only needs an executable there; say so rather than fail on build order.
    binary=/bin/true
    echo "check-systemd: no storeguard binary built yet, verifying with ExecStart=$binary"
fi
binary=$(realpath "$binary")
[[ -x $binary ]] || { echo "check-systemd: $binary is not an executable file" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$UNIT" "$tmp/storeguard.service"
if [[ $binary != /usr/bin/storeguard ]]; then
    sed -i "s|^ExecStart=/usr/bin/storeguard |ExecStart=$binary |" "$tmp/storeguard.service"
fi
grep -q "^ExecStart=$binary " "$tmp/storeguard.service" \
    || { echo "check-systemd: could not point ExecStart at $binary" >&2; exit 1; }

fail=0

echo "== systemd-analyze verify (ExecStart=$binary)"
out=$(cd "$tmp" && systemd-analyze verify ./storeguard.service 2>&1) || fail=1
if [[ -n $out ]]; then
    echo "$out"
    echo "verify: FAILED (output above)"
    fail=1
else
    echo "verify: clean"
fi

echo "== systemd-analyze security --offline=true"
sec=$(cd "$tmp" && systemd-analyze security --offline=true --threshold=20 ./storeguard.service 2>&1) || true
echo "$sec" | grep -v '^✓' || true
exposure=$(echo "$sec" | sed -n 's/.*Overall exposure level for storeguard.service: \([0-9.]*\).*/\1/p')
if [[ -z $exposure ]]; then
    echo "security: FAILED (no exposure level in the output)"
    fail=1
elif awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }'; then
    echo "security: exposure $exposure <= $MAX_EXPOSURE"
else
    echo "security: FAILED, exposure $exposure > $MAX_EXPOSURE"
    fail=1
fi

echo "== sysusers and tmpfiles (throwaway root)"
root=$tmp/root
mkdir -p "$root/etc" "$root/var/lib" "$root/var/log" "$root/var/cache" \
    "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
cp "$REPO/systemd/storeguard.sysusers.conf" "$root/usr/lib/sysusers.d/storeguard.conf"
cp "$REPO/systemd/storeguard.tmpfiles.conf" "$root/usr/lib/tmpfiles.d/storeguard.conf"
if out=$(systemd-sysusers --root="$root" storeguard.conf 2>&1) \
    && grep -q '^storeguard:' "$root/etc/passwd" && grep -q '^gpio:.*storeguard' "$root/etc/group" \
    && out2=$(systemd-tmpfiles --root="$root" --create storeguard.conf 2>&1) \
    && [[ -d $root/var/lib/storeguard && -d $root/etc/storeguard && -z $out2 ]]; then
    echo "sysusers/tmpfiles: ok"
else
    echo "${out:-} ${out2:-}"
    echo "sysusers/tmpfiles: FAILED"
    fail=1
fi

if [[ $fail != 0 ]]; then
    echo "check-systemd: FAILED"
    exit 1
fi
echo "check-systemd: ok (exposure $exposure)"
