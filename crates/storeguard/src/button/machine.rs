//! Pure button state machine: debounce, press/release, stuck-line and cut-wire faults.
//!
//! Time only moves through the timestamps it is fed (`on_edge`, `on_tick`), all on the
//! clock of the edge source, so every behaviour is deterministic and testable.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Edge, LineSettings, Wiring};
use crate::config::line::duration_text;

/// Fault thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Thresholds {
    /// A press lasting longer than this is reported as a fault (stuck button, or for
    /// normally-closed wiring a cut wire). The alarm from the press itself stands.
    #[serde(with = "duration_text")]
    pub stuck_after: Duration,
    /// After a fault, the line must stay released this long before the fault clears and a
    /// new press can raise the alarm again (stops a flaky contact from re-alarming).
    #[serde(with = "duration_text")]
    pub rearm_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            stuck_after: Duration::from_secs(60),
            rearm_after: Duration::from_secs(2),
        }
    }
}

/// What the machine reports. Times are nanoseconds on the edge source's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ButtonEvent {
    /// The button was pressed: raise the alarm. `at_ns` is when the level settled.
    Pressed { at_ns: u64 },
    /// The button was let go (also reported after a fault, for a cut wire: restored).
    Released { at_ns: u64 },
    /// Normally-open line held pressed longer than `stuck_after`, held since `since_ns`.
    StuckFault { since_ns: u64 },
    /// The stuck line has been released and healthy for `rearm_after`.
    StuckCleared { at_ns: u64 },
    /// Normally-closed line open longer than `stuck_after`: cut wire or unplugged button.
    WiringFault { since_ns: u64 },
    /// The normally-closed loop is closed again and has been healthy for `rearm_after`.
    WiringRestored { at_ns: u64 },
}

impl ButtonEvent {
    /// The timestamp carried by the event.
    pub fn ts_ns(&self) -> u64 {
        match *self {
            ButtonEvent::Pressed { at_ns }
            | ButtonEvent::Released { at_ns }
            | ButtonEvent::StuckCleared { at_ns }
            | ButtonEvent::WiringRestored { at_ns } => at_ns,
            ButtonEvent::StuckFault { since_ns } | ButtonEvent::WiringFault { since_ns } => {
                since_ns
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Released and armed.
    Idle,
    /// Pressed, alarm raised, no fault yet.
    Pressed { since: u64 },
    /// Held past `stuck_after`; the fault has been reported.
    Faulted,
    /// Fault outstanding; `released_at` is set while the line is released (and counting
    /// towards `rearm_after`), `None` while it is held again.
    Rearming { released_at: Option<u64> },
}

/// The button state machine for one line.
#[derive(Debug, Clone)]
pub struct ButtonMachine {
    wiring: Wiring,
    /// Software debounce period; 0 when the kernel already debounced the edges.
    debounce_ns: u64,
    stuck_ns: u64,
    rearm_ns: u64,
    /// Latest pressed-level seen on the wire (undebounced) and since when.
    raw: bool,
    raw_since: u64,
    last_edge_ts: u64,
    now: u64,
    state: State,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl ButtonMachine {
    /// A machine starting released at time 0. With `kernel_debounce` the edges are trusted
    /// as they come; otherwise a level must hold for `settings.debounce` to count.
    pub fn new(settings: &LineSettings, thresholds: Thresholds, kernel_debounce: bool) -> Self {
        ButtonMachine {
            wiring: settings.wiring,
            debounce_ns: if kernel_debounce {
                0
            } else {
                nanos(settings.debounce)
            },
            stuck_ns: nanos(thresholds.stuck_after),
            rearm_ns: nanos(thresholds.rearm_after),
            raw: false,
            raw_since: 0,
            last_edge_ts: 0,
            now: 0,
            state: State::Idle,
        }
    }

    /// Feed one edge. Time first advances to the edge's timestamp (which may fire
    /// deadlines), then the new level is applied.
    pub fn on_edge(&mut self, edge: &Edge) -> Vec<ButtonEvent> {
        let mut out = Vec::new();
        // Kernel timestamps are ordered per line; clamp anyway so time never runs back.
        let ts = edge.kernel_ts_ns.max(self.last_edge_ts);
        self.last_edge_ts = ts;
        self.advance(ts, &mut out);
        let pressed = self.wiring.is_pressed(edge.active);
        if pressed != self.raw {
            self.raw = pressed;
            self.raw_since = ts;
        }
        self.advance(ts, &mut out);
        out
    }

    /// Time passed without edges; `now_ns` is on the edge clock.
    pub fn on_tick(&mut self, now_ns: u64) -> Vec<ButtonEvent> {
        let mut out = Vec::new();
        self.advance(now_ns, &mut out);
        out
    }

    /// The next time at which `on_tick` could emit something, if any. Poll no later than this.
    pub fn next_deadline(&self) -> Option<u64> {
        let commit = self
            .pending_change()
            .then(|| self.raw_since.saturating_add(self.debounce_ns));
        match (commit, self.threshold_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the debounced state is "pressed" (including a held faulted line).
    pub fn is_pressed(&self) -> bool {
        self.stable()
    }

    /// Whether a stuck or wiring fault is outstanding.
    pub fn is_faulted(&self) -> bool {
        matches!(self.state, State::Faulted | State::Rearming { .. })
    }

    fn stable(&self) -> bool {
        match self.state {
            State::Idle => false,
            State::Pressed { .. } | State::Faulted => true,
            State::Rearming { released_at } => released_at.is_none(),
        }
    }

    fn pending_change(&self) -> bool {
        self.raw != self.stable()
    }

    fn threshold_deadline(&self) -> Option<u64> {
        match self.state {
            State::Pressed { since } => Some(since.saturating_add(self.stuck_ns)),
            State::Rearming {
                released_at: Some(at),
            } => Some(at.saturating_add(self.rearm_ns)),
            _ => None,
        }
    }

    /// Process everything due up to `t`, in the order it happened: a level change takes
    /// effect at `raw_since` (known once it has held for the debounce period), a threshold
    /// at its deadline. A threshold waits while an earlier change is still settling.
    fn advance(&mut self, t: u64, out: &mut Vec<ButtonEvent>) {
        self.now = self.now.max(t);
        let now = self.now;
        loop {
            let change = self.pending_change().then_some(self.raw_since);
            let change_known =
                change.is_some() && self.raw_since.saturating_add(self.debounce_ns) <= now;
            let deadline = self.threshold_deadline().filter(|&d| d <= now);
            match (change, deadline) {
                // Threshold reached before the (possibly still settling) change: fire it.
                (Some(c), Some(d)) if d <= c => self.fire_threshold(d, out),
                (None, Some(d)) => self.fire_threshold(d, out),
                (Some(c), _) if change_known => self.commit(c, out),
                _ => break,
            }
        }
    }

    fn commit(&mut self, at: u64, out: &mut Vec<ButtonEvent>) {
        let pressed = self.raw;
        self.state = match (self.state, pressed) {
            (State::Idle, true) => {
                out.push(ButtonEvent::Pressed { at_ns: at });
                State::Pressed { since: at }
            }
            (State::Pressed { .. }, false) => {
                out.push(ButtonEvent::Released { at_ns: at });
                State::Idle
            }
            (State::Faulted, false) => {
                out.push(ButtonEvent::Released { at_ns: at });
                State::Rearming {
                    released_at: Some(at),
                }
            }
            // Pressed again before the fault cleared: no new alarm, the fault still stands.
            (State::Rearming { .. }, true) => State::Rearming { released_at: None },
            (State::Rearming { .. }, false) => State::Rearming {
                released_at: Some(at),
            },
            (s, _) => s,
        };
    }

    fn fire_threshold(&mut self, deadline: u64, out: &mut Vec<ButtonEvent>) {
        self.state = match self.state {
            State::Pressed { since } => {
                out.push(match self.wiring {
                    Wiring::NormallyOpen => ButtonEvent::StuckFault { since_ns: since },
                    Wiring::NormallyClosed => ButtonEvent::WiringFault { since_ns: since },
                });
                State::Faulted
            }
            State::Rearming {
                released_at: Some(_),
            } => {
                out.push(match self.wiring {
                    Wiring::NormallyOpen => ButtonEvent::StuckCleared { at_ns: deadline },
                    Wiring::NormallyClosed => ButtonEvent::WiringRestored { at_ns: deadline },
                });
                State::Idle
            }
            s => s,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::button::{Bias, EdgeClock, LineId};
    use ButtonEvent::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    fn settings(wiring: Wiring) -> LineSettings {
        LineSettings {
            chip: "gpiochip0".into(),
            line: LineId::Offset(4),
            active_low: true,
            bias: Bias::PullUp,
            wiring,
            debounce: Duration::from_millis(20),
        }
    }

    fn thresholds() -> Thresholds {
        Thresholds {
            stuck_after: Duration::from_secs(10),
            rearm_after: Duration::from_secs(1),
        }
    }

    fn edge(active: bool, ts: u64) -> Edge {
        Edge {
            active,
            kernel_ts_ns: ts,
            clock: EdgeClock::Monotonic,
            seq: 0,
        }
    }

    /// Feed (timestamp, active) edges and ticks (`None` level) in order; collect events.
    fn run(m: &mut ButtonMachine, steps: &[(u64, Option<bool>)]) -> Vec<ButtonEvent> {
        let mut out = Vec::new();
        for &(t, level) in steps {
            match level {
                Some(a) => out.extend(m.on_edge(&edge(a, t))),
                None => out.extend(m.on_tick(t)),
            }
        }
        out
    }

    fn soft(wiring: Wiring) -> ButtonMachine {
        ButtonMachine::new(&settings(wiring), thresholds(), false)
    }

    fn kernel(wiring: Wiring) -> ButtonMachine {
        ButtonMachine::new(&settings(wiring), thresholds(), true)
    }

    #[test]
    fn bounce_storm_gives_exactly_one_press() {
        let mut m = soft(Wiring::NormallyOpen);
        // 40 edges, 250 us apart (10 ms of bounce), ending closed.
        let mut steps: Vec<_> = (0..40u64)
            .map(|i| (S + i * 250_000, Some(i % 2 == 0)))
            .collect();
        let last = S + 39 * 250_000;
        assert!(
            steps.last().unwrap().1 == Some(false),
            "storm must end on a release bounce"
        );
        steps.push((last + 100_000, Some(true)));
        let settled = last + 100_000;
        // Ticks through the debounce window, then beyond.
        for k in 0..50 {
            steps.push((settled + k * MS, None));
        }
        let ev = run(&mut m, &steps);
        assert_eq!(ev, vec![Pressed { at_ns: settled }]);
        assert!(m.is_pressed());
    }

    #[test]
    fn press_fires_when_level_has_held_for_the_debounce_period() {
        let mut m = soft(Wiring::NormallyOpen);
        assert!(m.on_edge(&edge(true, S)).is_empty());
        assert_eq!(m.next_deadline(), Some(S + 20 * MS));
        assert!(m.on_tick(S + 19 * MS).is_empty());
        assert_eq!(m.on_tick(S + 20 * MS), vec![Pressed { at_ns: S }]);
    }

    #[test]
    fn software_debounce_ignores_short_glitches() {
        let mut m = soft(Wiring::NormallyOpen);
        let ev = run(
            &mut m,
            &[
                (S, Some(true)),
                (S + 5 * MS, Some(false)), // 5 ms spike: noise
                (S + 100 * MS, None),
                (2 * S, Some(true)), // real press
                (2 * S + 30 * MS, None),
                (3 * S, Some(false)),
                (3 * S + 3 * MS, Some(true)), // release bounce
                (3 * S + 4 * MS, Some(false)),
                (3 * S + 50 * MS, None),
            ],
        );
        assert_eq!(
            ev,
            vec![
                Pressed { at_ns: 2 * S },
                Released {
                    at_ns: 3 * S + 4 * MS
                }
            ]
        );
    }

    #[test]
    fn next_edge_after_settling_commits_without_a_tick() {
        let mut m = soft(Wiring::NormallyOpen);
        assert!(m.on_edge(&edge(true, S)).is_empty());
        // The release edge comes 500 ms later: the press is committed first, in order.
        let ev = m.on_edge(&edge(false, S + 500 * MS));
        assert_eq!(ev, vec![Pressed { at_ns: S }]);
        assert_eq!(
            m.on_tick(S + 520 * MS),
            vec![Released {
                at_ns: S + 500 * MS
            }]
        );
    }

    #[test]
    fn kernel_debounce_trusts_edges_immediately() {
        let mut m = kernel(Wiring::NormallyOpen);
        assert_eq!(m.on_edge(&edge(true, S)), vec![Pressed { at_ns: S }]);
        assert_eq!(
            m.on_edge(&edge(false, S + MS)),
            vec![Released { at_ns: S + MS }]
        );
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn duplicate_levels_are_ignored() {
        let mut m = kernel(Wiring::NormallyOpen);
        assert!(m.on_edge(&edge(false, S)).is_empty());
        assert_eq!(
            m.on_edge(&edge(true, 2 * S)),
            vec![Pressed { at_ns: 2 * S }]
        );
        assert!(m.on_edge(&edge(true, 3 * S)).is_empty());
    }

    #[test]
    fn held_line_gives_one_stuck_fault_and_no_retrigger() {
        let mut m = soft(Wiring::NormallyOpen);
        let mut steps = vec![(S, Some(true))];
        // An hour of ticks every 100 ms while held.
        steps.extend((1..36_000u64).map(|k| (S + k * 100 * MS, None)));
        let ev = run(&mut m, &steps);
        assert_eq!(ev, vec![Pressed { at_ns: S }, StuckFault { since_ns: S }]);
        assert!(m.is_faulted());
        // Released briefly and pressed again before healthy: no new alarm, fault stays.
        let ev = run(
            &mut m,
            &[
                (4000 * S, Some(false)),
                (4000 * S + 300 * MS, Some(true)),
                (4000 * S + 400 * MS, Some(false)),
                (4000 * S + 600 * MS, Some(true)),
                (4010 * S, None),
                (4100 * S, None),
            ],
        );
        assert_eq!(ev, vec![Released { at_ns: 4000 * S }]);
        assert!(m.is_faulted());
        assert!(m.is_pressed());
    }

    #[test]
    fn release_after_stuck_clears_then_next_press_works() {
        let mut m = soft(Wiring::NormallyOpen);
        let ev = run(
            &mut m,
            &[
                (S, Some(true)),
                (20 * S, None),
                (30 * S, Some(false)),
                (30 * S + 500 * MS, None),
                (31 * S, None),
                (40 * S, Some(true)),
                (40 * S + 20 * MS, None),
                (41 * S, Some(false)),
                (42 * S, None),
            ],
        );
        assert_eq!(
            ev,
            vec![
                Pressed { at_ns: S },
                StuckFault { since_ns: S },
                Released { at_ns: 30 * S },
                StuckCleared { at_ns: 31 * S },
                Pressed { at_ns: 40 * S },
                Released { at_ns: 41 * S },
            ]
        );
        assert!(!m.is_faulted());
    }

    #[test]
    fn release_then_next_press_works() {
        let mut m = soft(Wiring::NormallyOpen);
        let ev = run(
            &mut m,
            &[
                (S, Some(true)),
                (S + 200 * MS, Some(false)),
                (S + 400 * MS, Some(true)),
                (S + 600 * MS, Some(false)),
                (2 * S, None),
            ],
        );
        assert_eq!(
            ev,
            vec![
                Pressed { at_ns: S },
                Released {
                    at_ns: S + 200 * MS
                },
                Pressed {
                    at_ns: S + 400 * MS
                },
                Released {
                    at_ns: S + 600 * MS
                },
            ]
        );
    }

    #[test]
    fn late_tick_keeps_chronological_order() {
        // Released at 10.5 s (after the 10 s stuck threshold), but nobody ticked in
        // between: the fault must still come before the release.
        let mut m = soft(Wiring::NormallyOpen);
        let ev = run(
            &mut m,
            &[
                (0, Some(true)),
                (10 * S + 500 * MS, Some(false)),
                (20 * S, None),
            ],
        );
        assert_eq!(
            ev,
            vec![
                Pressed { at_ns: 0 },
                StuckFault { since_ns: 0 },
                Released {
                    at_ns: 10 * S + 500 * MS
                },
                StuckCleared {
                    at_ns: 11 * S + 500 * MS
                },
            ]
        );
    }

    #[test]
    fn release_settling_across_threshold_is_not_a_fault() {
        // Released 10 ms before the threshold; the debounce only confirms it 10 ms after.
        let mut m = soft(Wiring::NormallyOpen);
        let ev = run(
            &mut m,
            &[
                (0, Some(true)),
                (10 * S - 10 * MS, Some(false)),
                (10 * S, None),
                (10 * S + 5 * MS, None),
                (10 * S + 10 * MS, None),
            ],
        );
        assert_eq!(
            ev,
            vec![
                Pressed { at_ns: 0 },
                Released {
                    at_ns: 10 * S - 10 * MS
                }
            ]
        );
    }

    #[test]
    fn nc_wire_cut_raises_alarm_then_wiring_fault() {
        let mut m = soft(Wiring::NormallyClosed);
        let ev = run(
            &mut m,
            &[
                (0, Some(true)), // loop closed: idle
                (5 * S, Some(false)),
                (5 * S + 20 * MS, None),
            ],
        );
        assert_eq!(ev, vec![Pressed { at_ns: 5 * S }]);
        let steps: Vec<_> = (1..200u64).map(|k| (5 * S + k * 100 * MS, None)).collect();
        let ev = run(&mut m, &steps);
        assert_eq!(ev, vec![WiringFault { since_ns: 5 * S }]);
    }

    #[test]
    fn nc_restore_gives_released_and_wiring_restored() {
        let mut m = kernel(Wiring::NormallyClosed);
        let ev = run(
            &mut m,
            &[
                (0, Some(false)), // open at start: cut wire
                (30 * S, None),
                (60 * S, Some(true)), // repaired
                (60 * S + 500 * MS, None),
                (61 * S, None),
                (70 * S, Some(false)), // a real press afterwards alarms again
            ],
        );
        assert_eq!(
            ev,
            vec![
                Pressed { at_ns: 0 },
                WiringFault { since_ns: 0 },
                Released { at_ns: 60 * S },
                WiringRestored { at_ns: 61 * S },
                Pressed { at_ns: 70 * S },
            ]
        );
    }

    #[test]
    fn nc_short_press_is_a_normal_press() {
        let mut m = soft(Wiring::NormallyClosed);
        let ev = run(
            &mut m,
            &[
                (0, Some(true)),
                (S, Some(false)),
                (S + 300 * MS, Some(true)),
                (2 * S, None),
            ],
        );
        assert_eq!(
            ev,
            vec![
                Pressed { at_ns: S },
                Released {
                    at_ns: S + 300 * MS
                }
            ]
        );
    }

    #[test]
    fn time_never_runs_backwards() {
        let mut m = kernel(Wiring::NormallyOpen);
        assert_eq!(
            m.on_edge(&edge(true, 5 * S)),
            vec![Pressed { at_ns: 5 * S }]
        );
        // An out-of-order edge is clamped to the last edge time.
        assert_eq!(
            m.on_edge(&edge(false, 4 * S)),
            vec![Released { at_ns: 5 * S }]
        );
        assert!(m.on_tick(S).is_empty());
    }

    #[test]
    fn thresholds_from_toml() {
        let t: Thresholds = toml::from_str("stuck-after = \"90s\"").unwrap();
        assert_eq!(t.stuck_after, Duration::from_secs(90));
        assert_eq!(t.rearm_after, Thresholds::default().rearm_after);
        assert!(toml::from_str::<Thresholds>("stuck = \"1s\"").is_err());
    }
}
