//! From a button press to sealed evidence.
//!
//! 1. The press is committed as an event, together with its alert (outbox) and one
//!    clip job per mapped camera holding a retention lock over its window — one
//!    transaction, before anything else happens. Nothing on this path waits on clip
//!    work, eviction or the network.
//! 2. Clip jobs wait until the camera has recorded past the post-roll, force a sync
//!    of that camera, cut, hash, sign, and queue the manifest upstream.

use super::clip::{self, ClipSpec};
use super::key::DeviceKey;
use super::manifest::EventKind;
use crate::button::ButtonEvent;
use crate::button::service::Signal;
use crate::config::Config;
use crate::recording::{Recorder, now_ns, utc_ms};
use crate::store::Store;
use crate::store::events::{ClipRow, EventRow, NewClip};
use crate::store::outbox::Limits;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, broadcast};

/// How often a due clip job checks whether its camera has recorded past the window.
const ARRIVAL_POLL: Duration = Duration::from_millis(20);
/// Give up waiting for frames past the window (camera offline) after this long.
const WAIT_LIMIT: Duration = Duration::from_secs(10);

pub struct Incidents {
    pub store: Store,
    pub recorder: Arc<Recorder>,
    pub key: Arc<DeviceKey>,
    /// Live feed for `storeguard button watch`.
    pub watch: broadcast::Sender<Value>,
    pub clips_changed: Notify,
    /// Wakes the uplink when the outbox gained a message.
    pub outbox_changed: Notify,
    pub limits: Limits,
}

fn new_uid(prefix: &str, at_ns: i64) -> String {
    let mut r = [0u8; 3];
    let _ = getrandom::fill(&mut r);
    format!(
        "{prefix}-{}-{}",
        clip::utc(at_ns).format("%Y%m%dT%H%M%S%3fZ"),
        hex::encode(r)
    )
}

impl Incidents {
    /// Handles one button signal; returns the event uid for presses and faults.
    pub async fn on_signal(
        self: &Arc<Self>,
        sig: Signal,
        config: &Config,
    ) -> anyhow::Result<Option<String>> {
        let (kind, alert) = match sig.event {
            ButtonEvent::Pressed { .. } => ("isb_press", true),
            ButtonEvent::StuckFault { .. } => ("stuck_fault", true),
            ButtonEvent::WiringFault { .. } => ("wiring_fault", true),
            ButtonEvent::StuckCleared { .. } => ("stuck_cleared", false),
            ButtonEvent::WiringRestored { .. } => ("wiring_restored", false),
            ButtonEvent::Released { .. } => {
                let _ = self.watch.send(
                    json!({ "at": utc_ms(sig.utc_ns), "button": sig.button, "kind": "released" }),
                );
                return Ok(None);
            }
        };
        let Some(button) = config.button(&sig.button) else {
            return Ok(None);
        };
        let uid = new_uid("evt", sig.utc_ns);
        let clips: Vec<NewClip> = if kind == "isb_press" {
            button
                .cameras
                .iter()
                .map(|cam| NewClip {
                    uid: format!("{uid}-{cam}"),
                    camera: cam.clone(),
                    from_ns: sig.utc_ns - button.pre_roll.0.as_nanos() as i64,
                    to_ns: sig.utc_ns + button.post_roll.0.as_nanos() as i64,
                })
                .collect()
        } else {
            Vec::new()
        };
        let ev = EventRow {
            id: 0,
            uid: uid.clone(),
            kind: kind.to_string(),
            source: sig.button.clone(),
            at_ns: sig.utc_ns,
            test: sig.test,
            detail: json!({ "wiring": button.wiring, "cameras": button.cameras }),
        };
        let clip_uids: Vec<String> = clips.iter().map(|c| c.uid.clone()).collect();
        let bytes = crate::uplink::topics::button_alert_payload(
            &ev,
            &clip_uids,
            &config.site.site_id,
            &config.site.device_id,
        );
        let store = self.store.clone();
        let limits = self.limits;
        let topic = if alert { Some("alert") } else { None };
        tokio::task::spawn_blocking(move || {
            store.record_event(
                &ev,
                topic.map(|t| (t, bytes.as_slice())),
                &clips,
                limits,
                now_ns(),
            )
        })
        .await??;
        tracing::warn!(event = %uid, button = %sig.button, kind, test = sig.test, "button event recorded");
        if alert {
            self.outbox_changed.notify_one();
        }
        self.clips_changed.notify_one();
        let _ = self.watch.send(json!({ "at": utc_ms(sig.utc_ns), "button": sig.button, "kind": kind, "test": sig.test, "event_id": uid }));
        Ok(Some(uid))
    }

    /// Cuts pending clips as their windows complete. Runs until shutdown; jobs left
    /// pending by a restart are picked up again at start.
    pub async fn run_clip_jobs(
        self: Arc<Self>,
        config: impl Fn() -> Config + Send + 'static,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let store = self.store.clone();
            let pending =
                tokio::task::spawn_blocking(move || store.clips_in_state("pending")).await;
            let pending = match pending {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    tracing::error!("reading clip jobs: {e}");
                    Vec::new()
                }
                Err(_) => Vec::new(),
            };
            let now = now_ns();
            let mut next_due: Option<i64> = None;
            let mut due = Vec::new();
            for job in pending {
                // Due at the end of its window; `seal` then waits for the frames to arrive.
                let ready_at = job.to_ns;
                if ready_at <= now {
                    due.push(job);
                } else {
                    next_due = Some(next_due.map_or(ready_at, |d: i64| d.min(ready_at)));
                }
            }
            // Cameras in parallel: each clip is one GStreamer remux, mostly I/O.
            let cfg = config();
            let mut tasks = Vec::new();
            for job in due {
                let me = self.clone();
                let cfg = cfg.clone();
                tasks.push(tokio::spawn(async move { me.seal(job, &cfg).await }));
            }
            for t in tasks {
                let _ = t.await;
            }
            let wait = next_due
                .map(|d| Duration::from_nanos((d - now_ns()).max(0) as u64))
                .unwrap_or(Duration::from_secs(60));
            tokio::select! {
                _ = crate::daemon::stopped(&mut shutdown) => return,
                _ = self.clips_changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn seal(&self, job: ClipRow, cfg: &Config) {
        // Wait until the camera has recorded past the window (or give up: offline).
        let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
        loop {
            let until = self.recorder.written_until(&job.camera).unwrap_or(i64::MIN);
            if until >= job.to_ns || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(ARRIVAL_POLL).await;
        }
        let started = std::time::Instant::now();
        let store = self.store.clone();
        let recorder = self.recorder.clone();
        let key = self.key.clone();
        let site = cfg.site.clone();
        let name = cfg
            .camera(&job.camera)
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let limits = self.limits;
        let r = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            recorder.sync_now(&job.camera);
            let ev = job.event.and_then(|e| store.event_by_id(e).ok().flatten());
            let (ev_uid, test) = ev
                .map(|e| (e.uid, e.test))
                .unwrap_or_else(|| (job.uid.clone(), false));
            let spec = ClipSpec {
                uid: &job.uid,
                camera_id: &job.camera,
                camera_name: &name,
                from_ns: job.from_ns,
                to_ns: job.to_ns,
                event: clip::event_ref(&ev_uid, EventKind::IsbPress, test),
            };
            match clip::cut(&store, &key, &site, &spec) {
                Ok(sealed) => {
                    let (topic, bytes) =
                        crate::uplink::topics::manifest_message(&job.uid, &sealed.manifest);
                    store.seal_clip(
                        job.id,
                        &sealed.rel_path,
                        &sealed.manifest.file.sha256,
                        sealed.manifest.file.size,
                        Some((&topic, &bytes)),
                        now_ns(),
                        limits,
                    )?;
                    Ok(sealed.rel_path)
                }
                Err(e) => {
                    store.fail_clip(job.id, &e.to_string())?;
                    store.health_event(
                        now_ns(),
                        "clip_failed",
                        Some(&job.camera),
                        &e.to_string(),
                    )?;
                    Err(e.into())
                }
            }
        })
        .await;
        match r {
            Ok(Ok(path)) => {
                tracing::info!(clip = %path, ms = started.elapsed().as_millis() as u64, "evidence clip sealed");
                self.outbox_changed.notify_one();
                let _ = self
                    .watch
                    .send(json!({ "at": utc_ms(now_ns()), "kind": "clip_sealed", "path": path }));
            }
            Ok(Err(e)) => tracing::error!("evidence clip failed: {e:#}"),
            Err(e) => tracing::error!("evidence clip task failed: {e}"),
        }
    }
}
