//! The running daemon's shared state: what every command is applied to.
//!
//! The daemon builds one [`State`] at start-up; commands (`cmd`) read and change it; the
//! transports (control socket, and later MQTT) only reach it through commands.

use crate::button::service::{Buttons, Signal};
use crate::camera::Supervisor;
use crate::config::{Config, Loaded};
use crate::detect::{Detection, Output};
use crate::evidence::incident::Incidents;
use crate::recording::Recorder;
use crate::store::Store;
use crate::timekeep::TimeKeeper;
use crate::uplink::{InboundSink, UplinkHandle};
use chrono::{DateTime, Utc};
use sd_notify::NotifyState;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;
use storeguard_base::shutdown;

pub struct State {
    pub recorder: Arc<Recorder>,
    pub incidents: Arc<Incidents>,
    pub buttons: Mutex<Buttons>,
    pub signal_tx: tokio::sync::mpsc::UnboundedSender<Signal>,
    /// None when the config has no [uplink] section (the box then only records locally).
    pub uplink: Mutex<Option<UplinkHandle>>,
    /// Why the configured uplink is not running (no trusted key), for status and doctor.
    pub uplink_refused: Mutex<Option<String>>,
    /// Where a (re)started uplink hands remote config and commands; None when
    /// `remote.enabled` is off.
    pub inbound: Option<InboundSink>,
    pub cameras: Supervisor,
    /// None when `detect.enabled` is off.
    pub detection: Mutex<Option<Detection>>,
    /// Where detection's events and alarms go (the daemon commits them).
    pub detect_out: tokio::sync::mpsc::UnboundedSender<Output>,
    pub started: Instant,
    pub started_utc: DateTime<Utc>,
    pub config: RwLock<Loaded>,
    pub store: Store,
    /// The box clock's state, steps and corrections (docs/time.md).
    pub time: Arc<TimeKeeper>,
    pub shutdown: shutdown::Trigger,
    /// Serialises reloads: SIGHUP and `config reload` may arrive together.
    pub reloading: tokio::sync::Mutex<()>,
}

impl State {
    pub fn config(&self) -> Loaded {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn buttons(&self) -> MutexGuard<'_, Buttons> {
        self.buttons.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn uplink(&self) -> MutexGuard<'_, Option<UplinkHandle>> {
        self.uplink.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn uplink_refused(&self) -> MutexGuard<'_, Option<String>> {
        self.uplink_refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn detection(&self) -> MutexGuard<'_, Option<Detection>> {
        self.detection.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (Re)starts detection for `cfg`: the old threads stop first. Blocking (a decode in
    /// progress finishes). A detection that cannot start is logged; recording goes on.
    pub fn restart_detection(&self, cfg: &Config) {
        self.recorder.set_keyframe_tap(None);
        let mut slot = self.detection();
        if let Some(mut old) = slot.take() {
            old.stop();
        }
        if !cfg.detect.enabled {
            return;
        }
        match Detection::start(
            cfg,
            crate::detect::service::ort_factory(),
            self.detect_out.clone(),
        ) {
            Ok((d, tap)) => {
                self.recorder.set_keyframe_tap(Some(tap));
                tracing::info!(cameras = d.summary().cameras, "detection started");
                *slot = Some(d);
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "detection cannot start; recording goes on without it")
            }
        }
    }

    /// One line for `systemctl status`.
    pub fn status_line(&self) -> String {
        let c = self.config();
        format!(
            "site {} device {}: {} cameras, config {}",
            c.config.site.site_id,
            c.config.site.device_id,
            c.config.cameras.len(),
            c.version
        )
    }
}

/// Tells systemd (when it is listening) about a state change.
pub fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}
