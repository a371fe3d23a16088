# nooelint: oelint.var.mandatoryvar.HOMEPAGE,oelint.var.suggestedvar.BUGTRACKER,oelint.var.suggestedvar.CVE_PRODUCT,oelint.var.bbclassextend
# (recipe-wide oelint suppressions, above: storeguard has no public home page or bug tracker yet,
# no CPE and so no CVE_PRODUCT, and a daemon for the target has no use as -native or nativesdk.)
SUMMARY = "storeguard: in-store recorder, panic-button and evidence agent"
DESCRIPTION = "Records RTSP cameras into a crash-safe MPEG-TS ring buffer with GStreamer, watches \
               a wired panic button on GPIO, cuts signed MP4 evidence clips and sends alerts and \
               clips upstream over MQTT through a SQLite outbox."
SECTION = "multimedia"
# The daemon is Apache-2.0; the person-detector model (package ${PN}-model) is Apache-2.0 (NanoDet)
# & MIT (the TFJS conversion it was made from), see models/README.md.
LICENSE = "Apache-2.0 & MIT"
LICENSE:${PN} = "Apache-2.0"
LICENSE:${PN}-model = "Apache-2.0 & MIT"
# The repository has no licence file of its own yet (Cargo.toml declares Apache-2.0), so the
# common licence texts are checked; point this at the repository's file once it has one.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10 \
                    file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

# gstreamer-sys/-app-sys link against these (found with pkg-config). SQLite is compiled into the
# binary (rusqlite feature "bundled"), so sqlite3 is not needed here; add it back if that feature
# is ever dropped in favour of the system library.
DEPENDS += "gstreamer1.0 gstreamer1.0-plugins-base"

PV .= "+git"

# Where the storeguard sources live. Override in local.conf or a bbappend, e.g. a local clone:
#   STOREGUARD_SRC_URI = "git:///home/me/storeguard;protocol=file;branch=main"
STOREGUARD_SRC_URI ??= "git://git.example.com/storeguard.git;protocol=https;branch=main"
SRC_URI = "${STOREGUARD_SRC_URI}"
# A developer default only: products pin SRCREV:pn-storeguard in their configuration (README).
# nooelint: oelint.vars.autorev
SRCREV ??= "${AUTOREV}"
# No S: since walnascar the git fetcher unpacks to ${UNPACKDIR}/${BB_GIT_DEFAULT_DESTSUFFIX}
# (= ${BP}), which is the default S.

# Rust >= 1.92 is needed (edition 2024, gstreamer-rs 0.25): wrynose's own rust is 1.94.1.
inherit cargo cargo-update-recipe-crates pkgconfig systemd useradd

# Crate list from Cargo.lock: scripts/gen-yocto-crates.py (CI checks it is current), or the
# equivalent `bitbake -c update_crates storeguard`.
require ${BPN}-crates.inc

# Only the device daemon: package `storeguard` (crates/storeguard), binary `storeguard`, built
# from the workspace root (CARGO_SRC_DIR stays ""). The fixtures and control-centre tools are
# other workspace crates, so -p keeps them out.
CARGO_BUILD_FLAGS:append = " -p storeguard --bin storeguard"

# H.264 decoder for the person detector's frames. gstreamer1.0-libav (avdec_h264) needs
# LICENSE_FLAGS_ACCEPTED += "commercial"; a board with a V4L2 stateless/stateful decoder can use
# gstreamer1.0-plugins-bad-v4l2codecs or gstreamer1.0-plugins-good-video4linux2 instead.
STOREGUARD_H264_DECODER ??= "gstreamer1.0-libav"

# Not cargo_do_install: it copies every executable and rlib in the target dir (a workspace build
# leaves libstoreguard.rlib there), and the device needs exactly one file.
do_install() {
    install -d ${D}${bindir}
    install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/storeguard ${D}${bindir}/storeguard

    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/storeguard.service ${D}${systemd_system_unitdir}/storeguard.service

    # Example configuration: root-owned, readable by the daemon's group only (may hold keys).
    install -d -m 0770 ${D}${sysconfdir}/storeguard
    install -m 0660 ${S}/edge-config/storeguard.toml ${D}${sysconfdir}/storeguard/storeguard.toml
    chown -R root:storeguard ${D}${sysconfdir}/storeguard

    install -d ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${S}/systemd/storeguard.tmpfiles.conf ${D}${nonarch_libdir}/tmpfiles.d/storeguard.conf
    install -d ${D}${nonarch_base_libdir}/udev/rules.d
    install -m 0644 ${S}/systemd/60-storeguard-gpio.rules ${D}${nonarch_base_libdir}/udev/rules.d/60-storeguard-gpio.rules

    install -d ${D}${datadir}/storeguard/models
    install -m 0644 ${S}/models/nanodet-m-416-fp16w.onnx ${S}/models/README.md ${S}/models/SHA256SUMS \
        ${D}${datadir}/storeguard/models/
}

# Same user and groups as systemd/storeguard.sysusers.conf (which is not installed here).
USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system gpio"
USERADD_PARAM:${PN} = "--system --home-dir ${localstatedir}/lib/storeguard --no-create-home \
                       --shell ${base_sbindir}/nologin --user-group --groups gpio storeguard"

SYSTEMD_PACKAGES = "${PN}"
SYSTEMD_SERVICE:${PN} = "storeguard.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

PACKAGES =+ "${PN}-model"
FILES:${PN}-model += "${datadir}/storeguard/models"
FILES:${PN} += "${nonarch_libdir}/tmpfiles.d/storeguard.conf \
                ${nonarch_base_libdir}/udev/rules.d/60-storeguard-gpio.rules"
CONFFILES:${PN} = "${sysconfdir}/storeguard/storeguard.toml"

# GStreamer elements the daemon builds pipelines from (plugin packages are split per plugin):
#   recording: rtspsrc (rtsp), udpsrc (udp), rtpbin/jitterbuffer (rtpmanager), rtph264depay (rtp),
#              h264parse (videoparsersbad), mpegtsmux, splitmuxsink (multifile), queue/tee/fakesink
#              (core elements, in gstreamer1.0 itself)
#   clips:     tsdemux (mpegtsdemux), mp4mux (isomp4), appsrc/appsink (app)
#   detection: jpegdec/jpegenc (jpeg), videoconvert/videoscale (videoconvertscale in 1.22),
#              an H.264 decoder (STOREGUARD_H264_DECODER)
RDEPENDS:${PN} += "${STOREGUARD_H264_DECODER} \
                   gstreamer1.0 \
                   gstreamer1.0-plugins-bad-mpegtsdemux \
                   gstreamer1.0-plugins-bad-mpegtsmux \
                   gstreamer1.0-plugins-bad-videoparsersbad \
                   gstreamer1.0-plugins-base-app \
                   gstreamer1.0-plugins-base-videoconvertscale \
                   gstreamer1.0-plugins-good-isomp4 \
                   gstreamer1.0-plugins-good-jpeg \
                   gstreamer1.0-plugins-good-multifile \
                   gstreamer1.0-plugins-good-rtp \
                   gstreamer1.0-plugins-good-rtpmanager \
                   gstreamer1.0-plugins-good-rtsp \
                   gstreamer1.0-plugins-good-udp \
                   onnxruntime"
RRECOMMENDS:${PN} += "${PN}-model"
