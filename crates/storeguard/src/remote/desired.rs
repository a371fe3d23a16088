//! `config/desired`: check, validate, write atomically, reload, hold a trial, then keep the
//! new config or roll back to the last good one. State machine in docs/remote.md.
//!
//! Crash safety comes from three files beside the config, each written atomically
//! (temporary file, fsync, rename, fsync of the directory): `<config>.last-good` (the
//! running config, saved first), `<config>.trial` (the marker: a trial is open), then the
//! config itself. The config file is always one whole version; a marker found at start-up
//! means the trial was never confirmed, and the last good config goes back.

use super::{blocking, notify_uplink};
use crate::cmd::config::reload;
use crate::config::{Config, ConfigError, version_of};
use crate::state::State;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use storeguard_base::fs::write_atomic;
use storeguard_base::{now_ns, utc_ms};
use storeguard_proto::remote::{self, ConfigState, Desired, Reported, SCHEMA_REPORTED};
use storeguard_proto::topics;
use tokio::sync::mpsc;

use crate::store::remote::CONFIG_STATUS_META as STATUS_META;
const POLL: Duration = Duration::from_millis(100);

/// What `storeguard config status` shows: the applied, pending, last rejected and last
/// rolled-back desired versions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemoteStatus {
    pub applied: Option<Entry>,
    pub pending: Option<Entry>,
    pub last_rejected: Option<Entry>,
    pub last_rolled_back: Option<Entry>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Entry {
    pub version: Option<u64>,
    /// Content hash of the config document (as `status` shows the running one).
    #[serde(default)]
    pub hash: Option<String>,
    #[serde(default)]
    pub reasons: Vec<String>,
    pub at: String,
}

/// An open trial, as the marker file records it.
#[derive(Debug, Serialize, Deserialize)]
struct Trial {
    version: u64,
    hash: String,
    previous_hash: String,
    started_at: String,
}

/// A trial found unconfirmed at start-up, and rolled back before the config was loaded.
#[derive(Debug)]
pub struct Recovered {
    pub version: Option<u64>,
    pub reason: String,
}

fn beside(config: &Path, suffix: &str) -> PathBuf {
    let mut p = config.as_os_str().to_owned();
    p.push(suffix);
    p.into()
}

pub fn last_good_path(config: &Path) -> PathBuf {
    beside(config, ".last-good")
}

pub fn trial_path(config: &Path) -> PathBuf {
    beside(config, ".trial")
}

/// Before the config is loaded: an open trial means the box stopped during an apply or a
/// trial. The last good config goes back (if the new one was already written).
pub fn recover_at_start(config: &Path) -> Result<Option<Recovered>, String> {
    let marker = trial_path(config);
    let text = match std::fs::read(&marker) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("read {}: {e}", marker.display())),
    };
    let trial: Option<Trial> = serde_json::from_slice(&text).ok();
    let good = last_good_path(config);
    match std::fs::read(&good) {
        Ok(bytes) => {
            let mode = file_mode(config);
            write_atomic(config, &bytes, mode).map_err(|e| {
                format!("restore {} from {}: {e}", config.display(), good.display())
            })?;
        }
        Err(e) => return Err(format!("read {}: {e}", good.display())),
    }
    std::fs::remove_file(&marker).map_err(|e| format!("remove {}: {e}", marker.display()))?;
    let version = trial.as_ref().map(|t| t.version);
    let reason = format!(
        "the box restarted during the trial of version {}: rolled back to the last good config",
        version.map_or("?".into(), |v| v.to_string())
    );
    tracing::warn!("{reason}");
    Ok(Some(Recovered { version, reason }))
}

fn file_mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o600)
}

pub fn load_status(st: &State) -> RemoteStatus {
    st.store
        .meta_get(STATUS_META)
        .ok()
        .flatten()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Applies desired configs one at a time.
pub async fn worker(
    st: Arc<State>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    recovered: Option<Recovered>,
) {
    if let Some(r) = recovered {
        let mut status = load(&st).await;
        status.pending = None;
        status.last_rolled_back = Some(entry(r.version, None, vec![r.reason.clone()]));
        finish(
            &st,
            status,
            ConfigState::RolledBack,
            r.version,
            vec![r.reason],
        )
        .await;
    }
    while let Some(payload) = rx.recv().await {
        apply(&st, &payload).await;
    }
}

async fn load(st: &Arc<State>) -> RemoteStatus {
    let s = st.clone();
    blocking(move || load_status(&s)).await
}

fn entry(version: Option<u64>, hash: Option<String>, reasons: Vec<String>) -> Entry {
    Entry {
        version,
        hash,
        reasons,
        at: utc_ms(now_ns()),
    }
}

/// Saves the status and reports `state` upstream (kept for every reconnect).
async fn finish(
    st: &Arc<State>,
    status: RemoteStatus,
    state: ConfigState,
    version: Option<u64>,
    reasons: Vec<String>,
) {
    let loaded = st.config();
    let reported = Reported {
        schema: SCHEMA_REPORTED.into(),
        site_id: loaded.config.site.site_id.clone(),
        device_id: loaded.config.site.device_id.clone(),
        state,
        version,
        applied_version: status.applied.as_ref().and_then(|a| a.version),
        applied_hash: loaded.version.clone(),
        reasons,
        at: utc_ms(now_ns()),
    };
    let s = st.clone();
    let r = blocking(move || {
        let text = serde_json::to_string(&status).expect("status serializes");
        s.store.meta_set(STATUS_META, &text)?;
        let payload = serde_json::to_vec(&reported).expect("report serializes");
        s.store.report_config(
            crate::uplink::REPORTED_META,
            topics::CONFIG_REPORTED,
            &payload,
            now_ns(),
        )
    })
    .await;
    match r {
        Ok(()) => notify_uplink(st),
        Err(e) => tracing::error!("remote config: recording the report: {e}"),
    }
}

async fn reject(st: &Arc<State>, version: Option<u64>, hash: Option<String>, reasons: Vec<String>) {
    tracing::warn!(version = ?version, "remote config REJECTED: {}", reasons.join("; "));
    let mut status = load(st).await;
    status.last_rejected = Some(entry(version, hash, reasons.clone()));
    finish(st, status, ConfigState::Rejected, version, reasons).await;
}

/// The version of a message that failed its checks, for the report (not trusted).
fn claimed_version(payload: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()?
        .get("version")?
        .as_u64()
}

async fn apply(st: &Arc<State>, payload: &[u8]) {
    let loaded = st.config();
    let cfg = &loaded.config;
    let trusted = cfg.trust.keys();
    let (d, key_id) = match remote::check::<Desired>(
        payload,
        &trusted,
        &cfg.site.site_id,
        &cfg.site.device_id,
        now_ns(),
    ) {
        Ok(v) => v,
        Err(e) => {
            let v = claimed_version(payload);
            return reject(st, v, None, vec![format!("config/desired: {e}")]).await;
        }
    };
    let status = load(st).await;
    let hash = version_of(d.config.as_bytes());
    let applied = status.applied.as_ref().and_then(|a| a.version).unwrap_or(0);
    if d.version == applied {
        tracing::debug!(version = d.version, "desired config already applied");
        return;
    }
    let seen = |e: &Option<Entry>| {
        e.as_ref()
            .is_some_and(|e| e.version == Some(d.version) && e.hash.as_deref() == Some(&hash))
    };
    // A retained message comes again on every connect: answer each version once.
    if seen(&status.last_rejected) || seen(&status.last_rolled_back) {
        return;
    }
    if d.version < applied {
        return reject(
            st,
            Some(d.version),
            Some(hash),
            vec![format!(
                "version: {} is not newer than the applied version {applied} (a replay or an out-of-date message)",
                d.version
            )],
        )
        .await;
    }
    tracing::info!(version = d.version, key = %key_id, "remote config received");
    let base = loaded.path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let new = match Config::parse(&d.config, &base) {
        Ok(c) => c,
        Err(problems) => {
            let e = ConfigError {
                file: PathBuf::from(format!("config/desired v{}", d.version)),
                problems,
            };
            let reasons = e.to_string().lines().map(str::to_string).collect();
            return reject(st, Some(d.version), Some(hash), reasons).await;
        }
    };
    let refused = fixed_remotely(cfg, &new);
    if !refused.is_empty() {
        return reject(st, Some(d.version), Some(hash), refused).await;
    }
    if hash == loaded.version {
        let mut status = status;
        status.applied = Some(entry(Some(d.version), Some(hash), vec![]));
        return finish(st, status, ConfigState::Applied, Some(d.version), vec![]).await;
    }

    // From here the box changes: last good first, then the marker, then the config.
    let path = loaded.path.clone();
    let (text, version) = (d.config.clone(), d.version);
    let trial = Trial {
        version,
        hash: hash.clone(),
        previous_hash: loaded.version.clone(),
        started_at: utc_ms(now_ns()),
    };
    let p = path.clone();
    let written = blocking(move || -> Result<Vec<u8>, String> {
        let mode = file_mode(&p);
        let old = std::fs::read(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
        let good = last_good_path(&p);
        write_atomic(&good, &old, mode).map_err(|e| format!("write {}: {e}", good.display()))?;
        let marker = trial_path(&p);
        let t = serde_json::to_vec(&trial).expect("trial serializes");
        write_atomic(&marker, &t, 0o600).map_err(|e| format!("write {}: {e}", marker.display()))?;
        write_atomic(&p, text.as_bytes(), mode)
            .map_err(|e| format!("write {}: {e}", p.display()))?;
        Ok(old)
    })
    .await;
    let old_bytes = match written {
        Ok(b) => b,
        Err(e) => {
            // Nothing was switched: the marker (if any) points at the same config.
            let _ = std::fs::remove_file(trial_path(&path));
            return reject(
                st,
                Some(version),
                Some(hash),
                vec![format!("writing the config: {e}")],
            )
            .await;
        }
    };
    let mut status = status;
    status.pending = Some(entry(Some(version), Some(hash.clone()), vec![]));
    finish(
        st,
        status.clone(),
        ConfigState::Pending,
        Some(version),
        vec![],
    )
    .await;

    let recording_before: HashSet<String> = st
        .cameras
        .health()
        .into_iter()
        .filter(|h| h.state == "recording")
        .map(|h| h.id)
        .collect();
    let outcome = match reload(st).await {
        Ok(_) => trial_window(st, cfg, &new, &recording_before).await,
        Err(e) => Err(vec![format!("reload: {e}")]),
    };
    match outcome {
        Ok(()) => {
            let p = path.clone();
            let _ = blocking(move || {
                std::fs::remove_file(trial_path(&p)).and_then(|()| {
                    storeguard_base::fs::fsync_dir(p.parent().unwrap_or(Path::new("/")))
                })
            })
            .await;
            tracing::info!(version, "remote config applied and confirmed");
            status.pending = None;
            status.applied = Some(entry(Some(version), Some(hash), vec![]));
            finish(st, status, ConfigState::Applied, Some(version), vec![]).await;
        }
        Err(reasons) => {
            tracing::error!(
                version,
                "remote config failed its trial, rolling back: {}",
                reasons.join("; ")
            );
            rollback(st, &path, old_bytes).await;
            status.pending = None;
            status.last_rolled_back = Some(entry(Some(version), Some(hash), reasons.clone()));
            finish(st, status, ConfigState::RolledBack, Some(version), reasons).await;
        }
    }
}

/// Puts the last good config back and reloads it; the marker goes last, so a crash in
/// between still rolls back at start-up.
async fn rollback(st: &Arc<State>, path: &Path, old: Vec<u8>) {
    let p = path.to_path_buf();
    let restored = blocking(move || write_atomic(&p, &old, file_mode(&p))).await;
    if let Err(e) = restored {
        tracing::error!("remote config: restoring {}: {e}", path.display());
        return;
    }
    if let Err(e) = reload(st).await {
        tracing::error!("remote config: reloading the last good config: {e}");
    }
    let _ = std::fs::remove_file(trial_path(path));
}

/// The trial: within `new.remote.trial`, every camera that was recording and every added
/// or changed camera records, and, if the link settings changed, the MQTT session is up
/// with them. Cameras already down and untouched do not count: a broken camera must not
/// block every other change.
async fn trial_window(
    st: &Arc<State>,
    old: &Config,
    new: &Config,
    recording_before: &HashSet<String>,
) -> Result<(), Vec<String>> {
    let changed = |id: &str| {
        let (a, b) = (old.camera(id), new.camera(id));
        a.is_none() || serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
    };
    let must_record: Vec<String> = new
        .cameras
        .iter()
        .filter(|c| c.enabled && (recording_before.contains(&c.id) || changed(&c.id)))
        .map(|c| c.id.clone())
        .collect();
    let link_changed = serde_json::to_value(&old.uplink).ok()
        != serde_json::to_value(&new.uplink).ok()
        || old.trust != new.trust;
    let deadline = Instant::now() + new.remote.trial.0;
    loop {
        let health = st.cameras.health();
        let mut missing: Vec<String> = Vec::new();
        for id in &must_record {
            match health.iter().find(|h| &h.id == id) {
                Some(h) if h.state == "recording" => {}
                Some(h) => missing.push(format!(
                    "cameras.{id}: not recording ({}{})",
                    h.state,
                    h.last_error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )),
                None => missing.push(format!("cameras.{id}: not started")),
            }
        }
        if link_changed {
            match st.uplink().as_ref() {
                Some(u) if u.is_connected() => {}
                Some(u) => missing.push(format!(
                    "uplink: not connected with the new settings{}",
                    u.last_error()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                )),
                None => missing.push("uplink: did not start with the new settings".into()),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let secs = new.remote.trial.0.as_secs_f64();
            return Err(missing
                .into_iter()
                .map(|m| format!("{m} after the {secs:.0} s trial"))
                .collect());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What a remote config may not change: it would move the box's data or local access, or
/// cut the box off from the control centre.
fn fixed_remotely(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.storage.data_dir != new.storage.data_dir {
        out.push(format!(
            "storage.data_dir: may not change remotely (it is {}; the database and footage live there)",
            old.storage.data_dir.display()
        ));
    }
    if serde_json::to_value(&old.control).ok() != serde_json::to_value(&new.control).ok() {
        out.push("control: the control socket and who may use it may not change remotely".into());
    }
    if old.site.site_id != new.site.site_id || old.site.device_id != new.site.device_id {
        out.push(
            "site: site_id and device_id may not change remotely (they name the box upstream)"
                .into(),
        );
    }
    if old.uplink.is_some() && new.uplink.is_none() {
        out.push("uplink: may not be removed remotely (the box would be cut off)".into());
    }
    if !new.remote.enabled {
        out.push("remote.enabled: may not be turned off remotely".into());
    }
    if new.trust.keys().is_empty() {
        out.push(
            "trust.control_centre_keys: may not be emptied remotely (the box would be cut off)"
                .into(),
        );
    }
    out
}
