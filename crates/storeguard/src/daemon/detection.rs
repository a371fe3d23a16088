//! What detection's outputs become: events like presses (alert, clip, best shot), tamper
//! health with a still, detector health; and the today image after a press.

use crate::detect::{Output, Shot};
use crate::evidence::incident::{Source, Trigger};
use crate::state::State;
use serde_json::json;
use std::sync::Arc;
use storeguard_base::now_ns;

pub async fn run(st: Arc<State>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Output>) {
    while let Some(o) = rx.recv().await {
        if let Err(e) = handle(&st, o).await {
            tracing::error!("recording a detection output failed: {e:#}");
        }
    }
}

async fn handle(st: &Arc<State>, o: Output) -> anyhow::Result<()> {
    let cfg = st.config().config;
    match o {
        Output::Event {
            camera,
            kind,
            at_ns,
            track,
            zone,
            dwell_ns,
            score,
            shot,
        } => {
            // Loitering and a person in a closed store are alarms worth footage.
            let window = matches!(kind, "loitering" | "closed_hours").then(|| {
                (
                    at_ns - cfg.detect.pre_roll.0.as_nanos() as i64,
                    at_ns + cfg.detect.post_roll.0.as_nanos() as i64,
                )
            });
            let t = Trigger {
                kind: kind.into(),
                source: Source::Detector(camera.clone()),
                at_ns,
                test: false,
                alert: true,
                cameras: vec![camera.clone()],
                window,
                detail: json!({
                    "camera": camera,
                    "track": track,
                    "zone": zone,
                    "dwell_s": dwell_ns.map(|d| (d as f64 / 1e8).round() / 10.0),
                    "score": (score * 1000.0).round() / 1000.0,
                }),
                shots: shot.iter().map(|s| s.payload(&cfg.site, "event")).collect(),
            };
            st.incidents.trigger(t, &cfg.site).await?;
        }
        Output::Tamper {
            camera,
            kind,
            raised,
            at_ns,
            still,
        } => {
            let store = st.store.clone();
            let kind_name = if raised {
                kind.to_string()
            } else {
                format!("{kind}_cleared")
            };
            let payload = still.filter(|_| raised).map(|s| {
                let mut p = s.payload(&cfg.site, "tamper");
                p.health = Some(kind.to_string());
                serde_json::to_vec(&p).expect("a shot serializes")
            });
            let detail = if raised {
                "raised: the camera's picture looks tampered with (docs/detect.md)"
            } else {
                "cleared"
            };
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                store.health_event(at_ns, &kind_name, Some(&camera), detail)?;
                if let Some(p) = payload {
                    store.enqueue_evidence("shot", &[p], now_ns())?;
                }
                Ok(())
            })
            .await??;
            st.incidents.outbox_changed.notify_one();
        }
        Output::Health { kind, detail } => {
            let store = st.store.clone();
            tokio::task::spawn_blocking(move || store.health_event(now_ns(), kind, None, &detail))
                .await??;
            st.incidents.outbox_changed.notify_one();
        }
    }
    Ok(())
}

/// After a press: per mapped camera, the best shots of the people tracked there since
/// `from_ns` (the pre-roll), or a plain still when nobody was.
pub async fn today_images(
    st: Arc<State>,
    event: String,
    cameras: Vec<String>,
    from_ns: i64,
    at_ns: i64,
) {
    let cfg = st.config().config;
    let mut payloads = Vec::new();
    for cam in &cameras {
        let shots: Vec<Shot> = match st.detection().as_ref() {
            Some(d) => d.shots(cam, from_ns, at_ns),
            None => Vec::new(),
        };
        let mut chosen: Vec<_> = shots
            .iter()
            .map(|s| s.payload(&cfg.site, "press"))
            .collect();
        if chosen.is_empty() {
            // Nobody tracked (or no detection here): the latest keyframe from the ring.
            let store = st.store.clone();
            let c = cam.clone();
            if let Ok(Ok(s)) = tokio::task::spawn_blocking(move || {
                crate::evidence::still::latest(&store, &c, now_ns())
            })
            .await
            {
                use base64::Engine;
                let (w, h) = image::load_from_memory(&s.jpeg)
                    .map(|i| (i.width(), i.height()))
                    .unwrap_or((1, 1));
                chosen.push(storeguard_proto::topics::Shot {
                    schema: storeguard_proto::topics::SCHEMA_SHOT.into(),
                    site_id: cfg.site.site_id.clone(),
                    device_id: cfg.site.device_id.clone(),
                    event_id: None,
                    reason: "still".into(),
                    health: None,
                    camera: cam.clone(),
                    at: storeguard_base::utc_ms(s.at_ns),
                    track: None,
                    score: None,
                    bbox: None,
                    frame_width: w,
                    frame_height: h,
                    crop_jpeg: None,
                    frame_jpeg: base64::engine::general_purpose::STANDARD.encode(&s.jpeg),
                });
            }
        }
        for mut p in chosen {
            p.event_id = Some(event.clone());
            payloads.push(serde_json::to_vec(&p).expect("a shot serializes"));
        }
    }
    let n = payloads.len();
    let store = st.store.clone();
    let r =
        tokio::task::spawn_blocking(move || store.enqueue_evidence("shot", &payloads, now_ns()))
            .await;
    match r {
        Ok(Ok(())) => {
            tracing::info!(event = %event, shots = n, "today images queued");
            st.incidents.outbox_changed.notify_one();
        }
        Ok(Err(e)) => tracing::error!(event = %event, "queueing today images failed: {e:#}"),
        Err(e) => tracing::error!(event = %event, "queueing today images failed: {e}"),
    }
}
