#!/usr/bin/env bash
# Setup's media step on a fresh clone: no ../shared beside the repo, nothing in local/.
#
#   scripts/test-setup-fresh.sh
#
# Runs `scripts/setup.sh media` with SETUP_SHARED_DIR=/nonexistent and SETUP_MEDIA_DIR in a
# temporary directory, so the files come from the registries (Debian's opencv-doc .deb, about
# 96 MB, and the scikit-image wheel, about 15 MB). Then checks: the three files and their pinned
# sha256; a second run is a no-op; a corrupt file is replaced; a shared dir is used when there.
# Needs network to Debian and PyPI. Prints `setup-fresh: N passed, M failed`; exits 1 on a failure.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SETUP=${SETUP_SCRIPT:-$REPO/scripts/setup.sh}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }

# The pins, written out here too, so a changed scripts/media.sha256 is noticed.
declare -A want=(
    [vtest.avi]=45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf
    [messi5.jpg]=1d570e49654e84c7a943918537bd9e5e1ef82920152e147c834006e235be97c9
    [astronaut.png]=88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5
)
check_files() { # DIR LABEL
    local name got
    for name in vtest.avi messi5.jpg astronaut.png; do
        if [[ ! -f $1/$name ]]; then
            bad "$2: $name missing in $1"
            continue
        fi
        got=$(sha256sum "$1/$name" | cut -d' ' -f1)
        if [[ $got == "${want[$name]}" ]]; then ok "$2: $name sha256"; else bad "$2: $name sha256 $got"; fi
    done
}
run_setup() { # SHARED MEDIA LOG
    SETUP_SHARED_DIR=$1 SETUP_MEDIA_DIR=$2 "$SETUP" media </dev/null >"$3" 2>&1
}

# 1. Fresh: no shared dir, empty media dir.
media=$tmp/local/media
t0=$SECONDS
if run_setup /nonexistent "$media" "$tmp/fresh.log"; then
    ok "fresh: setup media exits 0 ($((SECONDS - t0)) s)"
else
    bad "fresh: setup media failed:"; sed 's/^/    /' "$tmp/fresh.log"
fi
check_files "$media" fresh
leftovers=$(find "$media" -name "*.part" 2>/dev/null | wc -l)
[[ $leftovers == 0 ]] && ok "fresh: no .part files left" || bad "fresh: $leftovers .part files left"

# 2. Idempotent: a second run fetches nothing and is fast.
t0=$SECONDS
if run_setup /nonexistent "$media" "$tmp/again.log" && ! grep -q fetching "$tmp/again.log" \
    && ((SECONDS - t0 <= 2)); then
    ok "again: no download, $((SECONDS - t0)) s"
else
    bad "again: second run:"; sed 's/^/    /' "$tmp/again.log"
fi

# 3. A corrupt file is replaced (here from a shared dir, which is the fast path).
mkdir -p "$tmp/shared/media"
cp "$media"/* "$tmp/shared/media/" 2>/dev/null
echo corrupt >"$media/messi5.jpg"
rm -f "$media/vtest.avi"
if run_setup "$tmp/shared" "$media" "$tmp/shared.log" && ! grep -q fetching "$tmp/shared.log" \
    && grep -q "messi5.jpg from $tmp/shared/media" "$tmp/shared.log"; then
    ok "shared: corrupt and missing files copied from SETUP_SHARED_DIR"
else
    bad "shared: run:"; sed 's/^/    /' "$tmp/shared.log"
fi
check_files "$media" shared

echo "setup-fresh: $passed passed, $failed failed"
[[ $failed == 0 ]]
