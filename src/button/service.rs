//! Runs every configured button on its own thread and forwards what its state machine
//! reports. A button whose GPIO line can't be opened fails alone, with a clear error;
//! the others keep working. Test presses are injected as edges into the same source, so
//! they travel the same debounce → event → alert → clip path as a real press.

use super::gpio::GpioCdevSource;
use super::sim::{SimEdge, SimulatedSource};
use super::{ButtonEvent, ButtonInput, Edge, EdgeSource, GpioError, Thresholds, Wiring};
use crate::config::Button;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One thing a button did, with the UTC time of the kernel edge behind it.
#[derive(Debug, Clone)]
pub struct Signal {
    pub button: String,
    pub event: ButtonEvent,
    pub utc_ns: i64,
    /// Caused by `storeguard button press --test`.
    pub test: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ButtonStatus {
    pub name: String,
    pub source: String,
    pub state: String,
    pub error: Option<String>,
}

struct Runner {
    inject: Sender<SimEdge>,
    /// Monotonic ns until which a press counts as a test press.
    test_until: Arc<AtomicU64>,
    wiring: Wiring,
    status: Arc<Mutex<ButtonStatus>>,
}

pub struct Buttons {
    runners: HashMap<String, Runner>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// A real line with a test-injection side channel; whichever has an edge first wins.
struct Merged<S> {
    real: S,
    sim: SimulatedSource,
}

impl<S: EdgeSource> EdgeSource for Merged<S> {
    fn next_edge(&mut self, timeout: Duration) -> Result<Option<Edge>, GpioError> {
        if let Some(e) = self.sim.next_edge(Duration::ZERO)? {
            return Ok(Some(e));
        }
        let slice = timeout.min(Duration::from_millis(50));
        match self.real.next_edge(slice)? {
            Some(e) => Ok(Some(e)),
            None => self.sim.next_edge(Duration::ZERO),
        }
    }
    fn kernel_debounce(&self) -> bool {
        self.real.kernel_debounce()
    }
    fn now_ns(&self) -> u64 {
        self.real.now_ns()
    }
}

impl Buttons {
    pub fn start(buttons: &[Button], tx: tokio::sync::mpsc::UnboundedSender<Signal>) -> Buttons {
        let stop = Arc::new(AtomicBool::new(false));
        let mut runners = HashMap::new();
        let mut threads = Vec::new();
        for b in buttons {
            let (inject, sim) = SimulatedSource::channel();
            let test_until = Arc::new(AtomicU64::new(0));
            let status = Arc::new(Mutex::new(ButtonStatus {
                name: b.name.clone(),
                source: if b.is_simulated() {
                    "simulated".into()
                } else {
                    format!("{} line {}", b.chip, b.line)
                },
                state: "idle".into(),
                error: None,
            }));
            let thresholds = Thresholds {
                stuck_after: b.stuck_after.0,
                ..Thresholds::default()
            };
            let settings = b.line_settings();
            let ctx = Ctx {
                name: b.name.clone(),
                tx: tx.clone(),
                stop: stop.clone(),
                test_until: test_until.clone(),
                status: status.clone(),
            };
            let t = if b.is_simulated() {
                let input =
                    ButtonInput::new(sim.with_kernel_debounce(false), &settings, thresholds);
                spawn(ctx, input)
            } else {
                match GpioCdevSource::open(&b.name, &settings) {
                    Ok(real) => spawn(
                        ctx,
                        ButtonInput::new(Merged { real, sim }, &settings, thresholds),
                    ),
                    Err(e) => {
                        tracing::error!("{e}");
                        let mut st = status.lock().unwrap_or_else(|p| p.into_inner());
                        st.state = "failed".into();
                        st.error = Some(e.to_string());
                        None
                    }
                }
            };
            threads.extend(t);
            runners.insert(
                b.name.clone(),
                Runner {
                    inject,
                    test_until,
                    wiring: b.wiring,
                    status,
                },
            );
        }
        Buttons {
            runners,
            stop,
            threads,
        }
    }

    /// Injects a press (press and release after `hold`) as edges on the button's source.
    pub fn press(&self, name: &str, hold: Duration, test: bool) -> Result<(), String> {
        let r = self.runners.get(name).ok_or_else(|| {
            let mut known: Vec<&str> = self.runners.keys().map(|s| s.as_str()).collect();
            known.sort();
            format!(
                "no button named {name:?} (configured: {})",
                known.join(", ")
            )
        })?;
        if r.status
            .lock()
            .map(|s| s.state == "failed")
            .unwrap_or(false)
        {
            return Err(format!(
                "button {name:?} is not running: {}",
                r.status
                    .lock()
                    .map(|s| s.error.clone().unwrap_or_default())
                    .unwrap_or_default()
            ));
        }
        if test {
            let until =
                super::monotonic_now_ns() + (hold + Duration::from_secs(2)).as_nanos() as u64;
            r.test_until.store(until, Ordering::Relaxed);
        }
        for e in SimulatedSource::press_edges(r.wiring, hold) {
            r.inject
                .send(e)
                .map_err(|_| format!("button {name:?} has stopped"))?;
        }
        Ok(())
    }

    pub fn status(&self) -> Vec<ButtonStatus> {
        let mut v: Vec<ButtonStatus> = self
            .runners
            .values()
            .map(|r| r.status.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Buttons {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Ctx {
    name: String,
    tx: tokio::sync::mpsc::UnboundedSender<Signal>,
    stop: Arc<AtomicBool>,
    test_until: Arc<AtomicU64>,
    status: Arc<Mutex<ButtonStatus>>,
}

fn spawn<S: EdgeSource + 'static>(
    ctx: Ctx,
    mut input: ButtonInput<S>,
) -> Option<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("sg-btn-{}", ctx.name))
        .spawn(move || {
            while !ctx.stop.load(Ordering::Relaxed) {
                match input.poll(Duration::from_millis(100)) {
                    Ok(events) => {
                        for event in events {
                            let utc = super::monotonic_to_utc_now(event.ts_ns());
                            let test = matches!(event, ButtonEvent::Pressed { .. })
                                && event.ts_ns() <= ctx.test_until.load(Ordering::Relaxed);
                            let state = match event {
                                ButtonEvent::Pressed { .. } => "pressed",
                                ButtonEvent::Released { .. }
                                | ButtonEvent::StuckCleared { .. }
                                | ButtonEvent::WiringRestored { .. } => "idle",
                                ButtonEvent::StuckFault { .. } => "stuck",
                                ButtonEvent::WiringFault { .. } => "wiring-fault",
                            };
                            ctx.status.lock().unwrap_or_else(|p| p.into_inner()).state =
                                state.into();
                            let utc_ns = utc.timestamp_nanos_opt().unwrap_or(0);
                            if ctx
                                .tx
                                .send(Signal {
                                    button: ctx.name.clone(),
                                    event,
                                    utc_ns,
                                    test,
                                })
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(button = %ctx.name, "reading button failed: {e}");
                        let mut st = ctx.status.lock().unwrap_or_else(|p| p.into_inner());
                        st.state = "failed".into();
                        st.error = Some(e.to_string());
                        return;
                    }
                }
            }
        })
        .ok()
}
