//! Entry points for the fuzz targets (`fuzz/`, cargo fuzz) and the corpus replay test:
//! one function per target, taking the raw fuzz input, reaching the same code the daemon
//! runs on that input. Each returns normally on any input; a panic is a bug found.
//! Not an API: the fuzz crate and the replay test are its only callers.

use crate::config::Config;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use storeguard_proto::keys::DeviceKey;
use storeguard_proto::remote::{self, Command, Desired};
use storeguard_proto::topics;

pub type Entry = fn(&[u8]);

/// The fuzz targets, by the name of their file in `fuzz/fuzz_targets/` and their corpus
/// directory.
pub const TARGETS: &[(&str, Entry)] = &[
    ("config", config),
    ("control_http", control_http),
    ("inbound_mqtt", inbound_mqtt),
    ("segment_scan", segment_scan),
    ("chunk_header", chunk_header),
    ("mp4_cut", mp4_cut),
];

const SITE: &str = "store-0001";
const DEVICE: &str = "sg-0001-a";

/// The control-centre key the fuzzed box trusts: inputs may ask to be signed by it, so
/// what lies behind the signature check is fuzzed too.
fn centre_key() -> &'static DeviceKey {
    static KEY: OnceLock<DeviceKey> = OnceLock::new();
    KEY.get_or_init(|| DeviceKey::from_seed([7; 32]))
}

/// A directory of its own for one run, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sg-fuzz-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create fuzz scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config file: parse and validate, as `Config::load` does; a valid one also prints.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("/etc/storeguard")) {
        Ok(c) => {
            let _ = c.to_toml_masked();
            let _ = crate::uplink::outbox_limits(&c);
        }
        Err(problems) => {
            let e = crate::config::ConfigError {
                file: "storeguard.toml".into(),
                problems,
            };
            let _ = e.to_string();
        }
    }
}

/// One control-socket request: the HTTP framing, then the route that turns it into a
/// command.
pub fn control_http(data: &[u8]) {
    crate::control::fuzz_request(data);
}

/// One inbound MQTT message, through the uplink's gate (`on_incoming`) and on to the
/// checks the remote layer runs on what it forwards.
///
/// Input: a flags byte (bit 0: sign the payload with the trusted key; bit 1: the topic is
/// taken as is, not under this box's prefix), the topic up to the first NUL, the payload.
pub fn inbound_mqtt(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (topic, payload) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(topic) = std::str::from_utf8(topic) else {
        return;
    };
    let topic = if flags & 2 != 0 {
        topic.to_string()
    } else {
        format!("{}{topic}", topics::prefix(SITE, DEVICE))
    };
    let signed;
    let payload = if flags & 1 != 0
        && payload.len() > 2
        && payload.first() == Some(&b'{')
        && payload.last() == Some(&b'}')
    {
        signed = storeguard_proto::trust::sign_json(payload, centre_key());
        &signed[..]
    } else {
        payload
    };
    let trusted = storeguard_proto::trust::TrustedKeys::parse(&[centre_key().public_key_b64()])
        .expect("the fuzz key parses");
    let forwarded = crate::uplink::fuzz_incoming(&topic, payload, &trusted, SITE, DEVICE);
    let now = storeguard_base::now_ns();
    for inbound in forwarded {
        match inbound.kind {
            crate::uplink::InboundKind::Desired => {
                if let Ok((d, _)) =
                    remote::check::<Desired>(&inbound.payload, &trusted, SITE, DEVICE, now)
                {
                    config(d.config.as_bytes());
                }
            }
            crate::uplink::InboundKind::Command(name) => {
                if let Ok((c, _)) =
                    remote::check::<Command>(&inbound.payload, &trusted, SITE, DEVICE, now)
                {
                    let _ = crate::remote::commands::check_args(&name, &c.args);
                }
            }
        }
    }
}

/// A segment file as start-up finds it: scanned, then reconciled against an index that
/// knows a truncated copy of it as open, while the whole file is an orphan.
///
/// Input: optionally the file name's time (`20261201T100000.000Z`) and a newline within
/// the first 40 bytes, then the file's bytes.
pub fn segment_scan(data: &[u8]) {
    let (stamp, file) = match data.iter().take(40).position(|&b| b == b'\n') {
        Some(i) => (
            String::from_utf8_lossy(&data[..i]).into_owned(),
            &data[i + 1..],
        ),
        None => ("20261201T100000.000Z".to_string(), data),
    };
    let _ = crate::recording::scan::scan(file);
    let dir = Scratch::new("scan");
    let store = crate::store::Store::open(&dir.0).expect("open a fresh store");
    let day = dir.0.join("recordings/cam01/2026-12-01");
    std::fs::create_dir_all(&day).expect("create the day dir");
    let orphan = format!("cam01-{stamp}.ts");
    // Not a name a file can have (the recorder never makes one): nothing to reconcile.
    if orphan.contains(['/', '\0']) {
        return;
    }
    std::fs::write(day.join(&orphan), file).expect("write the orphan");
    let open = "recordings/cam01/2026-12-01/cam01-20261201T090000.000Z.ts";
    let cut = &file[..file.len() / 2];
    std::fs::write(dir.0.join(open), cut).expect("write the open segment");
    let start = 1_796_115_600_000_000_000; // 2026-12-01T09:00:00Z
    let row = crate::store::recording::SegmentProgress {
        camera: "cam01".into(),
        path: open.into(),
        start_ns: start,
        end_ns: start,
        bytes: 0,
        frames: 0,
        codec: "h264",
        width: 0,
        height: 0,
        params: None,
        time_source: "ntp",
        state: crate::store::recording::STATE_OPEN,
        new_keyframes: Vec::new(),
        clock_epoch: 0,
        time_synced: true,
        time_error_ns: None,
    };
    store
        .commit_sync(&[row], &[])
        .expect("index the open segment");
    // Bad files are reported, not fatal; what must hold is the index's promise.
    let _ = crate::recording::reconcile::run(&store);
    for r in store.all_segments().expect("read the index back") {
        let len = std::fs::metadata(dir.0.join(&r.path)).map_or(0, |m| m.len());
        assert!(
            r.bytes <= len,
            "{}: index says {} bytes, the file has {len}",
            r.path,
            r.bytes
        );
    }
}

/// One chunk message: the framing decodes or is refused; what decodes encodes back to
/// the same header and data.
pub fn chunk_header(data: &[u8]) {
    let Ok((h, body)) = topics::decode_chunk(data) else {
        return;
    };
    let again = topics::encode_chunk(&h, body);
    let (h2, body2) = topics::decode_chunk(&again).expect("an encoded chunk decodes");
    assert_eq!((&h, body), (&h2, body2));
}

/// A garbage segment through the MP4 cutter, from its first keyframe as the index would
/// have it (or its first byte).
pub fn mp4_cut(data: &[u8]) {
    // GStreamer's init and plugin loading are process-wide; one cut at a time.
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("mp4");
    let seg = dir.0.join("cam01-20261201T100000.000Z.ts");
    std::fs::write(&seg, data).expect("write the segment");
    let start = crate::recording::scan::scan(data)
        .ok()
        .and_then(|s| s.keyframes.first().map(|k| k.1))
        .unwrap_or(0);
    let slice = crate::evidence::mp4::TsSlice {
        path: seg,
        start,
        end: None,
        shift_ns: 0,
    };
    let clock = crate::evidence::mp4::TimeText {
        t0_ns: 1_796_119_200_000_000_000,
        fixed_offset: chrono::FixedOffset::east_opt(3600),
    };
    let _ = crate::evidence::mp4::remux_ts_to_mp4_timed(
        &[slice],
        &dir.0.join("clip.mp4"),
        Some(&clock),
    );
}
