//! Daemon lifecycle: start-up order, systemd notification, signals, reload and draining.
//!
//! Start-up: config (exit 78 on error) → data directory lock and database → control
//! socket → components → READY. Shutdown: stop accepting, drain components with a
//! deadline, close the database, exit 0. A second SIGTERM/SIGINT exits at once.

mod api;

use crate::button::service::Buttons;
use crate::camera::{self, GstCamera, Supervisor};
use crate::config::{Config, Loaded};
use crate::control::{self, Access, BindError, Listener};
use crate::evidence::DeviceKey;
use crate::evidence::incident::Incidents;
use crate::exit::{self, coded};
use crate::recording::Recorder;
use crate::store::Store;
use crate::uplink::{Uplink, UplinkHandle};
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use sd_notify::NotifyState;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// How long shutdown may take before we stop waiting for components.
const DRAIN_DEADLINE: Duration = Duration::from_secs(4);
/// Exit code when a second signal cuts the drain short.
pub const EXIT_INTERRUPTED: i32 = 130;

pub struct State {
    pub recorder: Arc<Recorder>,
    pub incidents: Arc<Incidents>,
    pub buttons: std::sync::Mutex<Buttons>,
    pub signal_tx: tokio::sync::mpsc::UnboundedSender<crate::button::service::Signal>,
    /// None when the config has no [uplink] section (the box then only records locally).
    pub uplink: std::sync::Mutex<Option<UplinkHandle>>,
    pub cameras: Supervisor,
    pub started: Instant,
    pub started_utc: DateTime<Utc>,
    pub config: RwLock<Loaded>,
    pub store: Store,
    pub shutdown: watch::Sender<bool>,
}

impl State {
    pub fn config(&self) -> Loaded {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

pub fn run(config_path: &Path) -> Result<()> {
    let loaded = Config::load(config_path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sg-rt")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(loaded))
}

async fn run_async(loaded: Loaded) -> Result<()> {
    // Before anything else: systemd may send SIGHUP (reload) or SIGTERM as soon as it
    // sees READY, and an uninstalled handler means the default action, death.
    let signals = Signals::install()?;
    let cfg = loaded.config.clone();
    tracing::info!(version = crate::VERSION, config = %loaded.path.display(), config_version = %loaded.version,
        site = %cfg.site.site_id, device = %cfg.site.device_id, "storeguard starting");

    let data_dir = cfg.storage.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data_dir)).await??;
    store.meta_set("config_version", &loaded.version)?;

    let (listener, gid) = Listener::bind(&cfg.control.socket, cfg.control.group.as_deref())
        .await
        .map_err(|e| match e {
            BindError::NoSuchGroup(_) => coded(
                exit::CONFIG,
                format!("{}: control.group: {e}", loaded.path.display()),
            ),
            e => coded(exit::CANTCREAT, e.to_string()),
        })?;
    let access = Access {
        group: cfg.control.group.clone().zip(gid),
        allowed_uids: cfg.control.allowed_uids.clone(),
    };

    camera::init_gstreamer().map_err(|e| coded(exit::SOFTWARE, format!("{e:#}")))?;
    let rec_store = store.clone();
    let rec_cfg = cfg.clone();
    let recorder =
        Arc::new(tokio::task::spawn_blocking(move || Recorder::start(rec_store, &rec_cfg)).await??);
    let r = recorder.clone();
    let on_write_error: Arc<dyn Fn() + Send + Sync> = Arc::new(move || r.evict_soon());
    let cameras = Supervisor::start(
        recorder.clone(),
        &cfg,
        Box::new(move |cam, writer| Box::new(GstCamera::new(cam, writer, on_write_error.clone()))),
    );

    let key_dir = cfg.storage.data_dir.join("keys");
    let key = DeviceKey::load_or_create(&key_dir)
        .map_err(|e| coded(exit::IOERR, format!("device key: {e}")))?;
    tracing::info!(key_id = %key.key_id(), public_key = %key.public_key_b64(), "device signing key");
    let incidents = Arc::new(Incidents {
        store: store.clone(),
        recorder: recorder.clone(),
        key: Arc::new(key),
        watch: tokio::sync::broadcast::channel(256).0,
        clips_changed: tokio::sync::Notify::new(),
        outbox_changed: tokio::sync::Notify::new(),
        limits: Default::default(),
    });
    let uplink = start_uplink(&store, &cfg)?;
    let (sig_tx, mut sig_rx) = tokio::sync::mpsc::unbounded_channel();
    let buttons = Buttons::start(&cfg.buttons, sig_tx.clone());

    let (shutdown, shutdown_rx) = watch::channel(false);
    let state = Arc::new(State {
        recorder,
        incidents,
        buttons: std::sync::Mutex::new(buttons),
        signal_tx: sig_tx,
        uplink: std::sync::Mutex::new(uplink),
        cameras,
        started: Instant::now(),
        started_utc: Utc::now(),
        config: RwLock::new(loaded),
        store,
        shutdown,
    });

    let service: Arc<dyn control::Service> = Arc::new(api::Api {
        state: state.clone(),
    });
    let control_task = tokio::spawn(listener.serve(service, access, shutdown_rx.clone()));
    let watchdog_task = tokio::spawn(watchdog(state.clone(), shutdown_rx.clone()));
    // Button signals are handled one at a time, in order: each is a durable commit.
    let st = state.clone();
    let signal_task = tokio::spawn(async move {
        while let Some(sig) = sig_rx.recv().await {
            let cfg = st.config().config;
            if let Err(e) = st.incidents.on_signal(sig, &cfg).await {
                tracing::error!("recording button event failed: {e:#}");
            }
        }
    });
    // Anything committed to the outbox wakes the sender at once.
    let st = state.clone();
    let wake_task = tokio::spawn(async move {
        loop {
            st.incidents.outbox_changed.notified().await;
            if let Some(u) = st.uplink.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                u.notify();
            }
        }
    });
    let st = state.clone();
    let clip_task = tokio::spawn(
        state
            .incidents
            .clone()
            .run_clip_jobs(move || st.config().config, shutdown_rx.clone()),
    );

    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&status_line(&state)),
    ]);
    tracing::info!(socket = %cfg.control.socket.display(), "ready");

    wait_for_stop(&state, signals).await;

    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    tracing::info!("shutting down");
    let _ = state.shutdown.send(true);
    let st = state.clone();
    let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
        let _ = control_task.await;
        let _ = watchdog_task.await;
        let _ = clip_task.await;
        signal_task.abort();
        wake_task.abort();
        // Cameras first, so the recorder's final sync sees every last frame.
        let _ = tokio::task::spawn_blocking(move || {
            st.buttons
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .shutdown();
            st.cameras.shutdown();
            st.recorder.shutdown();
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
                if let Err(e) = reload(state).await {
                    tracing::error!("reload refused, keeping the running config: {e:#}");
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

/// Re-reads the config file; on any problem the running config stays as it is.
pub async fn reload(state: &Arc<State>) -> Result<ReloadOutcome> {
    let path = state.config().path.clone();
    notify(&[
        NotifyState::Reloading,
        NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Status("")),
    ]);
    let result = reload_inner(state, &path).await;
    notify(&[NotifyState::Ready, NotifyState::Status(&status_line(state))]);
    result
}

#[derive(Debug, serde::Serialize)]
pub struct ReloadOutcome {
    pub changed: bool,
    pub version: String,
    pub previous: String,
}

async fn reload_inner(state: &Arc<State>, path: &Path) -> Result<ReloadOutcome> {
    let p = path.to_path_buf();
    let new = tokio::task::spawn_blocking(move || Config::load(&p)).await??;
    let old = state.config();
    let fixed = |a: &Config, b: &Config| {
        a.storage.data_dir == b.storage.data_dir
            && a.control.socket == b.control.socket
            && a.control.group == b.control.group
            // The socket's access check is built once, at start-up.
            && a.control.allowed_uids == b.control.allowed_uids
    };
    if !fixed(&old.config, &new.config) {
        return Err(coded(
            exit::CONFIG,
            "storage.data_dir and control.* cannot change while running; restart the service to apply them",
        ));
    }
    let outcome = ReloadOutcome {
        changed: old.version != new.version,
        version: new.version.clone(),
        previous: old.version.clone(),
    };
    state.store.meta_set("config_version", &new.version)?;
    state.recorder.reconfigure(&new.config);
    state.cameras.apply(&new.config);
    if serde_json::to_value(&old.config.buttons).ok()
        != serde_json::to_value(&new.config.buttons).ok()
    {
        // Buttons are few and cheap to reopen; restart them all on any change.
        let tx = state.signal_tx.clone();
        let mut b = state.buttons.lock().unwrap_or_else(|p| p.into_inner());
        b.shutdown();
        *b = Buttons::start(&new.config.buttons, tx);
        tracing::info!("buttons restarted with the new config");
    }
    *state.config.write().unwrap_or_else(|p| p.into_inner()) = new;
    tracing::info!(from = %outcome.previous, to = %outcome.version, "config reloaded");
    Ok(outcome)
}

fn start_uplink(store: &Store, cfg: &Config) -> Result<Option<UplinkHandle>> {
    if cfg.uplink.is_none() {
        tracing::warn!("no [uplink] in the config: alerts and evidence stay on this box");
        return Ok(None);
    }
    Uplink::start(store.clone(), cfg)
        .map(Some)
        .map_err(|e| coded(exit::CONFIG, format!("uplink: {e}")))
}

fn status_line(state: &State) -> String {
    let c = state.config();
    format!(
        "site {} device {}: {} cameras, config {}",
        c.config.site.site_id,
        c.config.site.device_id,
        c.config.cameras.len(),
        c.version
    )
}

/// Pings the systemd watchdog only while our own checks pass, so a wedged daemon gets
/// restarted instead of being kept alive by a timer that still runs.
async fn watchdog(state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut tick = tokio::time::interval(period / 3);
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => return,
            _ = tick.tick() => {}
        }
        match health_check(&state).await {
            Ok(()) => notify(&[NotifyState::Watchdog]),
            Err(e) => tracing::warn!("health check failed, withholding watchdog ping: {e:#}"),
        }
    }
}

async fn health_check(state: &Arc<State>) -> Result<()> {
    anyhow::ensure!(
        state.cameras.is_alive(),
        "camera supervisor thread has stopped"
    );
    let store = state.store.clone();
    let q = tokio::task::spawn_blocking(move || store.meta_get("config_version"));
    tokio::time::timeout(Duration::from_secs(5), q)
        .await
        .context("database did not answer within 5 s")???;
    Ok(())
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Resolves once shutdown has been requested (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
