#!/usr/bin/env bash
# Every payload kind, as the code builds it, against its JSON Schema in docs/schemas/: the
# schemas are the contract with the control centre, so CI keeps them true.
#
#   scripts/check-schemas.sh
#
# Samples come from storeguard-proto's `write_samples` test; jsonschema from the pinned lint
# venv (scripts/setup-lint.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py=$(scripts/setup-lint.sh)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
SG_SAMPLES_DIR=$dir cargo test -q -p storeguard-proto --lib write_samples >/dev/null
"$py" - "$dir" <<'PY'
import glob, json, os, sys
import jsonschema
from referencing import Registry, Resource

samples = sys.argv[1]
reg = Registry()
schemas = {}
for f in glob.glob("docs/schemas/*.schema.json"):
    d = json.load(open(f))
    jsonschema.Draft202012Validator.check_schema(d)
    reg = reg.with_resource(d["$id"], Resource.from_contents(d))
    schemas[os.path.basename(f)] = d
kinds = {
    "status-online.json": "status", "status-online-clock.json": "status",
    "status-offline.json": "status", "status-will.json": "status",
    "alert.json": "alert", "health.json": "health", "manifest-msg.json": "manifest-msg",
    "chunk-header.json": "chunk-header", "clip-ack.json": "clip-ack",
    "clip-ack-incomplete.json": "clip-ack", "config-desired.json": "config-desired",
    "config-reported.json": "config-reported", "cmd.json": "cmd", "cmd-result.json": "cmd-result",
    "cmd-result-package.json": "cmd-result", "evidence-package.json": "evidence-package",
    "package-msg.json": "package-msg", "clip-ack-package.json": "clip-ack",
    "shot.json": "shot",
}
bad = 0
for sample, kind in sorted(kinds.items()):
    inst = json.load(open(os.path.join(samples, sample)))
    v = jsonschema.Draft202012Validator(schemas[kind + ".schema.json"], registry=reg)
    errs = [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in v.iter_errors(inst)]
    for e in errs:
        print(f"check-schemas: {sample} vs {kind}.schema.json: {e}")
    bad += bool(errs)
print(f"check-schemas: {len(kinds) - bad} payloads match their schemas, {bad} do not "
      f"({len(schemas)} schemas well-formed)")
sys.exit(1 if bad else 0)
PY
