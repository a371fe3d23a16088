#!/usr/bin/env bash
# Static checks of yocto-layer/ (CI runs this through scripts/check-delivery.sh):
#  1. storeguard-crates.inc matches Cargo.lock (scripts/gen-yocto-crates.py --check);
#  2. oelint-adv, for wrynose, on every recipe: no finding at all (suppressions are inline, each
#     with its reason);
#  3. bitbake's parser on every recipe (yocto-layer/tools/parse-check.py).
# None of this is a bitbake build. Prints one line per check and a summary line.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
py=$(scripts/setup-lint.sh)
venv=$(dirname "$py")
pass=0 fail=0
check() {
    local name=$1; shift
    local out
    if out=$("$@" 2>&1); then
        echo "ok   $name"; pass=$((pass + 1))
    else
        echo "$out" | sed 's/^/     /'
        echo "FAIL $name"; fail=$((fail + 1))
    fi
}

check "crate list matches Cargo.lock" python3 scripts/gen-yocto-crates.py --check
shopt -s nullglob
recipes=(yocto-layer/recipes-*/*/*.bb yocto-layer/recipes-*/*/*.bbappend)
# --suppress oelint.vars.homepageping: that rule fetches HOMEPAGE over the web, which CI cannot
# reach (package registries only); it is about the network, not the recipe.
check "oelint-adv (${#recipes[@]} recipes, release wrynose)" \
    "$venv/oelint-adv" --release wrynose --mode all --quiet --relpaths \
    --suppress oelint.vars.homepageping "${recipes[@]}"
check "bitbake parse (stub classes)" "$py" yocto-layer/tools/parse-check.py

echo "yocto-lint: $pass passed, $fail failed"
[[ $fail == 0 ]]
