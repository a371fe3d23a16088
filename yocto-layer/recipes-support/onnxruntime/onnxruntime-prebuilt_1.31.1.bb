# nooelint: oelint.var.bbclassextend
# (above: a prebuilt target library; no -native use)
SUMMARY = "ONNX Runtime shared library (CPU), prebuilt from the PyPI wheel"
DESCRIPTION = "libonnxruntime.so.${PV} taken unchanged from the official onnxruntime ${PV} \
               manylinux wheel. storeguard loads it at run time (ort crate, load-dynamic, api-31), \
               so the version must stay in step with the ort feature. Use meta-onnxruntime instead \
               to build from source."
HOMEPAGE = "https://onnxruntime.ai/"
BUGTRACKER = "https://github.com/microsoft/onnxruntime/issues"
CVE_PRODUCT = "onnxruntime"
SECTION = "libs"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://onnxruntime/LICENSE;md5=0f7e3b1308cb5c00b372a6e78835732d"

# The wheels exist for these two only (manylinux_2_28: glibc >= 2.28).
COMPATIBLE_HOST = "(aarch64|x86_64).*-linux"

ORT_WHEEL_ARCH = "unsupported"
ORT_WHEEL_ARCH:aarch64 = "aarch64"
ORT_WHEEL_ARCH:x86-64 = "x86_64"
ORT_WHEEL_SHA256 = ""
ORT_WHEEL_SHA256:aarch64 = "da05378364c44d4407e463982d2bf8d5e4cfea873283757e48beeb41df97b7f3"
ORT_WHEEL_SHA256:x86-64 = "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f"
# cp311 is just the tag pinned here: the C library inside does not link to Python.
ORT_WHEEL = "onnxruntime-${PV}-cp311-cp311-manylinux_2_28_${ORT_WHEEL_ARCH}.whl"

# pypi.bbclass knows the PyPI file host; reuse it, but point at the binary wheel instead of the
# sdist (wheels live under packages/<python tag>/<first letter>/<name>/).
inherit pypi
PYPI_PACKAGE = "onnxruntime"
PYPI_SRC_URI = "${@pypi_src_uri(d).split('/packages/source/')[0]}/packages/cp311/o/onnxruntime/${ORT_WHEEL};name=wheel;subdir=onnxruntime-${PV};unpack=0"
SRC_URI[wheel.sha256sum] = "${ORT_WHEEL_SHA256}"
# subdir= is relative to UNPACKDIR (walnascar and later).
S = "${UNPACKDIR}/onnxruntime-${PV}"

# Only the library and its licence files are used; nothing is compiled.
do_configure[noexec] = "1"
do_compile[noexec] = "1"

python ort_extract_wheel() {
    import os, zipfile
    s = d.getVar('S')
    with zipfile.ZipFile(os.path.join(s, d.getVar('ORT_WHEEL'))) as whl:
        for name in ('onnxruntime/LICENSE', 'onnxruntime/ThirdPartyNotices.txt',
                     'onnxruntime/capi/libonnxruntime.so.' + d.getVar('PV')):
            whl.extract(name, s)
}
ort_extract_wheel[doc] = "Extract the library and its licence files from the wheel (fetched with unpack=0)"
do_unpack[postfuncs] += "ort_extract_wheel"

do_install() {
    install -d ${D}${libdir}
    install -m 0755 ${S}/onnxruntime/capi/libonnxruntime.so.${PV} ${D}${libdir}/
    # SONAME is libonnxruntime.so.1
    ln -sf libonnxruntime.so.${PV} ${D}${libdir}/libonnxruntime.so.1
    ln -sf libonnxruntime.so.${PV} ${D}${libdir}/libonnxruntime.so
    install -d ${D}${datadir}/doc/${BPN}
    install -m 0644 ${S}/onnxruntime/ThirdPartyNotices.txt ${D}${datadir}/doc/${BPN}/
}

# The daemon dlopen()s the unversioned or full name, so keep the .so link in the main package.
FILES:${PN} += "${libdir}/libonnxruntime.so"
# -dev gets nothing: no headers are shipped, and the .so link belongs to the main package.
# nooelint: oelint.var.filesoverride
FILES:${PN}-dev = ""

# storeguard RDEPENDS on "onnxruntime"; with meta-onnxruntime in the build as well, choose with
# PREFERRED_RPROVIDER_onnxruntime = "onnxruntime-prebuilt".
RPROVIDES:${PN} += "onnxruntime"

# Prebuilt upstream binary, installed unchanged: it is already stripped, was linked without OE's
# LDFLAGS, and the unversioned .so link is in the main package on purpose (dlopen, above).
# nooelint: oelint.vars.insaneskip
INSANE_SKIP:${PN} += "already-stripped dev-so ldflags"
