#!/usr/bin/env bash
# Create (or reuse) the lint venv: local/lint-venv with pinned oelint-adv and bitbake-setup
# (bitbake's `bb` parser, for yocto-layer/tools/parse-check.py). Not installed globally.
# Also jsonschema, for scripts/check-schemas.sh.
#
#   scripts/setup-lint.sh        prints the venv's python path on stdout
#
# Idempotent: a venv whose pins already match is reused (no network then). Needs python3 with
# venv (Debian: python3-venv) and PyPI.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$REPO/local/lint-venv
# Pinned together: oelint-adv's rule set changes between releases, and CI must not change verdict
# because PyPI moved on.
PINS=(oelint-adv==9.11.2 oelint-parser==8.13.2 oelint-data==1.5.26 bitbake-setup==2.19.0 jsonschema==4.26.0 referencing==0.37.0)
log() { echo "setup-lint: $*" >&2; }

stamp=$VENV/.pins
if [[ -x $VENV/bin/python && -f $stamp && $(cat "$stamp") == "${PINS[*]}" ]]; then
    echo "$VENV/bin/python"
    exit 0
fi
python3 -c 'import ensurepip, venv' 2>/dev/null \
    || { log "python3 has no venv/ensurepip (Debian: apt-get install python3-venv)"; exit 1; }
log "creating $VENV (${PINS[*]})"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input "${PINS[@]}" >&2
echo "${PINS[*]}" >"$stamp"
echo "$VENV/bin/python"
