//! The time keeper: watches the box clock (the kernel's NTP state and steps), publishes
//! its epoch and quality to the recording path, records steps with the corrections
//! they apply, and raises health events. See docs/time.md.
//!
//! Runs on its own thread, polling every 100 ms: an `adjtimex` and two `clock_gettime`
//! calls. It starts before the recorder, so a step that happened while storeguard was
//! not running is corrected before any writer reads where its camera stopped.

use crate::config::Config;
use crate::store::Store;
use crate::store::clock::{NewStep, StepRow};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use storeguard_base::clock::{
    self, BoxClock, Clock, ClockSample, NtpState, STEP_THRESHOLD_NS, StepDetector, SystemClock,
};
use storeguard_base::utc_ms;

const POLL: Duration = Duration::from_millis(100);
/// How often the last clock reading is saved, so a restart can tell a step that
/// happened while storeguard was down.
const SAVE_EVERY_NS: u64 = 10_000_000_000;
const META_LAST: &str = "clock_last";

/// The box clock as `status`, `doctor` and the `status` topic show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClockStatus {
    pub synced: bool,
    /// The kernel's bound on the error while synchronised (ms); None: unbounded.
    pub error_bound_ms: Option<f64>,
    pub maxerror_ms: f64,
    pub esterror_ms: f64,
    /// Since when (UTC) the clock has been unsynchronised, as this daemon saw it.
    pub unsynchronised_since: Option<String>,
    pub last_step: Option<StepView>,
    /// `kernel`, or `test` when the daemon runs on the test clock (debug builds only).
    pub source: &'static str,
    pub epoch: i64,
    /// Why the kernel state could not be read, if it could not.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepView {
    pub at: String,
    pub before: String,
    pub after: String,
    pub size_ms: i64,
    pub cause: String,
    pub corrected: serde_json::Value,
}

impl From<&StepRow> for StepView {
    fn from(s: &StepRow) -> Self {
        StepView {
            at: utc_ms(s.at_ns),
            before: utc_ms(s.before_ns),
            after: utc_ms(s.after_ns),
            size_ms: s.size_ns / 1_000_000,
            cause: s.cause.clone(),
            corrected: s.corrected.clone(),
        }
    }
}

struct Shared {
    store: Store,
    clock: Box<dyn Clock>,
    test_clock: Option<TestClock>,
    status: Mutex<ClockStatus>,
    alert_after: Mutex<Duration>,
    stop: AtomicBool,
}

pub struct TimeKeeper {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What the loop keeps between polls.
struct Watch {
    detector: StepDetector,
    epoch: i64,
    base_ns: i64,
    boot_id: String,
    /// Last time (on the epoch's clock) the clock was synchronised, if ever in it.
    synced_until: Option<i64>,
    /// Monotonic ns when it became unsynchronised, and whether the alert went out.
    unsynced_since: Option<(u64, i64)>,
    alerted: bool,
    saved_mono: u64,
}

impl TimeKeeper {
    /// Reads the clock, finds the epoch (and a step while storeguard was down), and
    /// starts watching.
    pub fn start(store: Store, config: &Config) -> anyhow::Result<TimeKeeper> {
        let test_clock = TestClock::from_env();
        if let Some(t) = &test_clock {
            t.load();
            tracing::warn!(file = %t.path.display(), "running on the TEST CLOCK from STOREGUARD_TEST_CLOCK (debug build): wall clock and NTP state come from that file");
        }
        let shared = Arc::new(Shared {
            store,
            clock: Box::new(SystemClock),
            status: Mutex::new(ClockStatus {
                synced: false,
                error_bound_ms: None,
                maxerror_ms: 0.0,
                esterror_ms: 0.0,
                unsynchronised_since: None,
                last_step: None,
                source: if test_clock.is_some() {
                    "test"
                } else {
                    "kernel"
                },
                epoch: 0,
                error: None,
            }),
            test_clock,
            alert_after: Mutex::new(config.health.clock_unsynchronised_alert_after.0),
            stop: AtomicBool::new(false),
        });
        let mut w = begin(&shared)?;
        poll(&shared, &mut w);
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sg-clock".into())
            .spawn(move || {
                while !s.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(POLL);
                    poll(&s, &mut w);
                }
                save_last(&s, &w);
            })?;
        Ok(TimeKeeper {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn status(&self) -> ClockStatus {
        lock(&self.shared.status).clone()
    }

    pub fn reconfigure(&self, config: &Config) {
        *lock(&self.shared.alert_after) = config.health.clock_unsynchronised_alert_after.0;
    }

    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn sample(s: &Shared) -> ClockSample {
    if let Some(t) = &s.test_clock {
        t.load();
    }
    match s.clock.sample() {
        Ok(x) => {
            lock(&s.status).error = None;
            x
        }
        Err(e) => {
            // No NTP state (a seccomp filter, an exotic kernel): believe nothing.
            let msg = format!("reading the kernel clock state (adjtimex): {e}");
            let mut st = lock(&s.status);
            if st.error.as_deref() != Some(&msg) {
                tracing::error!("{msg}");
            }
            st.error = Some(msg);
            ClockSample {
                realtime_ns: s.clock.now_ns(),
                monotonic_ns: s.clock.monotonic_ns(),
                ntp: NtpState::UNSYNCED,
            }
        }
    }
}

/// The last reading a previous run saved: `boot_id realtime_ns monotonic_ns synced`.
fn saved_last(store: &Store) -> Option<(String, ClockSample)> {
    let v = store.meta_get(META_LAST).ok()??;
    let mut it = v.split_whitespace();
    let boot = it.next()?.to_string();
    let realtime_ns = it.next()?.parse().ok()?;
    let monotonic_ns = it.next()?.parse().ok()?;
    let synced = it.next()? == "1";
    Some((
        boot,
        ClockSample {
            realtime_ns,
            monotonic_ns,
            ntp: NtpState {
                synced,
                ..NtpState::UNSYNCED
            },
        },
    ))
}

fn save_last(s: &Shared, w: &Watch) {
    if let Some(last) = w.detector.last() {
        let v = format!(
            "{} {} {} {}",
            w.boot_id,
            last.realtime_ns,
            last.monotonic_ns,
            u8::from(last.ntp.synced)
        );
        if let Err(e) = s.store.meta_set(META_LAST, &v) {
            tracing::warn!(error = %storeguard_base::error::chain(&e), "saving the last clock reading");
        }
    }
}

fn begin(s: &Shared) -> anyhow::Result<Watch> {
    // A correction a crash interrupted goes on first.
    let resumed = s.store.resume_corrections()?;
    if resumed > 0 {
        tracing::warn!(
            segments = resumed,
            "finished correcting recorded times after an interrupted clock step"
        );
    }
    let now = sample(s);
    let boot = boot_id();
    let last_epoch = s.store.last_epoch()?;
    let saved = saved_last(&s.store);
    let mut w = Watch {
        detector: StepDetector::default(),
        epoch: 0,
        base_ns: now.offset_ns(),
        boot_id: boot.clone(),
        synced_until: None,
        unsynced_since: None,
        alerted: false,
        saved_mono: now.monotonic_ns,
    };
    match (last_epoch, saved) {
        (Some(e), Some((sb, last))) if e.boot_id == boot && sb == boot => {
            w.epoch = e.id;
            w.base_ns = e.base_ns;
            w.synced_until = e.synced_until_ns;
            // Slewing while we were down moves the offset by at most 500 ppm.
            let slack = STEP_THRESHOLD_NS
                + (now.monotonic_ns.saturating_sub(last.monotonic_ns) / 2000) as i64;
            w.detector = StepDetector::new(slack).with_last(last);
            if let Some(step) = w.detector.observe(now) {
                handle_step(s, &mut w, step, "while storeguard was not running");
            }
            w.detector = StepDetector::default().with_last(now);
        }
        (Some(e), _) if e.boot_id == boot => {
            // Same boot, but no reading saved: trust the epoch as it is.
            w.epoch = e.id;
            w.base_ns = e.base_ns;
            w.synced_until = e.synced_until_ns;
            w.detector.observe(now);
        }
        _ => {
            w.epoch = s
                .store
                .open_epoch(&boot, now.offset_ns(), now.realtime_ns)?;
            w.detector.observe(now);
        }
    }
    if let Ok(steps) = s.store.clock_steps(1) {
        lock(&s.status).last_step = steps.first().map(StepView::from);
    }
    save_last(s, &w);
    Ok(w)
}

fn poll(s: &Shared, w: &mut Watch) {
    let now = sample(s);
    if let Some(step) = w.detector.observe(now) {
        handle_step(s, w, step, "");
    }
    let ntp = now.ntp;
    if ntp.synced {
        w.synced_until = Some(now.realtime_ns);
        if let Some((since, _)) = w.unsynced_since.take() {
            let secs = now.monotonic_ns.saturating_sub(since) / 1_000_000_000;
            tracing::info!(
                unsynchronised_s = secs,
                maxerror_ms = ntp.maxerror_us / 1000,
                "box clock synchronised"
            );
            if w.alerted {
                health(
                    s,
                    now.realtime_ns,
                    "clock_synchronised",
                    &format!(
                        "box clock synchronised again after {secs} s; error bound {} ms",
                        ntp.maxerror_us / 1000
                    ),
                );
            }
            w.alerted = false;
            let _ = s.store.epoch_synced_until(w.epoch, now.realtime_ns);
        }
    } else {
        if w.unsynced_since.is_none() {
            if let Some(l) = w.synced_until {
                // Remember the last synchronised moment: a later step corrects only
                // the drift that followed it.
                let _ = s.store.epoch_synced_until(w.epoch, l);
                tracing::warn!(
                    "box clock lost synchronisation (STA_UNSYNC): recording goes on, marked unsynchronised"
                );
            } else {
                tracing::warn!(
                    "box clock is not synchronised (STA_UNSYNC): recording goes on, marked unsynchronised; a later correction will fix the times"
                );
            }
            w.unsynced_since = Some((now.monotonic_ns, now.realtime_ns));
        }
        let (since, since_utc) = w.unsynced_since.expect("set above");
        let after = *lock(&s.alert_after);
        if !w.alerted && now.monotonic_ns.saturating_sub(since) > after.as_nanos() as u64 {
            w.alerted = true;
            let detail = format!(
                "box clock unsynchronised for more than {} s (since {}): evidence times cannot be vouched for until NTP is back",
                after.as_secs(),
                utc_ms(since_utc)
            );
            tracing::error!("{detail}");
            health(s, now.realtime_ns, "clock_unsynchronised", &detail);
        }
    }
    clock::publish(BoxClock {
        epoch: w.epoch,
        base_ns: w.base_ns,
        synced: ntp.synced,
        error_ns: ntp.error_bound_ns(),
        offset_ns: now.offset_ns(),
    });
    {
        let mut st = lock(&s.status);
        st.synced = ntp.synced;
        st.error_bound_ms = ntp.error_bound_ns().map(|e| e as f64 / 1e6);
        st.maxerror_ms = ntp.maxerror_us as f64 / 1000.0;
        st.esterror_ms = ntp.esterror_us as f64 / 1000.0;
        st.unsynchronised_since = w.unsynced_since.map(|u| utc_ms(u.1));
        st.epoch = w.epoch;
    }
    if now.monotonic_ns.saturating_sub(w.saved_mono) >= SAVE_EVERY_NS {
        w.saved_mono = now.monotonic_ns;
        save_last(s, w);
        if ntp.synced {
            let _ = s.store.epoch_synced_until(w.epoch, now.realtime_ns);
        }
    }
}

fn health(s: &Shared, at_ns: i64, kind: &str, detail: &str) {
    if let Err(e) = s.store.health_event(at_ns, kind, None, detail) {
        tracing::warn!(kind, error = %storeguard_base::error::chain(&e), "recording a health event failed");
    }
}

fn handle_step(s: &Shared, w: &mut Watch, step: clock::Step, when: &str) {
    let cause = if !when.is_empty() {
        format!("clock stepped {when}")
    } else if step.ntp_after.synced && !step.ntp_before.synced {
        "NTP synchronised the clock".to_string()
    } else if step.ntp_before.synced {
        "clock set while synchronised".to_string()
    } else {
        "clock set".to_string()
    };
    // A step away from a synchronised clock leaves what was recorded before alone.
    let synced_until = if step.ntp_before.synced {
        Some(step.before_ns)
    } else {
        w.synced_until
    };
    let new = NewStep {
        at_ns: step.after_ns,
        before_ns: step.before_ns,
        after_ns: step.after_ns,
        size_ns: step.size_ns,
        cause: cause.clone(),
        epoch_before: w.epoch,
        boot_id: w.boot_id.clone(),
        base_after_ns: w.base_ns + step.size_ns,
        synced_until_ns: synced_until,
        synced_after: step.ntp_after.synced,
        error_after_ns: step.ntp_after.error_bound_ns(),
    };
    let t0 = std::time::Instant::now();
    match s.store.record_step(&new) {
        Ok((row, epoch)) => {
            tracing::warn!(
                before = %utc_ms(step.before_ns), after = %utc_ms(step.after_ns),
                size_ms = step.size_ns / 1_000_000, cause = %cause, corrected = %row.corrected,
                took_ms = t0.elapsed().as_millis() as u64,
                "box clock stepped; recorded times before it corrected"
            );
            w.epoch = epoch;
            w.base_ns = new.base_after_ns;
            w.synced_until = step.ntp_after.synced.then_some(step.after_ns);
            clock::publish(BoxClock {
                epoch,
                base_ns: w.base_ns,
                synced: step.ntp_after.synced,
                error_ns: step.ntp_after.error_bound_ns(),
                offset_ns: storeguard_base::now_ns() - clock::monotonic_ns() as i64,
            });
            let detail = format!(
                "box clock stepped {:+.3} s from {} to {} ({cause}); corrected {}",
                step.size_ns as f64 / 1e9,
                utc_ms(step.before_ns),
                utc_ms(step.after_ns),
                row.corrected
            );
            health(s, step.after_ns, "clock_step", &detail);
            lock(&s.status).last_step = Some(StepView::from(&row));
        }
        Err(e) => {
            // Recording goes on; the step is lost for the index but logged here.
            tracing::error!(
                before = %utc_ms(step.before_ns), after = %utc_ms(step.after_ns),
                error = %storeguard_base::error::chain(&e),
                "box clock stepped but recording the step failed; times before it stay uncorrected"
            );
        }
    }
}

/// The daemon's test clock (debug builds only): `STOREGUARD_TEST_CLOCK=FILE` names a
/// JSON file `{"offset_ns": N, "synced": B, "maxerror_us": N, "esterror_us": N}`; the
/// daemon's wall clock reads the system's plus `offset_ns` and its NTP state is the
/// file's, re-read on every poll. Release builds ignore the variable entirely, so a
/// production box cannot be put on it by accident.
struct TestClock {
    path: std::path::PathBuf,
    last: Mutex<Option<String>>,
}

impl TestClock {
    #[cfg(debug_assertions)]
    fn from_env() -> Option<TestClock> {
        std::env::var_os("STOREGUARD_TEST_CLOCK").map(|p| TestClock {
            path: p.into(),
            last: Mutex::new(None),
        })
    }

    #[cfg(not(debug_assertions))]
    fn from_env() -> Option<TestClock> {
        None
    }

    fn load(&self) {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return;
        };
        let mut last = lock(&self.last);
        if last.as_deref() == Some(text.as_str()) {
            return;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            return; // half-written: the next poll reads it whole
        };
        let int = |k: &str, d: i64| v[k].as_i64().unwrap_or(d);
        clock::set_test_override(
            int("offset_ns", 0),
            NtpState {
                synced: v["synced"].as_bool().unwrap_or(false),
                maxerror_us: int("maxerror_us", 16_000_000),
                esterror_us: int("esterror_us", 16_000_000),
            },
        );
        *last = Some(text);
    }
}

/// The box's local time zone, its UTC offset now and its next change (DST), for the
/// technician: the CLI and evidence show local time beside UTC.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Zone {
    pub name: String,
    pub utc_offset: String,
    /// The next change of the UTC offset within a year, if any: when (UTC) and to what.
    pub next_change: Option<ZoneChange>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ZoneChange {
    pub at: String,
    pub utc_offset: String,
}

pub fn zone(now_ns: i64) -> Zone {
    use chrono::{Local, Offset, TimeZone};
    let off = |ns: i64| Local.timestamp_nanos(ns).offset().fix().local_minus_utc();
    let fmt = |secs: i32| {
        let sign = if secs < 0 { '-' } else { '+' };
        let a = secs.abs();
        format!("{sign}{:02}:{:02}", a / 3600, (a % 3600) / 60)
    };
    let now = off(now_ns);
    const DAY: i64 = 86_400_000_000_000;
    let mut next_change = None;
    let mut lo = now_ns;
    for d in 1..=400 {
        let hi = now_ns + d * DAY;
        if off(hi) != now {
            // Bisect to the second.
            let (mut a, mut b) = (lo, hi);
            while b - a > 1_000_000_000 {
                let m = a + (b - a) / 2;
                if off(m) == now { a = m } else { b = m }
            }
            let b = b / 1_000_000_000 * 1_000_000_000;
            next_change = Some(ZoneChange {
                at: utc_ms(b),
                utc_offset: fmt(off(b)),
            });
            break;
        }
        lo = hi;
    }
    let name = std::env::var("TZ")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/timezone")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .or_else(|| {
            std::fs::read_link("/etc/localtime").ok().map(|p| {
                let s = p.to_string_lossy().into_owned();
                s.split("zoneinfo/").nth(1).unwrap_or(&s).to_string()
            })
        })
        .unwrap_or_else(|| "UTC".into());
    Zone {
        name,
        utc_offset: fmt(now),
        next_change,
    }
}

/// The box clock for `status` and the `status` topic: state, error bound, last step,
/// and the local zone.
pub fn status_json(st: &ClockStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(st).unwrap_or_default();
    v["zone"] = serde_json::to_value(zone(storeguard_base::now_ns())).unwrap_or_default();
    v
}

/// One line for `doctor`: (status, detail).
pub fn doctor_line(st: &ClockStatus) -> (&'static str, String) {
    let z = zone(storeguard_base::now_ns());
    let zone = format!(
        "zone {} (UTC{}{})",
        z.name,
        z.utc_offset,
        z.next_change
            .map(|c| format!(", changes to UTC{} at {}", c.utc_offset, c.at))
            .unwrap_or_default()
    );
    let step = st
        .last_step
        .as_ref()
        .map(|s| {
            format!(
                "; last step {:+.3} s at {} ({})",
                s.size_ms as f64 / 1000.0,
                s.at,
                s.cause
            )
        })
        .unwrap_or_else(|| "; no step recorded".into());
    if let Some(e) = &st.error {
        return ("fail", format!("{e}; {zone}"));
    }
    if st.synced {
        (
            "ok",
            format!(
                "box clock synchronised (NTP), error bound {:.1} ms{step}; {zone}",
                st.error_bound_ms.unwrap_or(st.maxerror_ms)
            ),
        )
    } else {
        (
            "warn",
            format!(
                "box clock NOT synchronised (kernel STA_UNSYNC{}, maxerror {:.0} ms){}: recording goes on, times are marked unsynchronised until NTP corrects them{step}; {zone}",
                if st.source == "test" {
                    ", test clock"
                } else {
                    ""
                },
                st.maxerror_ms,
                st.unsynchronised_since
                    .as_ref()
                    .map(|s| format!(" since {s}"))
                    .unwrap_or_default()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zone_has_an_offset_and_a_change_is_a_change() {
        let z = zone(1_764_600_000_000_000_000);
        assert_eq!(z.utc_offset.len(), 6, "{z:?}");
        if let Some(c) = z.next_change {
            assert_ne!(c.utc_offset, z.utc_offset);
        }
    }
}
