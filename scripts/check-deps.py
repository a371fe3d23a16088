#!/usr/bin/env python3
"""Keeps ARCHITECTURE.md's dependency rules true.

1. Crates: each workspace crate depends (normal dependencies) only on the project crates
   its rule allows; the device crate links no fixture and no control-centre code.
2. Modules: inside each crate, the graph of top-level modules (`crate::x` uses) has no
   cycle, and the device crate's layers only point down.

Exits 1 naming every broken rule. Needs only python3 and cargo.
"""
import json, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Which project crates each crate may depend on (normal dependencies).
CRATE_RULES = {
    "storeguard-base": set(),
    "storeguard-proto": {"storeguard-base"},
    "storeguard": {"storeguard-base", "storeguard-proto", "storeguard-detect"},
    "storeguard-centre": {"storeguard-base", "storeguard-proto"},
    "storeguard-fixtures": {"storeguard-base"},
    "storeguard-detect": set(),
}

# Device crate layers, lowest first: a module may use modules of its own layer's
# predecessors only (and never one above it).
DEVICE_LAYERS = [
    {"logging"},
    {"config"},
    {"store"},
    {"exit"},
    {"recording", "button", "timekeep"},
    {"camera", "evidence", "uplink", "detect"},
    {"state"},
    {"cmd"},
    {"control", "remote"},
    {"daemon"},
    {"cli"},
    # Fuzz entry points: reach any module, used by nothing of the crate.
    {"fuzzing"},
]

def crate_deps():
    meta = json.loads(subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT))
    problems = []
    names = {p["name"] for p in meta["packages"]}
    for p in meta["packages"]:
        allowed = CRATE_RULES.get(p["name"])
        if allowed is None:
            problems.append(f"{p['manifest_path']}: crate {p['name']} has no rule in scripts/check-deps.py")
            continue
        for d in p["dependencies"]:
            if d["name"] in names and d.get("kind") in (None, "normal", "build") and d["name"] not in allowed:
                problems.append(f"{p['manifest_path']}: {p['name']} must not depend on {d['name']}")
    return problems

USE = re.compile(r"\bcrate::(\w+)")

def module_graph(src: Path):
    """Top-level module -> the top-level modules it names (tests excluded)."""
    graph = {}
    for f in src.rglob("*.rs"):
        rel = f.relative_to(src)
        top = rel.parts[0].removesuffix(".rs")
        if top in ("lib", "main", "bin"):
            continue
        text = f.read_text()
        # Unit tests may reach anywhere.
        text = text.split("#[cfg(test)]")[0]
        for m in USE.finditer(text):
            if m.group(1) != top:
                graph.setdefault(top, set()).add(m.group(1))
        graph.setdefault(top, set())
    return graph

def cycles(graph):
    found, state, stack = [], {}, []
    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m in graph and state.get(m) is None:
                visit(m)
        stack.pop()
        state[n] = 2
    for n in sorted(graph):
        if state.get(n) is None:
            visit(n)
    return found

def main():
    problems = crate_deps()
    for src in sorted(ROOT.glob("crates/*/src")):
        g = module_graph(src)
        for c in cycles(g):
            problems.append(f"{src}: module cycle {' -> '.join(c)}")
        if src.parent.name == "storeguard":
            layer = {m: i for i, ms in enumerate(DEVICE_LAYERS) for m in ms}
            for m, uses in sorted(g.items()):
                if m not in layer:
                    problems.append(f"{src}/{m}: module has no layer in scripts/check-deps.py")
                    continue
                for u in sorted(uses):
                    if u in layer and layer[u] >= layer[m] and u != m:
                        problems.append(f"{src}/{m}: uses crate::{u}, which is not below it")
    for p in problems:
        print(f"check-deps: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print("check-deps: crate and module dependency rules hold")

main()
