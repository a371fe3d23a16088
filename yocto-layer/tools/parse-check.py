#!/usr/bin/env python3
"""Parse this layer's recipes with bitbake's own parser, against stub classes.

Catches syntax errors (assignments, overrides, python/shell functions, includes) and prints the
expanded values that matter, for aarch64 and x86-64. It is NOT a build: the oe-core classes are
replaced by stubs, so nothing they define is checked.

    scripts/setup-lint.sh      # venv local/lint-venv with the pinned bitbake-setup and oelint-adv
    local/lint-venv/bin/python yocto-layer/tools/parse-check.py

(bitbake-setup on PyPI ships bitbake's `bb` library, 2.19; wrynose's own bitbake is 2.18 and parses
the same syntax.) It also checks that every crate:// entry in SRC_URI has its sha256sum flag.
"""

import os
import sys
import tempfile
import types

LAYER = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# bb.siggen imports hashserv, which the wheel does not ship; parsing never uses it.
for mod in ("hashserv", "hashserv.client"):
    sys.modules.setdefault(mod, types.ModuleType(mod))

import bb  # noqa: E402
import bb.data  # noqa: E402
import bb.parse  # noqa: E402

STUB_CLASSES = {
    "base": "",
    "pkgconfig": "",
    "systemd": "",
    "useradd": "",
    "cargo-update-recipe-crates": "",
    "cargo": 'CARGO_BUILD_FLAGS = "-v --frozen --target ${RUST_HOST_SYS} --release"\n',
    # Same shape as scarthgap's pypi.bbclass, with a placeholder host.
    "pypi": (
        'PYPI_PACKAGE ?= "${BPN}"\nPYPI_PACKAGE_EXT ?= "tar.gz"\n'
        "def pypi_src_uri(d):\n"
        "    package = d.getVar('PYPI_PACKAGE')\n"
        "    archive = d.expand('${PYPI_PACKAGE}-${PV}.${PYPI_PACKAGE_EXT}')\n"
        "    return 'https://PYPI-HOST/packages/source/%s/%s/%s' % (package[0], package, archive)\n"
        'PYPI_SRC_URI ?= "${@pypi_src_uri(d)}"\nSRC_URI:prepend = "${PYPI_SRC_URI} "\n'
        'S = "${WORKDIR}/${PYPI_PACKAGE}-${PV}"\n'
    ),
}

RECIPES = {
    "recipes-storeguard/storeguard/storeguard_0.1.0.bb": [
        "PV", "SRC_URI", "LICENSE", "CARGO_BUILD_FLAGS", "DEPENDS", "RDEPENDS:storeguard",
        "USERADD_PARAM:storeguard", "GROUPADD_PARAM:storeguard", "SYSTEMD_SERVICE:storeguard",
        "CONFFILES:storeguard", "FILES:storeguard-model",
    ],
    "recipes-support/onnxruntime/onnxruntime-prebuilt_1.31.1.bb": [
        "SRC_URI", "ORT_WHEEL", "ORT_WHEEL_SHA256", "S", "RPROVIDES:onnxruntime-prebuilt",
    ],
}


class _NoSig:
    def finalise(self, *args, **kwargs):
        pass


def parse(path, arch, stubdir):
    d = bb.data.init()
    d.setVar("BBPATH", stubdir + ":" + LAYER)
    d.setVar("OVERRIDES", arch + ":pn-${PN}")
    d.setVar("__bbclasstype", "recipe")
    d.setVar("PN", "${@bb.parse.vars_from_file(d.getVar('FILE', False), d)[0]}")
    d.setVar("PV", "${@bb.parse.vars_from_file(d.getVar('FILE', False), d)[1]}")
    d.setVar("BPN", "${PN}")
    d.setVar("BP", "${BPN}-${PV}")
    for k, v in dict(WORKDIR="/WORKDIR", UNPACKDIR="/WORKDIR/sources", D="/D", libdir="/usr/lib", datadir="/usr/share",
                     sysconfdir="/etc", localstatedir="/var", base_sbindir="/usr/sbin",
                     nonarch_libdir="/usr/lib", nonarch_base_libdir="/usr/lib",
                     systemd_system_unitdir="/usr/lib/systemd/system",
                     COMMON_LICENSE_DIR="/common-licenses", PACKAGES="${PN} ${PN}-dev").items():
        d.setVar(k, v)
    return bb.parse.handle(path, d)[""]


def main():
    bb.parse.siggen = _NoSig()
    with tempfile.TemporaryDirectory() as stubdir:
        os.makedirs(os.path.join(stubdir, "classes"))
        for name, text in STUB_CLASSES.items():
            with open(os.path.join(stubdir, "classes", name + ".bbclass"), "w") as f:
                f.write(text)
        for rel, keys in RECIPES.items():
            for arch in ("aarch64", "x86-64"):
                d = parse(os.path.join(LAYER, rel), arch, stubdir)
                print("== %s (%s)" % (rel, arch))
                for k in keys:
                    value = " ".join((d.getVar(k) or "").split())
                    if k == "SRC_URI":
                        crates = [u for u in value.split() if u.startswith("crate://")]
                        missing = [u for u in crates
                                   if not d.getVarFlag("SRC_URI", "%s-%s.sha256sum" % tuple(u.split("/")[-2:]))]
                        if missing:
                            sys.exit("parse-check: %s: no SRC_URI[NAME-VERSION.sha256sum] for %s" % (rel, " ".join(missing)))
                        value = " ".join(u for u in value.split() if not u.startswith("crate://"))
                        if crates:
                            value += " + %d crate:// entries, each with its sha256sum" % len(crates)
                    print("   %s = %s" % (k, value))
                for flag in ("wheel.sha256sum",):
                    if d.getVarFlag("SRC_URI", flag):
                        print("   SRC_URI[%s] = %s" % (flag, d.getVarFlag("SRC_URI", flag)))
    print("parse-check: ok")


if __name__ == "__main__":
    main()
