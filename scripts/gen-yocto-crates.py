#!/usr/bin/env python3
"""Generate the Yocto crate list (storeguard-crates.inc) from Cargo.lock, without bitbake.

    scripts/gen-yocto-crates.py            rewrite yocto-layer/recipes-storeguard/storeguard/storeguard-crates.inc
    scripts/gen-yocto-crates.py --check    exit 1 (and say what differs) when the file is out of date
    scripts/gen-yocto-crates.py --lock L --out F   other paths

The output has the shape that oe-core's cargo-update-recipe-crates class writes
(`bitbake -c update_crates storeguard`): one `crate://crates.io/NAME/VERSION` SRC_URI entry per
registry crate, in Cargo.lock order, then one `SRC_URI[NAME-VERSION.sha256sum]` per crate. The
crate fetcher names each entry NAME-VERSION by itself, which is what the checksum keys refer to,
so this works on scarthgap's and wrynose's fetcher alike. The sha256 is Cargo.lock's `checksum`
(the sha256 of the .crate file, which is what bitbake verifies).

Python 3.11+ standard library only (tomllib).
"""

import argparse
import difflib
import os
import sys

try:
    import tomllib
except ImportError:  # Python < 3.11
    sys.exit("gen-yocto-crates: needs Python >= 3.11 (tomllib); this is %s" % sys.version.split()[0])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_LOCK = os.path.join(REPO, "Cargo.lock")
DEFAULT_OUT = os.path.join(REPO, "yocto-layer", "recipes-storeguard", "storeguard", "storeguard-crates.inc")

HEADER = """\
# Generated from Cargo.lock by scripts/gen-yocto-crates.py: do not edit by hand.
# Regenerate after every Cargo.lock change (CI runs `scripts/gen-yocto-crates.py --check`).
# Same content as `bitbake -c update_crates storeguard` (cargo-update-recipe-crates class) writes.

"""

# oelint-adv wants `VAR += "foo"`; the class's own layout starts with " \\" (one crate a line), and
# keeping that layout keeps this file diff-equal to what bitbake would write.
SUPPRESS = "# nooelint: oelint.vars.inconspaces,oelint.vars.notneededspace\n"


def die(msg):
    sys.exit("gen-yocto-crates: " + msg)


def render(lock_path):
    try:
        with open(lock_path, "rb") as f:
            lock = tomllib.load(f)
    except FileNotFoundError:
        die("%s not found" % lock_path)
    except tomllib.TOMLDecodeError as e:
        die("%s: not valid TOML: %s" % (lock_path, e))

    uris, sums = [], []
    for pkg in lock.get("package", []):
        source = pkg.get("source", "")
        where = "%s: package %s %s" % (lock_path, pkg.get("name"), pkg.get("version"))
        if not source:
            continue  # a workspace member: built from the recipe's own sources
        if source.startswith("git+"):
            # The cargo class wants git dependencies as git:// SRC_URI entries with a destsuffix
            # under ${CARGO_VENDORING_DIRECTORY}; none exist today, so refuse rather than guess.
            die("%s comes from git (%s): add it to the recipe by hand, this script only lists registry crates" % (where, source))
        if "crates.io" not in source:
            die("%s comes from an unknown registry (%s): the crate fetcher only knows crates.io" % (where, source))
        if "checksum" not in pkg:
            die("%s has no checksum: regenerate Cargo.lock with cargo" % where)
        key = "%s-%s" % (pkg["name"], pkg["version"])
        uris.append("    crate://crates.io/%s/%s \\" % (pkg["name"], pkg["version"]))
        sums.append('SRC_URI[%s.sha256sum] = "%s"' % (key, pkg["checksum"]))
    if not uris:
        die("%s lists no crates.io crates" % lock_path)

    return (HEADER + "# from Cargo.lock\n" + SUPPRESS + 'SRC_URI += " \\\n' + "\n".join(uris) + '\n"\n\n'
            + "\n".join(sums) + "\n"), len(uris)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the file differs from what Cargo.lock gives")
    ap.add_argument("--lock", default=DEFAULT_LOCK)
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()

    text, n = render(args.lock)
    rel = os.path.relpath(args.out, os.getcwd())
    if args.check:
        try:
            with open(args.out) as f:
                have = f.read()
        except FileNotFoundError:
            have = ""
        if have != text:
            diff = list(difflib.unified_diff(have.splitlines(), text.splitlines(), rel + " (in the tree)",
                                             rel + " (from Cargo.lock)", lineterm="", n=0))
            sys.stderr.write("\n".join(diff[:40]) + ("\n... (%d more diff lines)\n" % (len(diff) - 40) if len(diff) > 40 else "\n"))
            die("%s is out of date with %s: run scripts/gen-yocto-crates.py and commit the result" % (rel, os.path.relpath(args.lock)))
        print("gen-yocto-crates: %s is up to date (%d crates)" % (rel, n))
        return
    with open(args.out + ".tmp", "w") as f:
        f.write(text)
    os.replace(args.out + ".tmp", args.out)
    print("gen-yocto-crates: wrote %s (%d crates)" % (rel, n))


if __name__ == "__main__":
    main()
