//! Store-and-forward uplink to the control centre over MQTT (docs/mqtt.md).
//!
//! The outbox in the store is the queue: everything the box accepted is a row there
//! before anyone is told so, and a row leaves only after the broker's PUBACK. The uplink
//! runs on its own thread (current-thread runtime), so SQLite calls never block the
//! daemon's runtime, and a slow or dead broker never blocks the box.
//!
//! Delivery is at-least-once on the wire; every message carries `msg_id`
//! (`{device}:{outbox id}`, ids never reused) so the receiver makes it exactly-once.
//! Clips go as chunks after their manifest; the receiver verifies and acknowledges on
//! `evidence/{clip}/ack`, and only then is the clip's retention lock released.

mod sender;
pub use storeguard_proto::{session, topics};
mod upload;

use crate::config::Config;
use crate::config::uplink::{BrokerUrl, parse_broker_url};
use crate::store::Store;
use crate::store::outbox::Limits;
use sender::{Cmd, Link};
use serde_json::json;
use session::{ConnectOpts, TlsFiles};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use storeguard_proto::trust::TrustedKeys;
use tokio::sync::{Notify, mpsc};

pub use session::TlsSetupError;
pub use upload::CHUNK_WINDOW;

/// Where the uplink hands what the remote-control layer acts on (`config/desired`,
/// `cmd/{name}`), as received; the uplink itself only forwards them.
pub type InboundSink = mpsc::UnboundedSender<Inbound>;

#[derive(Debug)]
pub struct Inbound {
    pub kind: InboundKind,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundKind {
    Desired,
    Command(String),
}

/// The store's meta key holding the latest `config/reported` payload; the uplink publishes
/// it (retained) on every connect.
pub const REPORTED_META: &str = "config_reported";

/// Unacknowledged inbound messages the broker may have out to the box at once: a flood of
/// retained messages arrives a few at a time, each handled before the next.
const INBOUND_RECEIVE_MAX: u16 = 16;

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("no [uplink] section in the config")]
    NotConfigured,
    #[error("uplink.broker: {0}")]
    BrokerUrl(String),
    #[error("uplink.tls")]
    Tls(#[from] TlsSetupError),
    /// No silent fallback to unsigned receipts: without a trusted key a forged ack could
    /// release evidence, so the uplink does not start at all.
    #[error(
        "trust.control_centre_keys is empty: the uplink needs at least one control-centre \
         public key to check clip receipts against; add it under [trust] in the config \
         (recording and alarms go on, and the outbox keeps everything until then)"
    )]
    NoTrustedKeys,
    #[error("starting the uplink thread")]
    Thread(#[source] std::io::Error),
}

/// Derived once from the config.
pub(crate) struct Settings {
    pub site: String,
    pub device: String,
    /// `storeguard/v1/{site}/{device}/`
    pub prefix: String,
    pub broker: BrokerUrl,
    pub client_id: String,
    pub data_dir: PathBuf,
    pub window: usize,
    pub chunk_size: u64,
    pub max_message: u64,
    pub rate_limit: Option<u64>,
    pub limits: Limits,
    pub ack_timeout: Duration,
    pub trusted: TrustedKeys,
    pub max_inbound: u64,
    pub inbound: Option<InboundSink>,
}

#[derive(Debug, Clone)]
pub(crate) struct UploadStatus {
    pub clip: String,
    pub total: u64,
    pub acked: u64,
    pub next_send: u64,
    /// Where sending (re)started after a restart or a lost connection.
    pub resumed_from: Vec<u64>,
}

/// Live state shared with `status()`.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub connected: bool,
    pub connected_since: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    pub connects: u64,
    pub in_flight: usize,
    pub published: u64,
    pub delivered: u64,
    pub rejected: u64,
    pub last_rejected: Option<String>,
    pub chunks_published: u64,
    pub chunk_bytes_published: u64,
    pub clips_verified: u64,
    /// Inbound messages ignored (bad topic, forged or mismatched receipts, ...).
    pub inbound_rejected: u64,
    pub inbound_last_rejected: Option<String>,
    pub receipts_rejected: u64,
    pub upload: Option<UploadStatus>,
    /// Enqueue-to-PUBACK latencies of the latest outbox messages, in µs.
    pub latencies_us: VecDeque<u64>,
    pub stopped: bool,
}

/// The outbox limits `[uplink]` sets (its defaults without one), for every producer.
pub fn outbox_limits(cfg: &Config) -> Limits {
    let fallback = crate::config::uplink::Uplink::new("mqtt://localhost");
    let u = cfg.uplink.as_ref().unwrap_or(&fallback);
    Limits {
        max_messages: u.max_messages,
        max_bytes: u.max_bytes.0,
    }
}

/// Entry point; see [`Uplink::start`].
pub struct Uplink;

impl Uplink {
    /// Starts the uplink thread for `cfg.uplink`, without remote config or commands.
    pub fn start(store: Store, cfg: &Config) -> Result<UplinkHandle, UplinkError> {
        Self::start_with(store, cfg, None)
    }

    /// Starts the uplink thread for `cfg.uplink`; with `inbound`, it also subscribes to
    /// `config/desired` and `cmd/+` and hands those messages over. Fails only on
    /// configuration problems (missing section, unreadable TLS files, no trusted key); an
    /// unreachable broker is retried forever.
    pub fn start_with(
        store: Store,
        cfg: &Config,
        inbound: Option<InboundSink>,
    ) -> Result<UplinkHandle, UplinkError> {
        let u = cfg.uplink.as_ref().ok_or(UplinkError::NotConfigured)?;
        let broker = parse_broker_url(&u.broker).map_err(UplinkError::BrokerUrl)?;
        let trusted = cfg.trust.keys();
        if trusted.is_empty() {
            return Err(UplinkError::NoTrustedKeys);
        }
        let (site, device) = (cfg.site.site_id.clone(), cfg.site.device_id.clone());
        let prefix = topics::prefix(&site, &device);
        let window = u.window.max(1) as usize;
        let max_message = u.max_message_size.0;
        let client_id = u.client_id_for(&device);
        // Room for rumqttc's own bookkeeping beyond our window: status, ack clears.
        let inflight = (window + 256).min(u16::MAX as usize) as u16;
        let opts = ConnectOpts {
            broker: broker.clone(),
            client_id: client_id.clone(),
            credentials: u.username.clone().map(|user| {
                (
                    user,
                    u.password
                        .as_ref()
                        .map(|p| p.expose().to_string())
                        .unwrap_or_default(),
                )
            }),
            tls: u
                .tls
                .as_ref()
                .map(|t| TlsFiles {
                    ca: t.ca.clone(),
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                })
                .unwrap_or_default(),
            keepalive: u.keepalive.0,
            persistent: false,
            // What the box takes in is small (receipts; later config and commands): the
            // broker drops anything larger instead of cutting the link with it.
            max_packet: u.max_inbound_size.0.min(u32::MAX as u64) as u32,
            receive_max: INBOUND_RECEIVE_MAX,
            inflight,
            will: Some((
                format!("{prefix}{}", topics::STATUS),
                topics::Status::offline_will(&site, &device),
            )),
        };
        let (client, eventloop) = session::client(&opts)?;
        let settings = Arc::new(Settings {
            site,
            device,
            prefix,
            broker: broker.clone(),
            client_id: client_id.clone(),
            data_dir: store.data_dir().to_path_buf(),
            window,
            chunk_size: u.chunk_size.0,
            max_message,
            rate_limit: u.upload_rate_limit.map(|b| b.0),
            limits: outbox_limits(cfg),
            ack_timeout: u.ack_timeout.0,
            trusted,
            max_inbound: u.max_inbound_size.0,
            inbound,
        });
        let shared = Arc::new(Mutex::new(Shared::default()));
        let wake = Arc::new(Notify::new());
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let max_backoff = u.max_reconnect_backoff.0;

        let (th_shared, th_wake, th_store, th_settings) = (
            shared.clone(),
            wake.clone(),
            store.clone(),
            settings.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("sg-uplink".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("uplink: cannot start its runtime: {e}");
                        return;
                    }
                };
                let link_shared = th_shared.clone();
                rt.block_on(async move {
                    // Unbounded: the pump yields at network pace and the sender drains in batches.
                    let (tx, rx) = mpsc::unbounded_channel();
                    let pump = tokio::spawn(session::pump(eventloop, tx, max_backoff));
                    Link::new(th_settings, th_store, client, link_shared)
                        .run(rx, cmd_rx, th_wake)
                        .await;
                    pump.abort();
                });
                th_shared.lock().unwrap_or_else(|p| p.into_inner()).stopped = true;
            })
            .map_err(UplinkError::Thread)?;
        tracing::info!(broker = %broker, client_id = %client_id, window, "uplink started");
        Ok(UplinkHandle {
            inner: Arc::new(HandleInner {
                cmd: cmd_tx,
                wake,
                shared,
                store,
                settings,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }
}

/// Handle to the running uplink. Cheap to clone; the uplink stops (without the explicit
/// `offline`) when the last clone is dropped, so call [`UplinkHandle::shutdown`] first.
#[derive(Clone)]
pub struct UplinkHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    cmd: mpsc::UnboundedSender<Cmd>,
    wake: Arc<Notify>,
    shared: Arc<Mutex<Shared>>,
    store: Store,
    settings: Arc<Settings>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl UplinkHandle {
    /// Wakes the sender after something was enqueued (otherwise it looks within 1 s).
    pub fn notify(&self) {
        self.inner.wake.notify_one();
    }

    /// Connection, last error, in-flight count, per-class outbox depth and counters,
    /// rejected messages, the current upload and enqueue-to-PUBACK latency.
    pub fn status(&self) -> serde_json::Value {
        let s = &self.inner.settings;
        let sh = self.inner.shared.lock().unwrap_or_else(|p| p.into_inner());
        let mut lat: Vec<u64> = sh.latencies_us.iter().copied().collect();
        lat.sort_unstable();
        let pct = |p: f64| -> Option<f64> {
            if lat.is_empty() {
                return None;
            }
            let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
            Some(lat[i] as f64 / 1000.0)
        };
        let mut v = json!({
            "broker": s.broker.to_string(),
            "client_id": s.client_id,
            "running": !sh.stopped,
            "connected": sh.connected,
            "connected_since": sh.connected_since.map(topics::utc_ms),
            "connects": sh.connects,
            "last_error": sh.last_error,
            "last_error_at": sh.last_error_at.map(topics::utc_ms),
            "in_flight": sh.in_flight,
            "window": s.window,
            "published": sh.published,
            "delivered": sh.delivered,
            "rejected": { "count": sh.rejected, "last": sh.last_rejected },
            "upload": sh.upload.as_ref().map(|u| json!({
                "clip": u.clip, "total": u.total, "acked_offset": u.acked,
                "sent_offset": u.next_send, "resumed_from": u.resumed_from,
            })),
            "chunks_published": sh.chunks_published,
            "chunk_bytes_published": sh.chunk_bytes_published,
            "clips_verified": sh.clips_verified,
            "inbound": {
                "rejected": sh.inbound_rejected,
                "receipts_rejected": sh.receipts_rejected,
                "last_rejected": sh.inbound_last_rejected,
                "max_packet": s.max_inbound,
            },
            "trusted_keys": s.trusted.ids().collect::<Vec<_>>(),
            "upload_rate_limit": s.rate_limit,
            "latency_ms": { "p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0), "samples": lat.len() },
        });
        drop(sh);
        match self.inner.store.outbox_stats() {
            Ok(stats) => v["outbox"] = json!(stats),
            Err(e) => v["outbox_error"] = json!(e.to_string()),
        }
        if let Ok((n, _)) = self.inner.store.outbox_rejected(0) {
            v["rejected"]["stored"] = json!(n);
        }
        v
    }

    /// Whether the MQTT session is up (cheap: no store query).
    pub fn is_connected(&self) -> bool {
        self.inner
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .connected
    }

    pub fn last_error(&self) -> Option<String> {
        self.inner
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error
            .clone()
    }

    /// Publishes a retained `offline`, disconnects cleanly and stops the thread. Blocks for
    /// about 1 s at most; call it from a blocking context (e.g. `spawn_blocking`).
    pub fn shutdown(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.inner.cmd.send(Cmd::Shutdown(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_millis(1500));
        }
        self.inner.join(Duration::from_millis(500));
    }
}

impl HandleInner {
    fn join(&self, wait: Duration) {
        let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let deadline = Instant::now() + wait;
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            tracing::warn!("uplink thread did not stop in time; leaving it");
        }
    }
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        let _ = self.cmd.send(Cmd::Abort);
        self.join(Duration::from_secs(2));
    }
}

/// For the fuzz entry points (`fuzzing.rs`): one inbound message through the gate the
/// session uses (`on_incoming`), on a link that is not connected, over a store of its own
/// that lives as long as the process. Returns what the gate forwarded to the remote layer.
pub(crate) fn fuzz_incoming(
    topic: &str,
    payload: &[u8],
    trusted: &TrustedKeys,
    site: &str,
    device: &str,
) -> Vec<Inbound> {
    type Fuzzed = (Link, mpsc::UnboundedReceiver<Inbound>);
    thread_local! {
        static LINK: std::cell::RefCell<Option<Fuzzed>> = const { std::cell::RefCell::new(None) };
    }
    LINK.with_borrow_mut(|slot| {
        let (link, rx) = slot.get_or_insert_with(|| {
            let dir = std::env::temp_dir().join(format!("sg-fuzz-uplink-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let store = Store::open(&dir).expect("open the fuzz store");
            let broker = parse_broker_url("mqtt://127.0.0.1:1883").expect("a broker url");
            let (tx, rx) = mpsc::unbounded_channel();
            let settings = Arc::new(Settings {
                site: site.to_string(),
                device: device.to_string(),
                prefix: topics::prefix(site, device),
                broker: broker.clone(),
                client_id: device.to_string(),
                data_dir: dir,
                window: 16,
                chunk_size: 64 << 10,
                max_message: 256 << 10,
                rate_limit: None,
                limits: Limits::default(),
                ack_timeout: Duration::from_secs(60),
                trusted: trusted.clone(),
                max_inbound: 64 << 10,
                inbound: Some(tx),
            });
            let opts = ConnectOpts {
                broker,
                client_id: device.to_string(),
                credentials: None,
                tls: TlsFiles::default(),
                keepalive: Duration::from_secs(30),
                persistent: false,
                max_packet: 64 << 10,
                receive_max: INBOUND_RECEIVE_MAX,
                inflight: 64,
                will: None,
            };
            let (client, _never_polled) = session::client(&opts).expect("an MQTT client");
            let shared = Arc::new(Mutex::new(Shared::default()));
            (Link::new(settings, store, client, shared), rx)
        });
        link.on_incoming(topic, payload);
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(m);
        }
        out
    })
}
