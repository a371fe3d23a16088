//! The daemon's configuration: one TOML file, parsed and validated in one pass.
//!
//! Every problem is reported as `file:line:column: field.path: what is wrong`, all of them
//! at once, so a technician fixes a file in one round trip. The reference for every field
//! is `docs/config.md`; keep it in step with the doc comments here.

pub mod detect;
pub mod line;
mod locate;
pub mod uplink;
pub mod values;

use line::{Bias, LineId, LineSettings, Wiring};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
pub use values::{Budget, Bytes, Dur, Secret};

pub const DEFAULT_PATH: &str = "/etc/storeguard/storeguard.toml";
pub const DEFAULT_SOCKET: &str = "/run/storeguard/control.sock";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub site: Site,
    pub storage: Storage,
    #[serde(default)]
    pub control: Control,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub cameras: Vec<Camera>,
    #[serde(default)]
    pub buttons: Vec<Button>,
    #[serde(default)]
    pub uplink: Option<uplink::Uplink>,
    #[serde(default)]
    pub trust: Trust,
    #[serde(default)]
    pub remote: Remote,
    #[serde(default)]
    pub detect: detect::Detect,
}

/// Remote configuration and commands over the uplink (docs/remote.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    /// Take `config/desired` and `cmd/{name}` from the control centre (needs `[uplink]`
    /// and `[trust]`).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long a remotely applied config has to prove itself (cameras recording, the
    /// MQTT session up with the new settings) before it is kept; otherwise it is rolled back.
    #[serde(default = "default_trial")]
    pub trial: Dur,
}

fn default_trial() -> Dur {
    Dur::secs(60)
}

impl Default for Remote {
    fn default() -> Self {
        Remote {
            enabled: true,
            trial: default_trial(),
        }
    }
}

/// Whom the box believes: the control centre's Ed25519 public keys. Every signed message
/// from upstream (clip receipts; desired config and commands) is checked against these.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Trust {
    /// Standard base64 of each 32-byte public key (as in the centre's `.pub` file).
    #[serde(default)]
    pub control_centre_keys: Vec<String>,
}

impl Trust {
    /// The parsed keys; empty if any is bad (validation reports which).
    pub fn keys(&self) -> storeguard_proto::trust::TrustedKeys {
        storeguard_proto::trust::TrustedKeys::parse(&self.control_centre_keys).unwrap_or_default()
    }
}

/// Identifies this box upstream; both ids appear in MQTT topics and evidence manifests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    pub site_id: String,
    pub device_id: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// Database, ring buffer, evidence and keys live here. Relative paths are
    /// resolved against the config file's directory.
    pub data_dir: PathBuf,
    /// Disk budget for the ring buffer: `"200GiB"` or `"85%"` of the filesystem.
    #[serde(default = "default_budget")]
    pub budget: Budget,
    /// Target segment length; segments always start on a keyframe.
    #[serde(default = "default_segment_length")]
    pub segment_length: Dur,
    /// How often recorded data is synced to disk and indexed: the most video a
    /// power cut can lose per camera.
    #[serde(default = "default_sync_interval")]
    pub sync_interval: Dur,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Unix socket for the technician CLI (mode 0660).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Group given to the socket, so technicians in it can use the CLI without root.
    #[serde(default)]
    pub group: Option<String>,
    /// Extra uids allowed besides root, the daemon's own uid and members of `group`.
    #[serde(default)]
    pub allowed_uids: Vec<u32>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            socket: default_socket(),
            group: None,
            allowed_uids: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// A camera that delivers no frame for this long is restarted (stall).
    #[serde(default = "default_stall")]
    pub stall_timeout: Dur,
    /// A camera offline for longer than this raises a health event.
    #[serde(default = "default_offline_alert")]
    pub offline_alert_after: Dur,
    /// Ceiling for the reconnect backoff.
    #[serde(default = "default_max_backoff")]
    pub max_reconnect_backoff: Dur,
    /// Retention target per camera in days (UK police expect 31); a camera that can't
    /// reach it at its bitrate raises a health event.
    #[serde(default = "default_retention_days")]
    pub retention_target_days: u32,
    /// A box clock unsynchronised (no NTP) for longer than this raises a health event.
    #[serde(default = "default_unsynced_alert")]
    pub clock_unsynchronised_alert_after: Dur,
    /// A camera whose own clock (RTCP sender reports, also its picture overlay) is
    /// further than this from the synchronised box clock raises a health event.
    #[serde(default = "default_camera_clock_tolerance")]
    pub camera_clock_tolerance: Dur,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            stall_timeout: default_stall(),
            offline_alert_after: default_offline_alert(),
            max_reconnect_backoff: default_max_backoff(),
            retention_target_days: default_retention_days(),
            clock_unsynchronised_alert_after: default_unsynced_alert(),
            camera_clock_tolerance: default_camera_clock_tolerance(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Tcp,
    Udp,
}

/// Which RTSP client records a camera. See docs/recording.md for when to pick which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Ingest {
    #[default]
    Retina,
    Gstreamer,
}

impl Ingest {
    pub fn name(self) -> &'static str {
        match self {
            Ingest::Retina => "retina",
            Ingest::Gstreamer => "gstreamer",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Camera {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// Where it looks ("till 2, facing the door"), for evidence packages.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
    /// Main stream, recorded as-is: `rtsp://host[:port]/path`.
    pub url: String,
    /// Optional cheaper sub stream for detection.
    #[serde(default)]
    pub sub_url: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub transport: Transport,
    #[serde(default)]
    pub ingest: Ingest,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Share of the disk budget relative to other cameras.
    #[serde(default = "one")]
    pub weight: f64,
    /// Keep at least this many days of this camera, even over its weighted share.
    #[serde(default)]
    pub min_days: Option<f64>,
    /// Person detection on this camera (when `[detect] enabled`).
    #[serde(default)]
    pub detect: detect::CameraDetect,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Button {
    pub name: String,
    /// GPIO chip by name (`gpiochip0`) or path (`/dev/gpiochip0`); `"sim"` for a
    /// simulated button driven only through the control socket.
    pub chip: String,
    /// Line offset on the chip, or the line's name.
    pub line: LineId,
    #[serde(default)]
    pub active_low: bool,
    #[serde(default)]
    pub bias: Bias,
    /// `normally-open` or `normally-closed`; no default, because it decides what a cut
    /// wire looks like (only NC wiring can detect one).
    pub wiring: Wiring,
    #[serde(default = "default_debounce")]
    pub debounce: Dur,
    /// Cameras whose footage is secured on a press.
    pub cameras: Vec<String>,
    #[serde(default = "default_pre_roll")]
    pub pre_roll: Dur,
    #[serde(default = "default_post_roll")]
    pub post_roll: Dur,
    /// Held longer than this is a "stuck button" (NO) or "wiring" (NC) fault.
    #[serde(default = "default_stuck_after")]
    pub stuck_after: Dur,
}

impl Button {
    pub fn line_settings(&self) -> LineSettings {
        LineSettings {
            chip: self.chip.clone(),
            line: self.line.clone(),
            active_low: self.active_low,
            bias: self.bias,
            wiring: self.wiring,
            debounce: self.debounce.0,
        }
    }

    /// A simulated button has no GPIO line; presses come only through the control socket.
    pub fn is_simulated(&self) -> bool {
        self.chip == "sim"
    }
}

fn default_budget() -> Budget {
    Budget::Percent(85.0)
}
fn default_segment_length() -> Dur {
    Dur::secs(30)
}
fn default_sync_interval() -> Dur {
    Dur::secs(1)
}
fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_stall() -> Dur {
    Dur::secs(10)
}
fn default_offline_alert() -> Dur {
    Dur::secs(60)
}
fn default_unsynced_alert() -> Dur {
    Dur::secs(3600)
}
fn default_camera_clock_tolerance() -> Dur {
    Dur::secs(2)
}
fn default_max_backoff() -> Dur {
    Dur::secs(30)
}
fn default_retention_days() -> u32 {
    31
}
fn default_debounce() -> Dur {
    Dur::millis(20)
}
fn default_pre_roll() -> Dur {
    Dur::secs(30)
}
fn default_post_roll() -> Dur {
    Dur::secs(60)
}
fn default_stuck_after() -> Dur {
    Dur::secs(60)
}
fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

/// Everything wrong with one config file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            // Line 0: the file as a whole (unreadable); there is no position to point at.
            if p.line == 0 {
                write!(f, "{}: {}", self.file.display(), p.message)?;
                continue;
            }
            let field = if p.field.is_empty() {
                "(file)"
            } else {
                &p.field
            };
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file.display(),
                p.line,
                p.column,
                field,
                p.message
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A validated config and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub path: PathBuf,
    /// Short content hash: what `status` reports as the applied config version.
    pub version: String,
}

impl Config {
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            problems: vec![Problem {
                line: 0,
                column: 0,
                field: String::new(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let config = Config::parse(&text, base).map_err(|problems| ConfigError {
            file: path.to_path_buf(),
            problems,
        })?;
        Ok(Loaded {
            config,
            path: path.to_path_buf(),
            version: version_of(text.as_bytes()),
        })
    }

    /// Parses and validates; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<Problem>> {
        let doc = match toml_edit::Document::parse(text) {
            Ok(d) => d,
            Err(e) => {
                let idx = locate::SpanIndex::build(text, &toml_edit::Document::parse("").unwrap());
                let (line, column) = e.span().map(|s| idx.line_col(s.start)).unwrap_or((1, 1));
                let msg = e.message().trim().to_string();
                return Err(vec![Problem {
                    line,
                    column,
                    field: String::new(),
                    message: format!("TOML syntax: {msg}"),
                }]);
            }
        };
        let idx = locate::SpanIndex::build(text, &doc);
        let mut config: Config = match toml::from_str(text) {
            Ok(c) => c,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let (line, column) = idx.line_col(span.start);
                // An empty span at 0 is the root table (a missing section), not whatever
                // table happens to start the file.
                let field = if span == (0..0) {
                    String::new()
                } else {
                    idx.path_at(span.start).unwrap_or("").to_string()
                };
                return Err(vec![Problem {
                    line,
                    column,
                    field,
                    message: e.message().trim().to_string(),
                }]);
            }
        };
        let mut v = Validator {
            problems: Vec::new(),
        };
        config.validate(&mut v);
        if !v.problems.is_empty() {
            return Err(v
                .problems
                .into_iter()
                .map(|(field, message)| {
                    let (line, column) = idx
                        .span_of(&field)
                        .map(|s| idx.line_col(s.start))
                        .unwrap_or((1, 1));
                    Problem {
                        line,
                        column,
                        field,
                        message,
                    }
                })
                .collect());
        }
        config.resolve_paths(base);
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.storage.data_dir);
        abs(&mut self.control.socket);
        abs(&mut self.detect.model);
        if let Some(p) = self.detect.onnxruntime.as_mut() {
            abs(p);
        }
        if let Some(tls) = self.uplink.as_mut().and_then(|u| u.tls.as_mut()) {
            for p in [&mut tls.ca, &mut tls.cert, &mut tls.key]
                .into_iter()
                .flatten()
            {
                abs(p);
            }
        }
    }

    fn validate(&self, v: &mut Validator) {
        v.ident("site.site_id", &self.site.site_id);
        v.ident("site.device_id", &self.site.device_id);
        if self.storage.data_dir.as_os_str().is_empty() {
            v.err("storage.data_dir", "must not be empty");
        }
        v.range(
            "storage.segment_length",
            self.storage.segment_length,
            Dur::secs(2),
            Dur::secs(600),
        );
        v.range(
            "storage.sync_interval",
            self.storage.sync_interval,
            Dur::millis(100),
            Dur::secs(10),
        );
        if let Budget::Bytes(b) = self.storage.budget
            && b < 1 << 20
        {
            v.err(
                "storage.budget",
                format!(
                    "{} is too small to hold a single segment (minimum 1MiB)",
                    values::format_bytes(b)
                ),
            );
        }
        if self.control.socket.as_os_str().is_empty() {
            v.err("control.socket", "must not be empty");
        }
        if let Some(g) = &self.control.group
            && g.is_empty()
        {
            v.err("control.group", "must not be empty when set");
        }
        v.range(
            "health.stall_timeout",
            self.health.stall_timeout,
            Dur::secs(1),
            Dur::secs(300),
        );
        v.range(
            "health.clock_unsynchronised_alert_after",
            self.health.clock_unsynchronised_alert_after,
            Dur::secs(1),
            Dur::secs(30 * 86_400),
        );
        v.range(
            "health.camera_clock_tolerance",
            self.health.camera_clock_tolerance,
            Dur::millis(100),
            Dur::secs(3600),
        );
        v.range(
            "health.max_reconnect_backoff",
            self.health.max_reconnect_backoff,
            Dur::secs(1),
            Dur::secs(600),
        );
        if self.cameras.len() > 64 {
            v.err(
                "cameras",
                format!(
                    "{} cameras configured; at most 64 are supported",
                    self.cameras.len()
                ),
            );
        }
        for (i, c) in self.cameras.iter().enumerate() {
            let p = format!("cameras[{i}]");
            v.ident(&format!("{p}.id"), &c.id);
            if let Some(j) = self.cameras[..i].iter().position(|o| o.id == c.id) {
                v.err(
                    &format!("{p}.id"),
                    format!("duplicate camera id {:?} (also cameras[{j}])", c.id),
                );
            }
            v.rtsp_url(&format!("{p}.url"), &c.url, c.username.is_some());
            if let Some(u) = &c.sub_url {
                v.rtsp_url(&format!("{p}.sub_url"), u, c.username.is_some());
            }
            if c.password.is_some() && c.username.is_none() {
                v.err(&format!("{p}.password"), "password given without username");
            }
            if c.ingest == Ingest::Retina {
                let urls = std::iter::once(&c.url).chain(&c.sub_url);
                if urls.clone().any(|u| u.starts_with("rtsps://")) {
                    v.err(
                        &format!("{p}.ingest"),
                        "the retina ingest has no RTSPS; set ingest = \"gstreamer\" for an rtsps:// camera",
                    );
                }
                if c.transport == Transport::Udp {
                    v.err(
                        &format!("{p}.ingest"),
                        "the retina ingest records over TCP only; set ingest = \"gstreamer\" for a camera that only offers UDP",
                    );
                }
            }
            c.detect.validate(&format!("{p}.detect"), v);
            if !(c.weight > 0.0 && c.weight <= 100.0) {
                v.err(
                    &format!("{p}.weight"),
                    format!("must be in (0, 100], got {}", c.weight),
                );
            }
            if let Some(d) = c.min_days
                && !(0.0..=3650.0).contains(&d)
            {
                v.err(
                    &format!("{p}.min_days"),
                    format!("must be between 0 and 3650, got {d}"),
                );
            }
        }
        for (i, b) in self.buttons.iter().enumerate() {
            let p = format!("buttons[{i}]");
            v.ident(&format!("{p}.name"), &b.name);
            if let Some(j) = self.buttons[..i].iter().position(|o| o.name == b.name) {
                v.err(
                    &format!("{p}.name"),
                    format!("duplicate button name {:?} (also buttons[{j}])", b.name),
                );
            }
            if b.chip.is_empty() {
                v.err(&format!("{p}.chip"), "must not be empty");
            }
            if b.cameras.is_empty() {
                v.err(
                    &format!("{p}.cameras"),
                    "a button must cover at least one camera",
                );
            }
            for (k, cam) in b.cameras.iter().enumerate() {
                if !self.cameras.iter().any(|c| &c.id == cam) {
                    let known: Vec<&str> = self.cameras.iter().map(|c| c.id.as_str()).collect();
                    v.err(
                        &format!("{p}.cameras[{k}]"),
                        format!("no camera with id {cam:?} (known: {})", known.join(", ")),
                    );
                }
            }
            v.range(
                &format!("{p}.debounce"),
                b.debounce,
                Dur::millis(1),
                Dur::secs(1),
            );
            v.range(
                &format!("{p}.pre_roll"),
                b.pre_roll,
                Dur::secs(0),
                Dur::secs(600),
            );
            v.range(
                &format!("{p}.post_roll"),
                b.post_roll,
                Dur::secs(0),
                Dur::secs(600),
            );
            v.range(
                &format!("{p}.stuck_after"),
                b.stuck_after,
                Dur::secs(1),
                Dur::secs(3600),
            );
        }
        if let Some(u) = &self.uplink {
            u.validate(v);
        }
        v.range(
            "remote.trial",
            self.remote.trial,
            Dur::secs(2),
            Dur::secs(1800),
        );
        self.detect.validate(v);
        if let Err((i, why)) =
            storeguard_proto::trust::TrustedKeys::parse(&self.trust.control_centre_keys)
        {
            v.err(&format!("trust.control_centre_keys[{i}]"), why);
        }
    }

    pub fn button(&self, name: &str) -> Option<&Button> {
        self.buttons.iter().find(|b| b.name == name)
    }

    pub fn camera(&self, id: &str) -> Option<&Camera> {
        self.cameras.iter().find(|c| c.id == id)
    }

    /// The camera `id`, or why not: `no camera "x" (configured: cam1, cam2)`.
    pub fn known_camera(&self, id: &str) -> Result<&Camera, String> {
        self.camera(id).ok_or_else(|| {
            let known: Vec<_> = self.cameras.iter().map(|c| c.id.as_str()).collect();
            format!("no camera {id:?} (configured: {})", known.join(", "))
        })
    }

    /// The effective config as TOML with defaults filled in and secrets masked.
    pub fn to_toml_masked(&self) -> String {
        let mut c = self.clone();
        for cam in &mut c.cameras {
            cam.url = mask_url(&cam.url);
            cam.sub_url = cam.sub_url.as_deref().map(mask_url);
        }
        toml::to_string_pretty(&c).expect("config serializes")
    }
}

pub fn version_of(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..6])
}

/// Replaces a password embedded in an RTSP URL (`rtsp://user:pass@host/`), for logs.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:{}@{host}{path}", values::MASK)
            } else {
                format!("{scheme}://{user}@{host}{path}")
            }
        }
        None => url.to_string(),
    }
}

pub(crate) struct Validator {
    problems: Vec<(String, String)>,
}

impl Validator {
    pub(crate) fn err(&mut self, field: &str, msg: impl Into<String>) {
        self.problems.push((field.to_string(), msg.into()));
    }

    /// Ids end up in MQTT topics and file names: keep them to a safe alphabet.
    fn ident(&mut self, field: &str, s: &str) {
        if s.is_empty() {
            self.err(field, "must not be empty");
        } else if s.len() > 64 {
            self.err(field, format!("{s:?} is longer than 64 characters"));
        } else if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            self.err(
                field,
                format!("{s:?} contains {c:?}; use letters, digits, '-' and '_' only"),
            );
        }
    }

    pub(crate) fn range(&mut self, field: &str, d: Dur, min: Dur, max: Dur) {
        if d < min || d > max {
            let f = |d: Dur| humantime::format_duration(d.0).to_string();
            self.err(
                field,
                format!("{} is out of range ({} to {})", f(d), f(min), f(max)),
            );
        }
    }

    fn rtsp_url(&mut self, field: &str, url: &str, has_username: bool) {
        match parse_rtsp_url(url) {
            Err(e) => self.err(field, format!("{}: {e}", mask_url(url))),
            Ok(u) if u.has_userinfo && has_username => self.err(
                field,
                "credentials are given both in the URL and in username/password; use one",
            ),
            Ok(_) => {}
        }
    }
}

pub struct RtspUrl {
    pub host: String,
    pub port: u16,
    pub has_userinfo: bool,
}

pub fn parse_rtsp_url(url: &str) -> Result<RtspUrl, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("not a URL (expected rtsp://host[:port]/path)")?;
    let default_port = match scheme {
        "rtsp" | "rtspt" => 554,
        "rtsps" => 322,
        s => return Err(format!("unsupported scheme {s:?} (expected rtsp or rtsps)")),
    };
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if rest.chars().any(|c| c.is_whitespace()) {
        return Err("contains whitespace".into());
    }
    let (host, port) = split_host_port(hostport, default_port)?;
    Ok(RtspUrl {
        host: host.to_string(),
        port,
        has_userinfo: userinfo.is_some(),
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` → (host, port), for every URL we accept.
pub(crate) use storeguard_base::net::split_host_port;

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[site]
site_id = "store-1"
device_id = "box-a"

[storage]
data_dir = "data"

[[cameras]]
id = "cam1"
url = "rtsp://10.0.0.5/stream1"
username = "admin"
password = "s3cret"

[[cameras]]
id = "cam2"
url = "rtsp://10.0.0.6:8554/main"

[[buttons]]
name = "till"
chip = "gpiochip0"
line = 17
wiring = "normally-open"
cameras = ["cam1", "cam2"]
"#;

    fn problems(text: &str) -> Vec<Problem> {
        Config::parse(text, Path::new("/etc/x")).unwrap_err()
    }

    #[test]
    fn good_config_gets_defaults_and_absolute_paths() {
        let c = Config::parse(GOOD, Path::new("/etc/x")).unwrap();
        assert_eq!(c.storage.data_dir, PathBuf::from("/etc/x/data"));
        assert_eq!(c.buttons[0].pre_roll, Dur::secs(30));
        assert_eq!(c.buttons[0].post_roll, Dur::secs(60));
        assert_eq!(c.cameras[0].transport, Transport::Tcp);
        let shown = c.to_toml_masked();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains(values::MASK));
    }

    #[test]
    fn a_bad_trusted_key_is_named_by_index() {
        let good = "7WpHo52oabVEYVXkCy2T8ePwFnviZzK656PvnY46P9M=";
        let text = format!("{GOOD}\n[trust]\ncontrol_centre_keys = [\"{good}\", \"c2hvcnQ=\"]\n");
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, "trust.control_centre_keys[1]");
        assert!(p[0].message.contains("expected 32"), "{p:?}");
        let ok = Config::parse(&text.replace(", \"c2hvcnQ=\"", ""), Path::new("/etc/x")).unwrap();
        assert_eq!(ok.trust.keys().ids().count(), 1);
    }

    #[test]
    fn unknown_key_is_located() {
        let p =
            problems(&GOOD.replace("device_id = \"box-a\"", "device_id = \"box-a\"\ncolour = 3"));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].line, 5, "{p:?}");
        assert!(p[0].message.contains("unknown field `colour`"), "{p:?}");
        assert_eq!(p[0].field, "site.colour");
    }

    #[test]
    fn ingest_defaults_to_retina_and_rejects_what_retina_cannot_do() {
        let c = Config::parse(GOOD, Path::new("/etc/x")).unwrap();
        assert_eq!(c.cameras[0].ingest, Ingest::Retina);
        let rtsps = GOOD.replace("rtsp://10.0.0.6:8554/main", "rtsps://10.0.0.6/main");
        let p = problems(&rtsps);
        assert_eq!(p[0].field, "cameras[1].ingest", "{p:?}");
        assert!(p[0].message.contains("ingest = \"gstreamer\""), "{p:?}");
        let ok = rtsps.replace(
            "url = \"rtsps://10.0.0.6/main\"",
            "url = \"rtsps://10.0.0.6/main\"\ningest = \"gstreamer\"",
        );
        let c = Config::parse(&ok, Path::new("/etc/x")).unwrap();
        assert_eq!(c.cameras[1].ingest, Ingest::Gstreamer);
        let udp = GOOD.replace(
            "password = \"s3cret\"",
            "password = \"s3cret\"\ntransport = \"udp\"",
        );
        let p = problems(&udp);
        assert_eq!(p[0].field, "cameras[0].ingest", "{p:?}");
        assert!(p[0].message.contains("only offers UDP"), "{p:?}");
        let p = problems(&GOOD.replace(
            "password = \"s3cret\"",
            "password = \"s3cret\"\ningest = \"ffmpeg\"",
        ));
        assert_eq!(p[0].field, "cameras[0].ingest", "{p:?}");
        assert!(p[0].message.contains("retina"), "{p:?}");
    }

    #[test]
    fn wrong_type_names_field() {
        let p = problems(&GOOD.replace("line = 17", "line = true"));
        assert_eq!(p[0].field, "buttons[0].line", "{p:?}");
        assert_eq!(p[0].line, 22);
    }

    #[test]
    fn semantic_problems_all_reported_with_positions() {
        let bad = GOOD
            .replace("id = \"cam2\"", "id = \"cam1\"")
            .replace("\"cam1\", \"cam2\"", "\"cam1\", \"cam9\"");
        let p = problems(&bad);
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["cameras[1].id", "buttons[0].cameras[1]"], "{p:?}");
        assert_eq!((p[0].line, p[0].column), (16, 6));
        assert!(p[0].message.contains("duplicate camera id"));
        assert!(p[1].message.contains("no camera with id \"cam9\""));
    }

    #[test]
    fn missing_section_is_not_blamed_on_the_first_table() {
        let p = problems("[site]\nsite_id = \"a\"\ndevice_id = \"b\"\n");
        assert_eq!((p[0].line, p[0].field.as_str()), (1, ""), "{p:?}");
        assert!(p[0].message.contains("missing field `storage`"), "{p:?}");
        let p = problems(&GOOD.replace("device_id = \"box-a\"\n", ""));
        assert_eq!((p[0].line, p[0].field.as_str()), (2, "site"), "{p:?}");
    }

    #[test]
    fn syntax_error_has_line() {
        let p = problems("[site\nsite_id = 1");
        assert_eq!(p[0].line, 1);
        assert!(p[0].message.starts_with("TOML syntax"));
    }

    #[test]
    fn urls_are_checked_and_masked() {
        assert!(parse_rtsp_url("http://x/").is_err());
        assert!(parse_rtsp_url("rtsp:///x").is_err());
        assert_eq!(parse_rtsp_url("rtsp://[::1]:8554/a").unwrap().port, 8554);
        assert_eq!(mask_url("rtsp://u:p@h:1/x"), "rtsp://u:********@h:1/x");
        let p = problems(&GOOD.replace("rtsp://10.0.0.6:8554/main", "rtsp://10.0.0.6:99999/main"));
        assert!(p[0].message.contains("invalid port"), "{p:?}");
    }
}
