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
    test: Arc<TestWindow>,
    wiring: Wiring,
    status: Arc<Mutex<ButtonStatus>>,
}

pub struct Buttons {
    runners: HashMap<String, Runner>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Monotonic span [from, until] covering the latest injected edges. An event stamped
/// inside it was caused by the injection; a real press before or after it is not a test.
#[derive(Default)]
struct TestWindow {
    from: AtomicU64,
    until: AtomicU64,
}

impl TestWindow {
    fn contains(&self, ts_ns: u64) -> bool {
        self.from.load(Ordering::Relaxed) <= ts_ns && ts_ns <= self.until.load(Ordering::Relaxed)
    }
}

/// Most edges one injected script may carry (a bounce storm is tens).
pub const MAX_INJECTED_EDGES: usize = 1000;
/// The longest a test press may hold a button, or an injected script may run: long
/// enough to provoke a stuck fault, short enough that nobody holds an alarm line for good.
pub const MAX_INJECTED_SPAN: Duration = Duration::from_secs(600);

/// Why a press or edge injection was refused.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("no button named {name:?} (configured: {known})")]
    NoSuchButton { name: String, known: String },
    #[error("button {name:?} is not running: {reason}")]
    NotRunning { name: String, reason: String },
    #[error("{count} edges for button {name:?}; at most {MAX_INJECTED_EDGES} per request")]
    TooManyEdges { name: String, count: usize },
    #[error(
        "{what} of {span:?} for button {name:?} is longer than the {MAX_INJECTED_SPAN:?} allowed"
    )]
    TooLong {
        name: String,
        what: &'static str,
        span: Duration,
    },
    #[error("button {name:?} has stopped")]
    Stopped { name: String },
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
            let test = Arc::new(TestWindow::default());
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
                test: test.clone(),
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
                        st.error = Some(storeguard_base::error::chain(&e));
                        None
                    }
                }
            };
            threads.extend(t);
            runners.insert(
                b.name.clone(),
                Runner {
                    inject,
                    test,
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
    pub fn press(&self, name: &str, hold: Duration, test: bool) -> Result<(), InjectError> {
        if hold > MAX_INJECTED_SPAN {
            return Err(InjectError::TooLong {
                name: name.into(),
                what: "a hold",
                span: hold,
            });
        }
        let wiring = self.runner(name)?.wiring;
        self.inject(name, SimulatedSource::press_edges(wiring, hold), test)
    }

    /// Injects raw edges (levels as on the wire: `active` = circuit closed), offsets from
    /// now, into the button's source, ahead of its debounce machine. With `test`, every
    /// event stamped within the script's span (plus 2 s) is marked as a test.
    pub fn inject(&self, name: &str, edges: Vec<SimEdge>, test: bool) -> Result<(), InjectError> {
        let r = self.runner(name)?;
        if edges.len() > MAX_INJECTED_EDGES {
            return Err(InjectError::TooManyEdges {
                name: name.into(),
                count: edges.len(),
            });
        }
        let span = edges.iter().map(|e| e.at).max().unwrap_or_default();
        if span > MAX_INJECTED_SPAN {
            return Err(InjectError::TooLong {
                name: name.into(),
                what: "a script",
                span,
            });
        }
        if test {
            let now = super::monotonic_now_ns();
            // Overlapping test injections extend one window: their edges merge into one
            // press, which started under the first of them.
            if now > r.test.until.load(Ordering::Relaxed) {
                r.test.from.store(now, Ordering::Relaxed);
            }
            let until = now + (span + Duration::from_secs(2)).as_nanos() as u64;
            r.test.until.fetch_max(until, Ordering::Relaxed);
        }
        for e in edges {
            r.inject
                .send(e)
                .map_err(|_| InjectError::Stopped { name: name.into() })?;
        }
        Ok(())
    }

    fn runner(&self, name: &str) -> Result<&Runner, InjectError> {
        let r = self.runners.get(name).ok_or_else(|| {
            let mut known: Vec<&str> = self.runners.keys().map(|s| s.as_str()).collect();
            known.sort();
            InjectError::NoSuchButton {
                name: name.into(),
                known: known.join(", "),
            }
        })?;
        let st = r.status.lock().unwrap_or_else(|p| p.into_inner());
        if st.state == "failed" {
            return Err(InjectError::NotRunning {
                name: name.into(),
                reason: st.error.clone().unwrap_or_default(),
            });
        }
        Ok(r)
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
    test: Arc<TestWindow>,
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
                            // Faults from an injected hold are tests too: a technician's
                            // long test press must not raise a real fault upstream.
                            let test = ctx.test.contains(event.ts_ns());
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
                        st.error = Some(storeguard_base::error::chain(&e));
                        return;
                    }
                }
            }
        })
        .ok()
}
