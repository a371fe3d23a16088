//! `cmd/{name}`: signed commands, each run once per request id, through the command layer
//! where one exists. Results go to `cmd/{name}/result` through the outbox.

use super::{blocking, notify_uplink};
use crate::cmd::{self, Caller, CmdError, Reply, Via};
use crate::evidence::incident::{Source, Trigger};
use crate::state::State;
use crate::store::remote::Request;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use storeguard_base::{now_ns, utc_ms};
use storeguard_proto::remote::{self, CmdResult, CmdStatus, Command, SCHEMA_CMD_RESULT};
use storeguard_proto::topics;

/// The commands, for error messages.
pub const NAMES: &[&str] = &[
    "snapshot",
    "clip",
    "hold",
    "release",
    "recordings",
    "button_test",
    "restart_camera",
    "status",
    "package",
];
/// A remote clip or hold covers at most this span.
const MAX_SPAN_NS: i64 = 24 * 3600 * 1_000_000_000;
/// `package` waits for clips still being cut until this long after their window ends...
const PACKAGE_CUT_GRACE_NS: i64 = 30_000_000_000;
/// ...and never longer than this in all.
const PACKAGE_WAIT_MAX: Duration = Duration::from_secs(600);

fn caller() -> Caller {
    Caller {
        uid: None,
        pid: None,
        via: Via::Remote,
    }
}

/// Checks, runs (once) and answers one command.
pub async fn handle(st: &Arc<State>, name: &str, payload: &[u8]) {
    let cfg = st.config().config;
    let (site, device) = (cfg.site.site_id.clone(), cfg.site.device_id.clone());
    let answer = |request_id: &str, status, result, error: Option<String>| CmdResult {
        schema: SCHEMA_CMD_RESULT.into(),
        site_id: site.clone(),
        device_id: device.clone(),
        name: name.to_string(),
        request_id: request_id.to_string(),
        status,
        result,
        error,
        duplicate: false,
        at: utc_ms(now_ns()),
    };
    let claimed = serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v.get("request_id")?.as_str().map(str::to_string))
        .unwrap_or_default();
    let (cmd, key_id) =
        match remote::check::<Command>(payload, &cfg.trust.keys(), &site, &device, now_ns()) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(name, request = %claimed, "remote command REJECTED: {e}");
                let r = answer(
                    &claimed,
                    CmdStatus::Rejected,
                    None,
                    Some(format!("cmd/{name}: {e}")),
                );
                return send(st, None, name, &r).await;
            }
        };
    if !NAMES.contains(&name) {
        let r = answer(
            &cmd.request_id,
            CmdStatus::Rejected,
            None,
            Some(format!(
                "cmd/{name}: no such command (known: {})",
                NAMES.join(", ")
            )),
        );
        return send(st, None, name, &r).await;
    }
    let id = cmd.request_id.clone();
    let store = st.store.clone();
    let (rid, rname) = (id.clone(), name.to_string());
    let known = blocking(move || store.remote_request_begin(&rid, &rname, now_ns())).await;
    match known {
        Ok(Request::New) => {}
        Ok(Request::Done(prev)) => {
            tracing::info!(name, request = %id, "repeated request id: answering from the stored result");
            if let Ok(mut r) = serde_json::from_slice::<CmdResult>(&prev) {
                r.duplicate = true;
                r.at = utc_ms(now_ns());
                send(st, None, name, &r).await;
            }
            return;
        }
        Ok(Request::Interrupted) => {
            let r = answer(
                &id,
                CmdStatus::Failed,
                None,
                Some("this request id was started before and did not finish (the box stopped); it is not run twice".into()),
            );
            return send(st, Some(&id), name, &r).await;
        }
        Err(e) => {
            tracing::error!(name, request = %id, "remote command: recording the request: {e}");
            return;
        }
    }
    tracing::info!(name, request = %id, key = %key_id, "remote command");
    let r = match run(st, name, &cmd).await {
        Ok(v) => answer(&id, CmdStatus::Ok, Some(v), None),
        Err(e) => {
            tracing::warn!(name, request = %id, "remote command failed: {e}");
            answer(&id, CmdStatus::Failed, None, Some(e))
        }
    };
    // Who asked for footage, and what came of it, belongs in the chain of custody.
    let detail = serde_json::json!({
        "key_id": key_id,
        "args": cmd.args,
        "status": r.status,
        "error": r.error,
    })
    .to_string();
    let (store, action, target) = (st.store.clone(), format!("remote_{name}"), id.clone());
    if let Err(e) =
        blocking(move || store.audit(now_ns(), None, None, &action, &target, &detail)).await
    {
        tracing::error!(name, request = %id, "remote command: writing the audit row: {e}");
    }
    send(st, Some(&id), name, &r).await;
}

async fn send(st: &Arc<State>, request_id: Option<&str>, name: &str, r: &CmdResult) {
    let payload = serde_json::to_vec(r).expect("result serializes");
    let (store, id, topic) = (
        st.store.clone(),
        request_id.map(str::to_string),
        topics::cmd_result_topic(name),
    );
    let done =
        blocking(move || store.remote_result(id.as_deref(), &topic, &payload, now_ns())).await;
    match done {
        Ok(()) => notify_uplink(st),
        Err(e) => tracing::error!(name, "remote command: queuing the result: {e}"),
    }
}

fn args<T: for<'de> Deserialize<'de>>(name: &str, v: &Value) -> Result<T, String> {
    serde_json::from_value(v.clone()).map_err(|e| format!("cmd/{name}: args: {e}"))
}

fn json_of(r: Result<Reply, CmdError>) -> Result<Value, String> {
    match r {
        Ok(Reply::Json(v) | Reply::Accepted(v)) => Ok(v),
        Ok(_) => Ok(Value::Null),
        Err(e) => Err(e.to_string()),
    }
}

fn time(field: &str, s: &str) -> Result<i64, String> {
    cmd::time_arg(field, s).map_err(|e| e.to_string())
}

/// A UTC range in the past, no longer than a day.
fn range(from: &str, to: &str) -> Result<(i64, i64), String> {
    let (f, t) = (time("from", from)?, time("to", to)?);
    if f >= t {
        return Err("from must be before to".into());
    }
    if t - f > MAX_SPAN_NS {
        return Err("the range is longer than 24 h".into());
    }
    Ok((f, t))
}

fn known_cameras(st: &State, cameras: &[String]) -> Result<(), String> {
    let cfg = st.config().config;
    for c in cameras {
        cfg.known_camera(c)?;
    }
    if cameras.is_empty() {
        return Err("cameras: name at least one".into());
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Cameras {
    #[serde(default)]
    cameras: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Span {
    cameras: Vec<String>,
    from: String,
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Hold {
    cameras: Vec<String>,
    from: String,
    to: String,
    reason: String,
    expires_at: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Release {
    hold_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Recordings {
    camera: String,
    from: String,
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ButtonTest {
    button: String,
    #[serde(default = "default_hold_ms")]
    hold_ms: u64,
}

fn default_hold_ms() -> u64 {
    200
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OneCamera {
    camera: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackageArgs {
    event: String,
}

async fn run(st: &Arc<State>, name: &str, c: &Command) -> Result<Value, String> {
    let a = &c.args;
    match name {
        "status" => {
            let status = json_of(cmd::status::Status.apply(st).await)?;
            let cameras = json_of(cmd::cameras::Cameras.apply(st).await)?;
            Ok(json!({ "status": status, "cameras": cameras }))
        }
        "snapshot" => snapshot(st, args::<Cameras>(name, a)?.cameras).await,
        "clip" => {
            let s: Span = args(name, a)?;
            known_cameras(st, &s.cameras)?;
            let (from, to) = range(&s.from, &s.to)?;
            if to > now_ns() {
                return Err(format!("to: {} is in the future", s.to));
            }
            let site = st.config().config.site;
            let t = Trigger {
                kind: "remote_clip".into(),
                source: Source::Remote(c.request_id.clone()),
                at_ns: now_ns(),
                test: false,
                alert: false,
                cameras: s.cameras.clone(),
                window: Some((from, to)),
                detail: json!({ "request_id": c.request_id, "from": utc_ms(from), "to": utc_ms(to) }),
                shots: Vec::new(),
            };
            let event = st
                .incidents
                .trigger(t, &site)
                .await
                .map_err(|e| format!("recording the request: {e:#}"))?;
            let clips: Vec<String> = s
                .cameras
                .iter()
                .map(|cam| format!("{event}-{cam}"))
                .collect();
            Ok(json!({ "event": event, "clips": clips, "from": utc_ms(from), "to": utc_ms(to) }))
        }
        "hold" => {
            let h: Hold = args(name, a)?;
            known_cameras(st, &h.cameras)?;
            let (from, to) = range(&h.from, &h.to)?;
            let expires = time("expires_at", &h.expires_at)?;
            if expires <= now_ns() {
                return Err(format!("expires_at: {} is in the past", h.expires_at));
            }
            if h.reason.trim().is_empty() {
                return Err("reason: say why the footage is held".into());
            }
            let (store, id, cams) = (st.store.clone(), c.request_id.clone(), h.cameras.clone());
            let reason = format!("hold {}: {}", c.request_id, h.reason);
            blocking(move || store.add_hold(&id, &cams, (from, to), &reason, expires, now_ns()))
                .await
                .map_err(|e| e.to_string())?;
            Ok(
                json!({ "hold_id": c.request_id, "cameras": h.cameras, "from": utc_ms(from), "to": utc_ms(to), "expires_at": utc_ms(expires) }),
            )
        }
        "release" => {
            let r: Release = args(name, a)?;
            let store = st.store.clone();
            let id = r.hold_id.clone();
            let n = blocking(move || store.release_hold(&id))
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!(
                    "no hold {:?} (released already, expired, or never made)",
                    r.hold_id
                ));
            }
            Ok(json!({ "hold_id": r.hold_id, "locks_released": n }))
        }
        "recordings" => {
            let r: Recordings = args(name, a)?;
            known_cameras(st, std::slice::from_ref(&r.camera))?;
            let (from, to) = range(&r.from, &r.to)?;
            recordings(st, &r.camera, from, to).await
        }
        "button_test" => {
            let b: ButtonTest = args(name, a)?;
            let hold = Duration::from_millis(b.hold_ms.clamp(1, 10_000));
            json_of(
                cmd::buttons::Press {
                    button: b.button,
                    test: true,
                    hold,
                }
                .apply(st, caller())
                .await,
            )
        }
        "restart_camera" => {
            let o: OneCamera = args(name, a)?;
            known_cameras(st, std::slice::from_ref(&o.camera))?;
            st.cameras.restart(&o.camera);
            Ok(json!({ "camera": o.camera, "restarted": true }))
        }
        "package" => package(st, args::<PackageArgs>(name, a)?.event, &c.request_id).await,
        other => Err(format!("no such command {other:?}")),
    }
}

/// An evidence package of an event, built as a `.zip` on the box and queued for upload:
/// the answer says what was packaged; the upload then goes on through the outbox.
async fn package(st: &Arc<State>, event: String, request_id: &str) -> Result<Value, String> {
    // Asked for right after an alert, the post-roll may not be over: wait for the clips
    // (a clip is cut within seconds of its window's end), then build.
    let give_up = std::time::Instant::now() + PACKAGE_WAIT_MAX;
    loop {
        let (st2, ev) = (st.clone(), event.clone());
        let until = blocking(move || cmd::package::cutting_until(&st2, &ev))
            .await
            .map_err(|e| e.message())?;
        match until {
            Some(end)
                if now_ns() < end + PACKAGE_CUT_GRACE_NS && std::time::Instant::now() < give_up =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            // None pending, or waited long enough: building says what is missing.
            _ => break,
        }
    }
    let (st2, rid) = (st.clone(), request_id.to_string());
    let up = blocking(move || cmd::package::upload_event_package(&st2, &event, &rid, caller()))
        .await
        .map_err(|e| e.message())?;
    notify_uplink(st);
    let m = &up.built.manifest;
    Ok(json!({
        "package": m.package_id,
        "event": m.event.as_ref().map(|e| &e.id),
        "file": up.file,
        "cameras": m.cameras.iter().map(|c| json!({
            "id": c.id, "clip": c.clip, "actual": c.actual, "gaps": c.gaps,
        })).collect::<Vec<_>>(),
        "files": m.files,
        "cut": up.built.cut,
        "manifest_signature": m.signature.as_ref().map(|s| &s.value),
        "upload": "queued",
    }))
}

async fn snapshot(st: &Arc<State>, mut cameras: Vec<String>) -> Result<Value, String> {
    let cfg = st.config().config;
    if cameras.is_empty() {
        cameras = cfg
            .cameras
            .iter()
            .filter(|c| c.enabled)
            .map(|c| c.id.clone())
            .collect();
    } else {
        known_cameras(st, &cameras)?;
    }
    let store = st.store.clone();
    let stills = blocking(move || {
        let now = now_ns();
        cameras
            .iter()
            .map(|c| crate::evidence::still::latest(&store, c, now).map_err(|e| e.to_string()))
            .collect::<Vec<_>>()
    })
    .await;
    let mut images = Vec::new();
    let mut errors = Vec::new();
    for s in stills {
        match s {
            Ok(s) => images.push(json!({
                "camera": s.camera,
                "at": utc_ms(s.at_ns),
                "bytes": s.jpeg.len(),
                "jpeg": base64::engine::general_purpose::STANDARD.encode(&s.jpeg),
            })),
            Err(e) => errors.push(e),
        }
    }
    if images.is_empty() {
        return Err(errors.join("; "));
    }
    Ok(json!({ "images": images, "errors": errors }))
}

/// What the ring holds for a camera over a range: recorded spans and the gaps, with why.
async fn recordings(st: &Arc<State>, camera: &str, from: i64, to: i64) -> Result<Value, String> {
    let (store, cam) = (st.store.clone(), camera.to_string());
    let (segs, gaps) = blocking(move || -> Result<_, String> {
        let segs = store
            .segments_between(&cam, from, to)
            .map_err(|e| e.to_string())?;
        let gaps = store
            .gaps_between(&cam, from, to)
            .map_err(|e| e.to_string())?;
        Ok((segs, gaps))
    })
    .await?;
    // Segments that touch (within a frame or two) are one recorded span.
    const JOIN_NS: i64 = 250_000_000;
    let mut spans: Vec<(i64, i64, u64)> = Vec::new();
    for s in &segs {
        match spans.last_mut() {
            Some(last) if s.start_ns - last.1 <= JOIN_NS => {
                last.1 = last.1.max(s.end_ns);
                last.2 += s.bytes;
            }
            _ => spans.push((s.start_ns, s.end_ns, s.bytes)),
        }
    }
    let bytes: u64 = segs.iter().map(|s| s.bytes).sum();
    Ok(json!({
        "camera": camera,
        "from": utc_ms(from),
        "to": utc_ms(to),
        "segments": segs.len(),
        "bytes": bytes,
        "recorded": spans.iter().map(|(a, b, n)| json!({ "from": utc_ms(*a), "to": utc_ms(*b), "bytes": n })).collect::<Vec<_>>(),
        "gaps": gaps.iter().map(|g| json!({ "from": utc_ms(g.start_ns), "to": g.end_ns.map(utc_ms), "reason": g.reason })).collect::<Vec<_>>(),
    }))
}
