//! Daemon lifecycle: start-up order, systemd notification, signals, reload and draining.
//!
//! Start-up: config (exit 78 on error) → data directory lock and database → control
//! socket → components → READY. Shutdown: stop accepting, drain components with a
//! deadline, close the database, exit 0. A second SIGTERM/SIGINT exits at once.
//! The daemon builds the [`State`] and wires the transports to it; every operation on
//! it is a command (`cmd`).

mod detection;
mod watchdog;

use crate::button::service::{Buttons, Signal};
use crate::camera::{self, GstCamera, RetinaCamera, Supervisor};
use crate::cmd;
use crate::config::{self as cfgmod, Config, Ingest, Loaded};
use crate::control::{self, Access, BindError, Listener};
use crate::evidence::incident::{Incidents, Source, Trigger};
use crate::exit::{self, coded};
use crate::recording::Recorder;
use crate::state::{State, notify};
use crate::store::Store;
use crate::uplink::{Uplink, UplinkError, UplinkHandle};
use anyhow::{Context, Result};
use sd_notify::NotifyState;
use serde_json::json;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use storeguard_base::{shutdown, utc_ms};
use storeguard_proto::DeviceKey;
use tokio::signal::unix::{SignalKind, signal};

/// How often a button event the database refused is tried again.
const PRESS_RETRY: Duration = Duration::from_secs(1);
/// How long shutdown may take before we stop waiting for components.
const DRAIN_DEADLINE: Duration = Duration::from_secs(4);
/// Exit code when a second signal cuts the drain short.
pub const EXIT_INTERRUPTED: i32 = 130;

/// glibc raises its mmap threshold each time a large block is freed, after which the
/// decoder's multi-megabyte pictures come from the heap and stay resident; a fixed
/// threshold hands them back to the kernel. Fewer arenas for the many threads, too.
fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

pub fn run(config_path: &Path) -> Result<()> {
    tune_malloc();
    // Before loading: a remote config trial the box never confirmed is rolled back.
    let recovered = crate::remote::desired::recover_at_start(config_path).map_err(|e| {
        coded(
            exit::IOERR,
            format!("rolling back an unconfirmed remote config: {e}"),
        )
    })?;
    let loaded = Config::load(config_path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sg-rt")
        // Lets the store assert that it is never entered from a worker.
        .on_thread_unpark(storeguard_base::runtime::mark_async_worker)
        .enable_all()
        .build()
        // Not a config problem (exit 78 tells systemd not to restart): resources.
        .map_err(|e| coded(exit::OSERR, format!("starting the async runtime: {e}")))?;
    rt.block_on(run_async(loaded, recovered))
}

async fn run_async(
    loaded: Loaded,
    recovered: Option<crate::remote::desired::Recovered>,
) -> Result<()> {
    // Before anything else: systemd may send SIGHUP (reload) or SIGTERM as soon as it
    // sees READY, and an uninstalled handler means the default action, death.
    let signals = Signals::install()?;
    let cfg = loaded.config.clone();
    tracing::info!(version = storeguard_base::VERSION, config = %loaded.path.display(), config_version = %loaded.version,
        site = %cfg.site.site_id, device = %cfg.site.device_id, "storeguard starting");

    let data_dir = cfg.storage.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data_dir)).await??;
    store.set_outbox_limits(crate::uplink::outbox_limits(&cfg));
    store.meta_set("config_version", &loaded.version)?;
    let spool = store.clone();
    tokio::task::spawn_blocking(move || crate::evidence::package::clean_spool(&spool)).await?;

    let (listener, gid) = Listener::bind(&cfg.control.socket, cfg.control.group.as_deref())
        .await
        .map_err(|e| match e {
            BindError::NoSuchGroup(_) => coded(
                exit::CONFIG,
                format!("{}: control.group: {e}", loaded.path.display()),
            ),
            e => coded(exit::CANTCREAT, storeguard_base::error::chain(&e)),
        })?;
    let access = Access {
        group: cfg.control.group.clone().zip(gid),
        allowed_uids: cfg.control.allowed_uids.clone(),
    };

    camera::init_gstreamer().map_err(|e| coded(exit::SOFTWARE, format!("{e:#}")))?;
    // Before the recorder: a step while storeguard was down is corrected before any
    // writer reads where its camera stopped.
    let time_store = store.clone();
    let time_cfg = cfg.clone();
    let time = Arc::new(
        tokio::task::spawn_blocking(move || {
            crate::timekeep::TimeKeeper::start(time_store, &time_cfg)
        })
        .await??,
    );
    let rec_store = store.clone();
    let rec_cfg = cfg.clone();
    let recorder =
        Arc::new(tokio::task::spawn_blocking(move || Recorder::start(rec_store, &rec_cfg)).await??);
    let r = recorder.clone();
    let on_write_error: Arc<dyn Fn() + Send + Sync> = Arc::new(move || r.evict_soon());
    let cameras = Supervisor::start(
        recorder.clone(),
        &cfg,
        Box::new(move |cam, writer| match cam.ingest {
            Ingest::Retina => Box::new(RetinaCamera::new(cam, writer, on_write_error.clone())),
            Ingest::Gstreamer => Box::new(GstCamera::new(cam, writer, on_write_error.clone())),
        }),
    );

    let key_dir = cfg.storage.data_dir.join("keys");
    let key = DeviceKey::load_or_create(&key_dir)
        .map_err(|e| coded(exit::IOERR, storeguard_base::error::chain(&e)))?;
    tracing::info!(key_id = %key.key_id(), public_key = %key.public_key_b64(), "device signing key");
    let incidents = Arc::new(Incidents {
        store: store.clone(),
        recorder: recorder.clone(),
        key: Arc::new(key),
        watch: tokio::sync::broadcast::channel(256).0,
        clips_changed: tokio::sync::Notify::new(),
        outbox_changed: tokio::sync::Notify::new(),
    });
    let (inbound_tx, inbound_rx) = tokio::sync::mpsc::unbounded_channel();
    let inbound = cfg.remote.enabled.then_some(inbound_tx);
    let (uplink, uplink_refused) = start_uplink(&store, &cfg, inbound.clone())?;
    let (sig_tx, mut sig_rx) = tokio::sync::mpsc::unbounded_channel();
    let buttons = Buttons::start(&cfg.buttons, sig_tx.clone());

    let (shutdown, shutdown_rx) = shutdown::channel();
    let (detect_out, detect_rx) = tokio::sync::mpsc::unbounded_channel();
    let state = Arc::new(State {
        recorder,
        incidents,
        buttons: std::sync::Mutex::new(buttons),
        signal_tx: sig_tx,
        uplink: std::sync::Mutex::new(uplink),
        uplink_refused: std::sync::Mutex::new(uplink_refused),
        inbound,
        cameras,
        detection: std::sync::Mutex::new(None),
        detect_out,
        started: Instant::now(),
        started_utc: chrono::DateTime::from_timestamp_nanos(storeguard_base::now_ns()),
        config: RwLock::new(loaded),
        store,
        time,
        shutdown,
        reloading: tokio::sync::Mutex::new(()),
    });

    // Before the control socket answers: `cameras` then always sees detection's state.
    let st = state.clone();
    tokio::task::spawn_blocking(move || st.restart_detection(&st.config().config)).await?;
    let service: Arc<dyn control::Service> = Arc::new(control::routes::Routes {
        state: state.clone(),
    });
    let control_task = tokio::spawn(listener.serve(service, access, shutdown_rx.clone()));
    let detect_task = tokio::spawn(detection::run(state.clone(), detect_rx));
    // Button signals are handled one at a time, in order: each is a durable commit.
    let st = state.clone();
    let signal_task = tokio::spawn(async move {
        while let Some(sig) = sig_rx.recv().await {
            let cfg = st.config().config;
            let Some(trigger) = button_trigger(&sig, &cfg) else {
                let _ = st.incidents.watch.send(
                    json!({ "at": utc_ms(sig.utc_ns), "button": sig.button, "kind": "released" }),
                );
                continue;
            };
            let press = (trigger.kind == "isb_press")
                .then(|| (trigger.cameras.clone(), trigger.window, trigger.at_ns));
            // A press the database cannot take yet is kept and tried again, never dropped
            // (and `button press` is told it was not recorded).
            let mut told = false;
            let mut stop = st.shutdown.subscribe();
            loop {
                match st.incidents.trigger(trigger.clone(), &cfg.site).await {
                    // The today image follows the committed alert; it never holds it up.
                    Ok(uid) => {
                        if let Some((cameras, Some((from, _)), at)) = press {
                            tokio::spawn(detection::today_images(
                                st.clone(),
                                uid,
                                cameras,
                                from,
                                at,
                            ));
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::error!(button = %sig.button, "recording button event failed; trying again: {e:#}");
                        if !told {
                            told = true;
                            let _ = st.incidents.watch.send(json!({
                                "at": utc_ms(sig.utc_ns), "button": sig.button,
                                "kind": "not_recorded", "error": format!("{e:#}"),
                            }));
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(PRESS_RETRY) => {}
                            _ = stop.stopped() => return,
                        }
                    }
                }
            }
        }
    });
    // Anything committed to the outbox wakes the sender at once.
    let st = state.clone();
    let wake_task = tokio::spawn(async move {
        loop {
            st.incidents.outbox_changed.notified().await;
            if let Some(u) = st.uplink().as_ref() {
                u.notify();
            }
        }
    });
    let remote_task = tokio::spawn(crate::remote::run(
        state.clone(),
        inbound_rx,
        recovered,
        shutdown_rx.clone(),
    ));
    let st = state.clone();
    let clip_task = tokio::spawn(
        state
            .incidents
            .clone()
            .run_clip_jobs(move || st.config().config, shutdown_rx.clone()),
    );

    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&state.status_line()),
    ]);
    tracing::info!(socket = %cfg.control.socket.display(), "ready");
    // Only after READY: a ping before it would tell systemd a service that has not
    // started is alive.
    let watchdog_task = tokio::spawn(watchdog::run(
        watchdog::DaemonChecks(state.clone()),
        watchdog::Systemd,
        sd_notify::watchdog_enabled(),
        shutdown_rx.clone(),
    ));

    wait_for_stop(&state, signals).await;

    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    tracing::info!("shutting down");
    state.shutdown.fire();
    let st = state.clone();
    let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
        let _ = control_task.await;
        let _ = watchdog_task.await;
        let _ = clip_task.await;
        let _ = remote_task.await;
        signal_task.abort();
        wake_task.abort();
        detect_task.abort();
        // Cameras first, so the recorder's final sync sees every last frame.
        let _ = tokio::task::spawn_blocking(move || {
            st.recorder.set_keyframe_tap(None);
            if let Some(mut d) = st.detection().take() {
                d.stop();
            }
            st.buttons().shutdown();
            st.cameras.shutdown();
            st.recorder.shutdown();
            st.time.shutdown();
        })
        .await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("components did not finish within {DRAIN_DEADLINE:?}; exiting anyway");
    }
    tracing::info!(uptime_s = state.started.elapsed().as_secs(), "stopped");
    Ok(())
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        let s = |k| signal(k).context("installing signal handlers");
        Ok(Signals {
            term: s(SignalKind::terminate())?,
            int: s(SignalKind::interrupt())?,
            hup: s(SignalKind::hangup())?,
        })
    }
}

/// Runs until SIGTERM/SIGINT; handles SIGHUP reloads meanwhile.
async fn wait_for_stop(state: &Arc<State>, signals: Signals) {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if let Err(e) = cmd::config::reload(state).await {
                    tracing::error!("reload refused, keeping the running config: {}", e.message());
                }
            }
        }
    }
    // A second signal means "now": the operator has given up waiting for the drain.
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(EXIT_INTERRUPTED);
    });
}

/// The uplink, or why it is not running. Without a trusted control-centre key the box goes
/// on recording and alarming locally (everything waits in the outbox); other uplink
/// problems are config errors.
fn start_uplink(
    store: &Store,
    cfg: &Config,
    inbound: Option<crate::uplink::InboundSink>,
) -> Result<(Option<UplinkHandle>, Option<String>)> {
    if cfg.uplink.is_none() {
        tracing::warn!("no [uplink] in the config: alerts and evidence stay on this box");
        return Ok((None, None));
    }
    match Uplink::start_with(store.clone(), cfg, inbound) {
        Ok(u) => Ok((Some(u), None)),
        Err(e @ UplinkError::NoTrustedKeys) => {
            let why = e.to_string();
            tracing::error!("uplink not started: {why}");
            Ok((None, Some(why)))
        }
        Err(e) => Err(coded(
            uplink_exit_code(&e),
            format!("uplink: {}", storeguard_base::error::chain(&e)),
        )),
    }
}

/// A thread that cannot start is the machine's problem, not the config's: 78 would tell
/// systemd never to restart.
fn uplink_exit_code(e: &UplinkError) -> u8 {
    match e {
        UplinkError::Thread(_) => exit::OSERR,
        _ => exit::CONFIG,
    }
}

/// What a button signal means for evidence: presses secure the mapped cameras' pre- and
/// post-roll, faults are alerts without clips, releases are nothing (None).
pub fn button_trigger(sig: &Signal, cfg: &Config) -> Option<Trigger> {
    use crate::button::ButtonEvent as E;
    let (kind, alert) = match sig.event {
        E::Pressed { .. } => ("isb_press", true),
        E::StuckFault { .. } => ("stuck_fault", true),
        E::WiringFault { .. } => ("wiring_fault", true),
        E::StuckCleared { .. } => ("stuck_cleared", false),
        E::WiringRestored { .. } => ("wiring_restored", false),
        E::Released { .. } => return None,
    };
    let b: &cfgmod::Button = cfg.button(&sig.button)?;
    let window = (kind == "isb_press").then(|| {
        (
            sig.utc_ns.saturating_sub(b.pre_roll.0.as_nanos() as i64),
            sig.utc_ns.saturating_add(b.post_roll.0.as_nanos() as i64),
        )
    });
    Some(Trigger {
        kind: kind.into(),
        source: Source::Button(sig.button.clone()),
        at_ns: sig.utc_ns,
        test: sig.test,
        alert,
        cameras: b.cameras.clone(),
        window,
        detail: json!({ "wiring": b.wiring, "cameras": b.cameras }),
        shots: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_cannot_start_is_not_a_config_error() {
        let e = UplinkError::Thread(std::io::Error::from_raw_os_error(libc::EAGAIN));
        assert_eq!(uplink_exit_code(&e), exit::OSERR);
        assert_eq!(
            uplink_exit_code(&UplinkError::BrokerUrl("x".into())),
            exit::CONFIG
        );
    }
}
