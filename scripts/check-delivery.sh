#!/usr/bin/env bash
# Delivery checks, the one entry point CI calls (after scripts/setup.sh; as root, no stdin):
#
#   scripts/check-delivery.sh
#
#  1. yocto-layer: crate list fresh against Cargo.lock, oelint-adv clean, bitbake parse
#     (scripts/lint-yocto.sh; its venv is local/lint-venv);
#  2. Debian packages: build the amd64 .debs and install them into a fresh Debian 12 root
#     (scripts/test-deb.sh; cached in local/deb-test).
# Env: DELIVERY_PROFILE=dev|release, the cargo profile of the packaged binary (default dev: CI
# has just built the debug tree, and the packaging is the same either way).
# Ends with `delivery: N passed, M failed` (the sum of both steps); exit 0 only if all passed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
start=$SECONDS
[[ $(id -u) == 0 ]] || { echo "check-delivery: needs root (apt-get, debootstrap, chroot)" >&2; exit 1; }

# Tools beyond scripts/setup.sh's: debootstrap, a venv-capable python3, file(1).
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v file >/dev/null || need+=(file)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [[ ${#need[@]} -gt 0 ]]; then
    echo "check-delivery: apt-get install ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" </dev/null >/dev/null
fi

pass=0 fail=0
step() {
    local name=$1 tag=$2; shift 2
    local t0=$SECONDS log rc=0 line
    log=$(mktemp)
    echo "== $name"
    "$@" </dev/null 2>&1 | tee "$log" || rc=$?
    # Count the step's own summary line; a step that died before printing one counts as 1 failure.
    line=$(grep -E "^$tag: [0-9]+ passed, [0-9]+ failed$" "$log" | tail -n1 || true)
    rm -f "$log"
    if [[ -n $line ]]; then
        read -r p f < <(sed -E 's/.* ([0-9]+) passed, ([0-9]+) failed/\1 \2/' <<<"$line")
        pass=$((pass + p)); fail=$((fail + f))
        [[ $rc == 0 || $f -gt 0 ]] || fail=$((fail + 1))
    else
        fail=$((fail + 1))
    fi
    echo "== $name: exit $rc, $((SECONDS - t0)) s"
}

step "yocto layer (crate list, oelint-adv, parse check)" yocto-lint scripts/lint-yocto.sh
step "Debian packages (build, install in a fresh Debian 12 root)" deb-install \
    scripts/test-deb.sh --profile "${DELIVERY_PROFILE:-dev}"

echo "check-delivery: $((SECONDS - start)) s in all"
echo "delivery: $pass passed, $fail failed"
[[ $fail == 0 ]]
