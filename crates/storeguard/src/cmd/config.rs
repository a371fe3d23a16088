//! The running config: show it (secrets masked), and reload it from its file.

use super::{CmdError, Reply, blocking};
use crate::button::service::Buttons;
use crate::config::{Config, ConfigError};
use crate::state::{State, notify};
use crate::uplink::Uplink;
use sd_notify::NotifyState;
use serde_json::json;
use std::sync::Arc;

/// The effective config, secrets masked.
#[derive(Debug, Default)]
pub struct Show;

impl Show {
    pub fn apply(self, st: &Arc<State>) -> Result<Reply, CmdError> {
        let loaded = st.config();
        Ok(Reply::Json(json!({
            "path": loaded.path,
            "version": loaded.version,
            "toml": loaded.config.to_toml_masked(),
        })))
    }
}

/// What remote configuration did: the applied, pending, last rejected and last
/// rolled-back desired versions, with reasons (`storeguard config status`).
#[derive(Debug, Default)]
pub struct RemoteStatus;

impl RemoteStatus {
    pub async fn apply(self, st: &Arc<State>) -> Result<Reply, CmdError> {
        let s = st.clone();
        let raw = blocking(move || {
            s.store
                .meta_get(crate::store::remote::CONFIG_STATUS_META)
                .map_err(CmdError::internal)
        })
        .await?;
        let remote: serde_json::Value = raw
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| json!({}));
        let loaded = st.config();
        Ok(Reply::Json(json!({
            "running": { "path": loaded.path, "version": loaded.version },
            "remote_enabled": loaded.config.remote.enabled && loaded.config.uplink.is_some(),
            "applied": remote["applied"],
            "pending": remote["pending"],
            "last_rejected": remote["last_rejected"],
            "last_rolled_back": remote["last_rolled_back"],
        })))
    }
}

/// Re-reads the config file and applies what changed; on any problem the running config
/// stays as it is. SIGHUP runs the same command.
#[derive(Debug, Default)]
pub struct Reload;

#[derive(Debug, serde::Serialize)]
pub struct ReloadOutcome {
    pub changed: bool,
    pub version: String,
    pub previous: String,
}

fn differs<T: serde::Serialize>(a: &T, b: &T) -> bool {
    serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
}

/// Settings read once at start-up.
fn fixed_fields_differ(a: &Config, b: &Config) -> bool {
    a.storage.data_dir != b.storage.data_dir
        || a.control.socket != b.control.socket
        || a.control.group != b.control.group
        // The socket's access check is built once, at start-up.
        || a.control.allowed_uids != b.control.allowed_uids
}

impl Reload {
    pub async fn apply(self, st: &Arc<State>) -> Result<Reply, CmdError> {
        let outcome = reload(st).await?;
        Ok(Reply::Json(
            serde_json::to_value(outcome).map_err(CmdError::internal)?,
        ))
    }
}

pub async fn reload(st: &Arc<State>) -> Result<ReloadOutcome, CmdError> {
    let _one_at_a_time = st.reloading.lock().await;
    notify(&[
        NotifyState::Reloading,
        NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Status("")),
    ]);
    let result = reload_inner(st).await;
    notify(&[NotifyState::Ready, NotifyState::Status(&st.status_line())]);
    result
}

async fn reload_inner(st: &Arc<State>) -> Result<ReloadOutcome, CmdError> {
    let old = st.config();
    let path = old.path.clone();
    let new = blocking(move || {
        Config::load(&path).map_err(|e: ConfigError| CmdError::Refused(e.to_string()))
    })
    .await?;
    if fixed_fields_differ(&old.config, &new.config) {
        return Err(CmdError::Refused(
            "storage.data_dir and control.* cannot change while running; restart the service to apply them".into(),
        ));
    }
    let outcome = ReloadOutcome {
        changed: old.version != new.version,
        version: new.version.clone(),
        previous: old.version.clone(),
    };
    // The uplink first: the only part whose new settings can still fail to start (TLS
    // files); then nothing else has changed yet.
    if differs(&old.config.uplink, &new.config.uplink)
        || differs(&old.config.site, &new.config.site)
        || differs(&old.config.trust, &new.config.trust)
    {
        let s = st.clone();
        let cfg = new.config.clone();
        let prev = old.config.clone();
        blocking(move || restart_uplink(&s, &cfg, &prev)).await?;
    }
    st.store
        .set_outbox_limits(crate::uplink::outbox_limits(&new.config));
    let s = st.clone();
    let v = new.version.clone();
    blocking(move || {
        s.store
            .meta_set("config_version", &v)
            .map_err(CmdError::internal)
    })
    .await?;
    st.recorder.reconfigure(&new.config);
    st.time.reconfigure(&new.config);
    st.cameras.apply(&new.config);
    if differs(&old.config.buttons, &new.config.buttons) {
        // Buttons are few and cheap to reopen; restart them all on any change.
        let tx = st.signal_tx.clone();
        let mut b = st.buttons();
        b.shutdown();
        *b = Buttons::start(&new.config.buttons, tx);
        tracing::info!("buttons restarted with the new config");
    }
    let detect_changed = differs(&old.config.detect, &new.config.detect)
        || differs(&old.config.cameras, &new.config.cameras);
    *st.config.write().unwrap_or_else(|p| p.into_inner()) = new;
    if detect_changed {
        let s = st.clone();
        blocking(move || {
            s.restart_detection(&s.config().config);
            Ok(())
        })
        .await?;
    }
    tracing::info!(from = %outcome.previous, to = %outcome.version, "config reloaded");
    Ok(outcome)
}

/// Replaces the MQTT session with one for `cfg`. If it cannot start, the previous one is
/// started again and the reload is refused.
fn restart_uplink(st: &State, cfg: &Config, prev: &Config) -> Result<(), CmdError> {
    let mut slot = st.uplink();
    if let Some(old) = slot.take() {
        old.shutdown();
    }
    if cfg.uplink.is_none() {
        tracing::warn!("[uplink] removed: alerts and evidence stay on this box");
        return Ok(());
    }
    match Uplink::start_with(st.store.clone(), cfg, st.inbound.clone()) {
        Ok(u) => {
            *st.uplink_refused() = None;
            tracing::info!(broker = %cfg.uplink.as_ref().map(|u| u.broker.as_str()).unwrap_or(""), "uplink restarted with the new config");
            *slot = Some(u);
            Ok(())
        }
        Err(e) => {
            if prev.uplink.is_some() {
                *slot = Uplink::start_with(st.store.clone(), prev, st.inbound.clone()).ok();
            }
            Err(CmdError::Refused(format!("uplink: {e}")))
        }
    }
}
