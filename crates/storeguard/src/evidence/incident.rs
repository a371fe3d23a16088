//! From a trigger to sealed evidence.
//!
//! Every source of evidence (a panic-button press today; a detection or a remote request
//! later) enters the same way: a [`Trigger`] with its source, cameras and window.
//! 1. The trigger is committed as an event, together with its alert (outbox) and one
//!    clip job per camera holding a retention lock over its window — one transaction,
//!    before anything else happens. Nothing on this path waits on clip work, eviction
//!    or the network.
//! 2. Clip jobs wait until the camera has recorded past the window, force a sync of
//!    that camera, cut, hash, sign, and queue the manifest upstream.

use super::clip::{self, ClipSpec};
use crate::config::{Config, Site};
use crate::recording::Recorder;
use crate::store::Store;
use crate::store::events::{ClipRow, EventRow, NewClip};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use storeguard_base::{Shutdown, now_ns, utc_ms};
use storeguard_proto::DeviceKey;
use storeguard_proto::manifest::EventKind;
use storeguard_proto::topics::{AlertEvent, Shot, site_alert_payload};
use tokio::sync::{Notify, broadcast};

/// How often a due clip job checks whether its camera has recorded past the window.
const ARRIVAL_POLL: Duration = Duration::from_millis(20);
/// Give up waiting for frames past the window (camera offline) after this long.
const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// What raised a trigger. The event row's `source` is its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A panic button, by its configured name.
    Button(String),
    /// A technician on the control socket (uid of the caller).
    Technician(u32),
    /// The control centre, by the request id of its signed command.
    Remote(String),
    /// Person detection, by camera id.
    Detector(String),
}

impl Source {
    /// The kind of source, as alerts name it (`source_kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Button(_) => "button",
            Source::Technician(_) => "technician",
            Source::Remote(_) => "remote",
            Source::Detector(_) => "detector",
        }
    }

    pub fn name(&self) -> String {
        match self {
            Source::Button(n) => n.clone(),
            Source::Technician(uid) => format!("uid {uid}"),
            Source::Remote(request) => format!("request {request}"),
            Source::Detector(camera) => format!("camera {camera}"),
        }
    }
}

/// A request for an event, and for evidence from `cameras` over `[from_ns, to_ns]`.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// The event kind (`isb_press`, `stuck_fault`…); an open set, see [`EventKind`].
    pub kind: String,
    pub source: Source,
    /// UTC of the moment it happened (for a press: the kernel edge).
    pub at_ns: i64,
    pub test: bool,
    /// Whether it goes upstream as an alert (class 0).
    pub alert: bool,
    pub cameras: Vec<String>,
    /// The evidence window; `None` records the event without clips.
    pub window: Option<(i64, i64)>,
    pub detail: Value,
    /// Best shots committed with the event (their `event_id` is filled in here).
    pub shots: Vec<Shot>,
}

/// The evidence side of the daemon: triggers in, sealed clips out.
pub struct Incidents {
    pub store: Store,
    pub recorder: Arc<Recorder>,
    pub key: Arc<DeviceKey>,
    /// Live feed for `storeguard button watch`.
    pub watch: broadcast::Sender<Value>,
    pub clips_changed: Notify,
    /// Wakes the uplink when the outbox gained a message.
    pub outbox_changed: Notify,
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
    /// Commits a trigger: its event, its alert and its clip jobs in one transaction.
    /// Returns the event uid.
    pub async fn trigger(self: &Arc<Self>, t: Trigger, site: &Site) -> anyhow::Result<String> {
        let uid = new_uid("evt", t.at_ns);
        let clips: Vec<NewClip> = match t.window {
            Some((from_ns, to_ns)) => t
                .cameras
                .iter()
                .map(|cam| NewClip {
                    uid: format!("{uid}-{cam}"),
                    camera: cam.clone(),
                    from_ns,
                    to_ns,
                })
                .collect(),
            None => Vec::new(),
        };
        let source = t.source.name();
        let clip_uids: Vec<String> = clips.iter().map(|c| c.uid.clone()).collect();
        let alert = t.alert.then(|| {
            let ev = AlertEvent {
                uid: &uid,
                kind: &t.kind,
                source: &source,
                source_kind: t.source.kind(),
                at_ns: t.at_ns,
                test: t.test,
                cameras: &t.cameras,
                detail: &t.detail,
            };
            site_alert_payload(&ev, &clip_uids, &site.site_id, &site.device_id)
        });
        let ev = EventRow {
            id: 0,
            uid: uid.clone(),
            kind: t.kind.clone(),
            source: source.clone(),
            at_ns: t.at_ns,
            test: t.test,
            detail: t.detail,
            time: None,
        };
        let shots: Vec<Vec<u8>> = t
            .shots
            .into_iter()
            .map(|mut s| {
                s.event_id = Some(uid.clone());
                serde_json::to_vec(&s).expect("a shot serializes")
            })
            .collect();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let extra: Vec<(&str, &[u8])> = shots.iter().map(|b| ("shot", &b[..])).collect();
            store.record_event_with(
                &ev,
                alert.as_deref().map(|b| ("alert", b)),
                &extra,
                &clips,
                now_ns(),
            )
        })
        .await??;
        tracing::warn!(event = %uid, source = %source, kind = %t.kind, test = t.test, "event recorded");
        if t.alert {
            self.outbox_changed.notify_one();
        }
        self.clips_changed.notify_one();
        let mut w =
            json!({ "at": utc_ms(t.at_ns), "kind": t.kind, "test": t.test, "event_id": uid });
        if let Source::Button(b) = &t.source {
            w["button"] = b.clone().into();
        } else {
            w["source"] = source.into();
        }
        let _ = self.watch.send(w);
        Ok(uid)
    }

    /// Cuts pending clips as their windows complete. Runs until shutdown; jobs left
    /// pending by a restart are picked up again at start.
    pub async fn run_clip_jobs(
        self: Arc<Self>,
        config: impl Fn() -> Config + Send + 'static,
        mut shutdown: Shutdown,
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
                _ = shutdown.stopped() => return,
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
        // Marks the moment for the crash campaign (sg-campaign), which kills here.
        tracing::debug!(clip = %job.uid, camera = %job.camera, "cutting evidence clip");
        let store = self.store.clone();
        let recorder = self.recorder.clone();
        let key = self.key.clone();
        let site = cfg.site.clone();
        let name = cfg
            .camera(&job.camera)
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let r = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            recorder.sync_now(&job.camera);
            let ev = job.event.and_then(|e| store.event_by_id(e).ok().flatten());
            let (ev_uid, kind, test) = ev
                .map(|e| (e.uid, EventKind::new(e.kind), e.test))
                .unwrap_or_else(|| (job.uid.clone(), EventKind::new(EventKind::ISB_PRESS), false));
            let spec = ClipSpec {
                uid: &job.uid,
                camera_id: &job.camera,
                camera_name: &name,
                from_ns: job.from_ns,
                to_ns: job.to_ns,
                event: clip::event_ref(&ev_uid, kind, test),
            };
            match clip::cut(&store, &key, &site, &spec) {
                Ok(sealed) => {
                    let (topic, bytes) =
                        storeguard_proto::topics::manifest_message(&job.uid, &sealed.manifest);
                    store.seal_clip(
                        job.id,
                        &sealed.rel_path,
                        &sealed.manifest.file.sha256,
                        sealed.manifest.file.size,
                        Some((&topic, &bytes)),
                        now_ns(),
                    )?;
                    Ok(sealed.rel_path)
                }
                Err(e) => {
                    let why = storeguard_base::error::chain(&e);
                    store.fail_clip(job.id, &why)?;
                    store.health_event(now_ns(), "clip_failed", Some(&job.camera), &why)?;
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
