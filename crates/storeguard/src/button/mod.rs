//! ISB panic-button input: line settings, the edge-source seam, the debounce/fault state
//! machine, a simulator and the real GPIO character-device source.
//!
//! Data flow: an [`EdgeSource`] yields [`Edge`]s (logical level changes with kernel
//! timestamps); a [`ButtonMachine`] turns them, plus the passage of time, into
//! [`ButtonEvent`]s. [`ButtonInput`] glues the two into one pollable loop step.
//!
//! Levels: `Edge::active` is the logical level after `active_low`, meaning "circuit closed".
//! Whether "closed" means "pressed" depends on [`Wiring`]; only the machine applies that.

pub mod gpio;
pub mod machine;
pub mod service;
pub mod sim;

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

pub use gpio::{GpioCdevSource, GpioError};
pub use machine::{ButtonEvent, ButtonMachine, Thresholds};
pub use sim::{Pace, ScriptError, SimEdge, SimulatedSource};

pub use crate::config::line::{Bias, LineId, LineSettings, Wiring};

/// Clock an edge timestamp was taken on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EdgeClock {
    /// `CLOCK_MONOTONIC`: immune to NTP steps, needs [`to_utc`] for wall time.
    Monotonic,
    /// `CLOCK_REALTIME`: nanoseconds since the Unix epoch.
    Realtime,
}

/// One level change on the line, as reported by an [`EdgeSource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// Logical level after the change (after `active_low`): `true` = circuit closed.
    pub active: bool,
    /// When it happened, in nanoseconds on `clock`.
    pub kernel_ts_ns: u64,
    /// Clock of `kernel_ts_ns`; also the clock of the source's [`EdgeSource::now_ns`].
    pub clock: EdgeClock,
    /// Per-line sequence number; 0 marks a level read rather than a kernel event (the
    /// snapshot taken when the line is requested, or a resync after lost events).
    pub seq: u64,
}

/// Where edges come from: the GPIO character device, or a simulator.
pub trait EdgeSource: Send {
    /// Wait up to `timeout` for the next edge. `Ok(None)` means the timeout passed.
    fn next_edge(&mut self, timeout: Duration) -> Result<Option<Edge>, GpioError>;
    /// Whether edges were already debounced by the kernel (else the machine debounces).
    fn kernel_debounce(&self) -> bool;
    /// Current time on the clock of the edges this source yields.
    fn now_ns(&self) -> u64;
}

/// Current `CLOCK_MONOTONIC` time in nanoseconds, the clock of kernel GPIO edge events.
pub use storeguard_base::clock::monotonic_ns as monotonic_now_ns;

/// Map a timestamp on `clock` to UTC: `utc = now_realtime - (now_monotonic - ts)`.
///
/// Pure; sample `now_realtime` and `now_monotonic_ns` together, as close as possible.
/// Using the current offset between the clocks means an NTP step between the edge and
/// the mapping shifts the result, which is the right answer for "when did it happen".
pub fn to_utc(
    ts_ns: u64,
    clock: EdgeClock,
    now_realtime: DateTime<Utc>,
    now_monotonic_ns: u64,
) -> DateTime<Utc> {
    match clock {
        EdgeClock::Realtime => DateTime::from_timestamp_nanos(ts_ns.min(i64::MAX as u64) as i64),
        EdgeClock::Monotonic => {
            let age = now_monotonic_ns as i128 - ts_ns as i128;
            let age = age.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
            now_realtime - TimeDelta::nanoseconds(age)
        }
    }
}

/// [`to_utc`] against the clocks as they are now.
pub fn monotonic_to_utc_now(ts_ns: u64) -> DateTime<Utc> {
    let mono = monotonic_now_ns();
    let real = DateTime::from_timestamp_nanos(storeguard_base::now_ns());
    to_utc(ts_ns, EdgeClock::Monotonic, real, mono)
}

/// Upper bound on edges folded into one [`ButtonInput::poll`] (a bounce storm is ~tens).
const MAX_EDGES_PER_POLL: usize = 256;

/// One button: an edge source driving a state machine.
pub struct ButtonInput<S> {
    source: S,
    machine: ButtonMachine,
}

impl<S: EdgeSource> ButtonInput<S> {
    /// Build the machine for `settings`, debouncing in software unless the source's kernel does.
    pub fn new(source: S, settings: &LineSettings, thresholds: Thresholds) -> Self {
        let machine = ButtonMachine::new(settings, thresholds, source.kernel_debounce());
        ButtonInput { source, machine }
    }

    /// Wait up to `max_wait` for edges (less if a debounce or fault deadline is due sooner),
    /// then return whatever events they and the passing time produced.
    pub fn poll(&mut self, max_wait: Duration) -> Result<Vec<ButtonEvent>, GpioError> {
        let now = self.source.now_ns();
        let wait = match self.machine.next_deadline() {
            Some(d) => max_wait.min(Duration::from_nanos(d.saturating_sub(now))),
            None => max_wait,
        };
        let mut events = Vec::new();
        let mut next = self.source.next_edge(wait)?;
        let mut n = 0;
        while let Some(edge) = next {
            events.extend(self.machine.on_edge(&edge));
            n += 1;
            if n == MAX_EDGES_PER_POLL {
                break;
            }
            next = self.source.next_edge(Duration::ZERO)?;
        }
        events.extend(self.machine.on_tick(self.source.now_ns()));
        Ok(events)
    }

    /// The edge source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The state machine (read-only: its state is driven by `poll`).
    pub fn machine(&self) -> &ButtonMachine {
        &self.machine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn settings_from_toml_with_defaults() {
        let s: LineSettings = toml::from_str(
            r#"
            chip = "gpiochip0"
            line = 17
            wiring = "normally-closed"
            "#,
        )
        .unwrap();
        assert_eq!(s.chip, "gpiochip0");
        assert_eq!(s.line, LineId::Offset(17));
        assert!(!s.active_low);
        assert_eq!(s.bias, Bias::AsIs);
        assert_eq!(s.wiring, Wiring::NormallyClosed);
        assert_eq!(s.debounce, ms(20));
    }

    #[test]
    fn settings_from_toml_full_and_round_trip() {
        let text = r#"
            chip = "/dev/gpiochip4"
            line = "PANIC_BTN"
            active-low = true
            bias = "pull-up"
            wiring = "normally-open"
            debounce = "15ms"
        "#;
        let s: LineSettings = toml::from_str(text).unwrap();
        assert_eq!(s.line, LineId::Name("PANIC_BTN".into()));
        assert!(s.active_low);
        assert_eq!(s.bias, Bias::PullUp);
        assert_eq!(s.debounce, ms(15));
        let back: LineSettings = toml::from_str(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn settings_reject_unknown_fields_and_bad_values() {
        let unknown = "chip = \"gpiochip0\"\nline = 1\nwiring = \"normally-open\"\npolarity = 1\n";
        assert!(toml::from_str::<LineSettings>(unknown).is_err());
        let bad_dur = "chip = \"c\"\nline = 1\nwiring = \"normally-open\"\ndebounce = \"soon\"\n";
        let err = toml::from_str::<LineSettings>(bad_dur)
            .unwrap_err()
            .to_string();
        assert!(err.contains("soon"), "{err}");
        let no_wiring = "chip = \"gpiochip0\"\nline = 1\n";
        assert!(toml::from_str::<LineSettings>(no_wiring).is_err());
    }

    #[test]
    fn wiring_maps_level_to_pressed() {
        assert!(Wiring::NormallyOpen.is_pressed(true));
        assert!(!Wiring::NormallyOpen.is_pressed(false));
        assert!(Wiring::NormallyClosed.is_pressed(false));
        assert!(!Wiring::NormallyClosed.is_pressed(true));
    }

    #[test]
    fn to_utc_maps_monotonic_age_onto_realtime() {
        let now = DateTime::parse_from_rfc3339("2025-03-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mono_now = 5_000_000_000_000; // 5000 s of uptime
        let edge_ts = mono_now - 1_250_000_000; // 1.25 s ago
        let utc = to_utc(edge_ts, EdgeClock::Monotonic, now, mono_now);
        assert_eq!(utc.to_rfc3339(), "2025-03-01T11:59:58.750+00:00");
        // An edge stamped after the monotonic sample (reordering) maps slightly ahead, not panic.
        let ahead = to_utc(mono_now + 1_000, EdgeClock::Monotonic, now, mono_now);
        assert_eq!((ahead - now).num_nanoseconds(), Some(1_000));
        // Realtime timestamps are already UTC.
        let rt = now.timestamp_nanos_opt().unwrap() as u64;
        assert_eq!(to_utc(rt, EdgeClock::Realtime, now, mono_now), now);
    }

    #[test]
    fn monotonic_to_utc_now_is_close_to_wall_clock() {
        let utc = monotonic_to_utc_now(monotonic_now_ns());
        let diff = (Utc::now() - utc).num_milliseconds().abs();
        assert!(diff < 5_000, "{diff} ms");
    }

    #[test]
    fn input_loop_with_instant_sim_press_and_stuck() {
        let settings = LineSettings {
            chip: "sim".into(),
            line: LineId::Offset(0),
            active_low: false,
            bias: Bias::AsIs,
            wiring: Wiring::NormallyOpen,
            debounce: ms(20),
        };
        let thresholds = Thresholds {
            stuck_after: Duration::from_secs(2),
            rearm_after: Duration::from_secs(1),
        };
        let script = "0ms off\n100ms on\n101ms off\n102ms on\n3s off\n";
        let src = SimulatedSource::from_script(script, Pace::Instant).unwrap();
        let mut input = ButtonInput::new(src, &settings, thresholds);
        let mut all = Vec::new();
        for _ in 0..100 {
            all.extend(input.poll(ms(250)).unwrap());
        }
        assert_eq!(
            all,
            vec![
                ButtonEvent::Pressed { at_ns: 102_000_000 },
                ButtonEvent::StuckFault {
                    since_ns: 102_000_000
                },
                ButtonEvent::Released {
                    at_ns: 3_000_000_000
                },
                ButtonEvent::StuckCleared {
                    at_ns: 4_000_000_000
                },
            ]
        );
    }

    #[test]
    fn input_poll_stops_waiting_at_debounce_deadline() {
        // With a 250 ms poll and a 20 ms software debounce, the press must come out of the
        // poll right after the debounce deadline, not at the end of the poll window.
        let settings = LineSettings {
            chip: "sim".into(),
            line: LineId::Offset(0),
            active_low: false,
            bias: Bias::AsIs,
            wiring: Wiring::NormallyOpen,
            debounce: ms(20),
        };
        let src = SimulatedSource::from_script("0ms on\n", Pace::Instant).unwrap();
        let mut input = ButtonInput::new(src, &settings, Thresholds::default());
        assert_eq!(input.poll(ms(250)).unwrap(), vec![]);
        assert_eq!(
            input.poll(ms(250)).unwrap(),
            vec![ButtonEvent::Pressed { at_ns: 0 }]
        );
        assert_eq!(input.source().now_ns(), 20_000_000);
    }
}
