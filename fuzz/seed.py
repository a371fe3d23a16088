#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets from the project's real inputs: the example
configs, the docs' config blocks, the control API's requests, the MQTT payloads of
docs/mqtt.md and docs/remote.md addressed to the fuzzed box, real recorded segments.

Usage: fuzz/seed.py SEGMENT.ts...   (segments as the recorder wrote them; cut small here)
Seeds are named seed-*; what the fuzzer adds to a corpus is kept beside them.
"""
import json, re, struct, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
SITE, DEVICE = "store-0001", "sg-0001-a"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data if isinstance(data, bytes) else data.encode())


def compact(v):
    return json.dumps(v, separators=(",", ":")).encode()


# config: the example configs and every TOML block of the docs.
for f in sorted((ROOT / "edge-config").glob("*.toml")):
    put("config", f.stem, f.read_bytes())
for doc in sorted((ROOT / "docs").glob("*.md")):
    for i, block in enumerate(re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)):
        put("config", f"{doc.stem}-{i}", block)

# control_http: the requests the CLI's client sends, one per route.
def req(method, path, body=b""):
    head = (f"{method} {path} HTTP/1.1\r\nHost: storeguard\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body

http = {
    "status": req("GET", "/v1/status"),
    "cameras": req("GET", "/v1/cameras"),
    "doctor": req("GET", "/v1/doctor"),
    "outbox": req("GET", "/v1/outbox"),
    "buttons": req("GET", "/v1/buttons"),
    "watch": req("GET", "/v1/buttons/watch"),
    "press": req("POST", "/v1/buttons/till/press?test=1&hold_ms=200"),
    "edges": req("POST", "/v1/buttons/till/edges", compact({"script": "down 100ms up"})),
    "events": req("GET", "/v1/events?since=2026-11-22T10%3A00%3A00%2B01%3A00&limit=20"),
    "clips": req("POST", "/v1/clips", compact({"cameras": ["cam01"], "from": "2026-12-01T10:00:00Z",
                                                "to": "2026-12-01T10:01:00Z", "out": "/media/usb"})),
    "packages": req("POST", "/v1/packages", compact({"event": "evt-20261201T100000000Z-3f2a1b",
                                                     "out": "/media/usb/case.zip"})),
    "evidence": req("GET", "/v1/evidence/c-91/mp4"),
    "snapshot": req("GET", "/v1/cameras/cam01/snapshot"),
    "config": req("GET", "/v1/config"),
    "config-status": req("GET", "/v1/config/status"),
    "reload": req("POST", "/v1/config/reload"),
    "detector-fault": req("POST", "/v1/debug/detector-fault", compact({"fault": "hang"})),
}
for name, data in http.items():
    put("control_http", name, data)

# inbound_mqtt: flags byte (bit 0: signed by the trusted key), topic, NUL, payload.
def inbound(name, topic, payload, signed=True):
    put("inbound_mqtt", name, bytes([1 if signed else 0]) + topic.encode() + b"\0" + payload)

minimal = (ROOT / "edge-config" / "minimal.toml").read_text()
desired = {"schema": "storeguard.config-desired/v1", "site_id": SITE, "device_id": DEVICE,
           "version": 7, "issued_at": "2026-12-01T14:00:00Z", "expires_at": "2099-12-01T15:00:00Z",
           "config": minimal}
inbound("desired", "config/desired", compact(desired))
inbound("desired-unsigned", "config/desired", compact(desired), signed=False)
inbound("desired-cleared", "config/desired", b"")
args = {
    "status": {},
    "snapshot": {"cameras": ["cam01"]},
    "clip": {"cameras": ["cam01"], "from": "2026-12-01T10:00:00Z", "to": "2026-12-01T10:01:00Z"},
    "hold": {"cameras": ["cam01"], "from": "2026-12-01T10:00:00Z", "to": "2026-12-01T11:00:00Z",
             "reason": "police request 4711", "expires_at": "2099-01-01T00:00:00Z"},
    "release": {"hold_id": "r-91"},
    "recordings": {"camera": "cam01", "from": "2026-12-01T10:00:00Z", "to": "2026-12-01T11:00:00Z"},
    "button_test": {"button": "till", "hold_ms": 200},
    "restart_camera": {"camera": "cam01"},
    "package": {"event": "evt-20261201T100000000Z-3f2a1b"},
}
for name, a in args.items():
    cmd = {"schema": "storeguard.cmd/v1", "site_id": SITE, "device_id": DEVICE, "request_id": f"r-{name}",
           "issued_at": "2026-12-01T14:02:00Z", "expires_at": "2099-12-01T14:07:00Z", "args": a}
    inbound(f"cmd-{name}", f"cmd/{name}", compact(cmd))
for status, extra in [("verified", {"bytes": 22300211, "sha256": "9f2c" * 16, "manifest_signature": "q3Jd"}),
                      ("incomplete", {"resend_from": 262144, "need_manifest": True}),
                      ("failed", {"reason": "sha256 mismatch"})]:
    ack = {"schema": "storeguard.clip-ack/v1", "site_id": SITE, "device_id": DEVICE, "clip": "c-91",
           "status": status, **extra, "at": "2025-10-09T08:55:02.481Z"}
    inbound(f"ack-{status}", "evidence/c-91/ack", compact(ack))
inbound("ack-forged", "evidence/c-91/ack", compact({**ack, "signature": {
    "alg": "ed25519", "key_id": "5b1e", "public_key": "7WpH", "value": "Vx0c"}}), signed=False)
inbound("other-box", f"storeguard/v1/{SITE}/other/config/desired", compact(desired), signed=False)
put("inbound_mqtt", "other-box", b"\x03" + f"storeguard/v1/{SITE}/other/config/desired".encode()
    + b"\0" + compact(desired))
inbound("own-status", "status", b'{"schema":"storeguard.status/v1","state":"online"}', signed=False)

# chunk_header: SGCH, u32 header length, JSON header, data.
def chunk(h, data):
    j = compact(h)
    return b"SGCH" + struct.pack(">I", len(j)) + j + data

data = bytes(range(256)) * 4
h = {"schema": "storeguard.chunk/v1", "msg_id": "box-a:c-91@0", "clip": "c-91", "offset": 0,
     "len": len(data), "total": 4096, "sha256": "9f2c" * 16, "final": False}
put("chunk_header", "first", chunk(h, data))
put("chunk_header", "final", chunk({**h, "offset": 3072, "msg_id": "box-a:c-91@3072", "final": True}, data))
put("chunk_header", "empty", chunk({**h, "len": 0, "total": 0, "final": True}, b""))

# segment_scan and mp4_cut: real segments, cut to a few keyframes (whole packets).
for f in sys.argv[1:]:
    b = Path(f).read_bytes()
    cut = b[: min(len(b), 188 * 64)]
    put("segment_scan", Path(f).stem, cut)
    put("mp4_cut", Path(f).stem, cut)
    put("segment_scan", Path(f).stem + "-torn", cut[: len(cut) - 100])
    put("segment_scan", Path(f).stem + "-named", b"20261201T201322.720Z\n" + cut)
