//! A simulated [`EdgeSource`]: replays a script of timestamped edges, or takes edges from a
//! channel so the daemon can inject presses (`storeguard button press NAME --test`).
//!
//! Script format, one edge per line, times measured from the start of the script:
//!
//! ```text
//! # comment
//! 0ms   on      # circuit closed (logical active)
//! 3ms   off     # circuit open
//! 1s 500ms on
//! ```

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::time::Duration;

use super::{Edge, EdgeClock, EdgeSource, GpioError, Wiring, monotonic_now_ns};

/// One scripted level change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimEdge {
    /// Offset from the script start (for the channel source: from when it is received).
    pub at: Duration,
    /// Logical level after the change: `true` = circuit closed.
    pub active: bool,
}

/// How a script is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// On `CLOCK_MONOTONIC`, sleeping between edges, starting when the source is built.
    RealTime,
    /// On a virtual clock starting at 0 that jumps straight to each edge: no sleeping, and
    /// `next_edge(timeout)` without a due edge just advances the clock by `timeout`.
    Instant,
}

/// A script line that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("button sim script line {line}: {message}")]
pub struct ScriptError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// Parse the script text format (see the module docs). Times must not go backwards.
pub fn parse_script(text: &str) -> Result<Vec<SimEdge>, ScriptError> {
    let mut edges = Vec::new();
    let mut last = Duration::ZERO;
    for (idx, raw) in text.lines().enumerate() {
        let err = |message: String| ScriptError {
            line: idx + 1,
            message,
        };
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let (time, level) = content
            .rsplit_once(char::is_whitespace)
            .ok_or_else(|| err(format!("expected '<time> on|off', got {content:?}")))?;
        let active = match level {
            "on" => true,
            "off" => false,
            other => return Err(err(format!("level must be 'on' or 'off', got {other:?}"))),
        };
        let time = time.trim();
        let at =
            humantime::parse_duration(time).map_err(|e| err(format!("bad time {time:?}: {e}")))?;
        if at < last {
            return Err(err(format!(
                "time {time} goes backwards (previous edge at {})",
                humantime::format_duration(last)
            )));
        }
        last = at;
        edges.push(SimEdge { at, active });
    }
    Ok(edges)
}

/// Replays scripted edges, or edges sent through a channel.
#[derive(Debug)]
pub struct SimulatedSource {
    /// Scheduled edges as (timestamp on the source clock, level), sorted by time.
    queue: VecDeque<(u64, bool)>,
    rx: Option<Receiver<SimEdge>>,
    pace: Pace,
    virtual_now: u64,
    seq: u64,
    kernel_debounce: bool,
}

impl SimulatedSource {
    /// Replay `edges` (offsets from the start, sorted or not) at `pace`.
    pub fn from_edges(edges: Vec<SimEdge>, pace: Pace) -> Self {
        let base_ns = match pace {
            Pace::RealTime => monotonic_now_ns(),
            Pace::Instant => 0,
        };
        let mut src = SimulatedSource {
            queue: VecDeque::new(),
            rx: None,
            pace,
            virtual_now: 0,
            seq: 0,
            kernel_debounce: false,
        };
        for e in edges {
            src.schedule(base_ns.saturating_add(nanos(e.at)), e.active);
        }
        src
    }

    /// Parse a script (see the module docs) and replay it at `pace`.
    pub fn from_script(text: &str, pace: Pace) -> Result<Self, ScriptError> {
        Ok(Self::from_edges(parse_script(text)?, pace))
    }

    /// The edges of one clean press held for `hold`, for this `wiring`
    /// (normally-closed: the press opens the circuit).
    pub fn press_edges(wiring: Wiring, hold: Duration) -> Vec<SimEdge> {
        let pressed_level = wiring == Wiring::NormallyOpen;
        vec![
            SimEdge {
                at: Duration::ZERO,
                active: pressed_level,
            },
            SimEdge {
                at: hold,
                active: !pressed_level,
            },
        ]
    }

    /// One clean press held for `hold`, starting now.
    pub fn press(wiring: Wiring, hold: Duration, pace: Pace) -> Self {
        Self::from_edges(Self::press_edges(wiring, hold), pace)
    }

    /// A real-time source fed through the returned sender. Each [`SimEdge`] is scheduled at
    /// its receipt time plus `at`, so a whole press can be sent at once
    /// (see [`SimulatedSource::press_edges`]). When all senders are gone it just stays quiet.
    pub fn channel() -> (Sender<SimEdge>, Self) {
        let (tx, rx) = channel();
        let mut src = Self::from_edges(Vec::new(), Pace::RealTime);
        src.rx = Some(rx);
        (tx, src)
    }

    /// Claim the edges are kernel-debounced (the machine then skips software debounce).
    /// Default: not debounced, so scripts can contain raw contact bounce.
    pub fn with_kernel_debounce(mut self, on: bool) -> Self {
        self.kernel_debounce = on;
        self
    }

    /// Edges scheduled but not yet delivered.
    pub fn remaining(&self) -> usize {
        self.queue.len()
    }

    fn schedule(&mut self, ts: u64, active: bool) {
        let pos = self.queue.partition_point(|&(t, _)| t <= ts);
        self.queue.insert(pos, (ts, active));
    }

    fn drain_channel(&mut self) {
        let Some(rx) = &self.rx else { return };
        let mut got = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(e) => got.push(e),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.rx = None;
                    break;
                }
            }
        }
        let now = self.now_ns();
        for e in got {
            self.schedule(now.saturating_add(nanos(e.at)), e.active);
        }
    }

    fn pop_edge(&mut self) -> Option<Edge> {
        let (ts, active) = self.queue.pop_front()?;
        self.seq += 1;
        Some(Edge {
            active,
            kernel_ts_ns: ts,
            clock: EdgeClock::Monotonic,
            seq: self.seq,
        })
    }

    fn next_instant(&mut self, timeout: Duration) -> Option<Edge> {
        let deadline = self.virtual_now.saturating_add(nanos(timeout));
        match self.queue.front() {
            Some(&(ts, _)) if ts <= deadline => {
                self.virtual_now = self.virtual_now.max(ts);
                self.pop_edge()
            }
            _ => {
                self.virtual_now = deadline;
                None
            }
        }
    }

    fn next_real(&mut self, timeout: Duration) -> Option<Edge> {
        let deadline = monotonic_now_ns().saturating_add(nanos(timeout));
        loop {
            self.drain_channel();
            let now = monotonic_now_ns();
            let due = self.queue.front().map(|&(ts, _)| ts);
            if due.is_some_and(|ts| ts <= now) {
                return self.pop_edge();
            }
            if now >= deadline {
                return None;
            }
            let until = due.map_or(deadline, |ts| ts.min(deadline));
            let wait = Duration::from_nanos(until - now);
            match &self.rx {
                Some(rx) => match rx.recv_timeout(wait) {
                    Ok(e) => {
                        let now = monotonic_now_ns();
                        self.schedule(now.saturating_add(nanos(e.at)), e.active);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => self.rx = None,
                },
                None => std::thread::sleep(wait),
            }
        }
    }
}

impl EdgeSource for SimulatedSource {
    fn next_edge(&mut self, timeout: Duration) -> Result<Option<Edge>, GpioError> {
        Ok(match self.pace {
            Pace::Instant => self.next_instant(timeout),
            Pace::RealTime => self.next_real(timeout),
        })
    }

    fn kernel_debounce(&self) -> bool {
        self.kernel_debounce
    }

    fn now_ns(&self) -> u64 {
        match self.pace {
            Pace::Instant => self.virtual_now,
            Pace::RealTime => monotonic_now_ns(),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::button::{Bias, ButtonEvent, ButtonInput, LineId, LineSettings, Thresholds, Wiring};

    const MS: u64 = 1_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses_script_with_comments_and_compound_times() {
        let edges = parse_script(
            "# a press with bounce\n\n0ms on\n  3ms off  # bounce\n4ms on\n1s 500ms off\n",
        )
        .unwrap();
        assert_eq!(
            edges,
            vec![
                SimEdge {
                    at: ms(0),
                    active: true
                },
                SimEdge {
                    at: ms(3),
                    active: false
                },
                SimEdge {
                    at: ms(4),
                    active: true
                },
                SimEdge {
                    at: ms(1500),
                    active: false
                },
            ]
        );
    }

    #[test]
    fn script_errors_name_the_line() {
        let e = parse_script("0ms on\n\n5ms maybe\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.to_string().contains("line 3"), "{e}");
        assert!(e.to_string().contains("maybe"), "{e}");

        let e = parse_script("0ms on\nsoon off\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("soon"), "{e}");

        let e = parse_script("# header\non\n").unwrap_err();
        assert_eq!(e.line, 2);

        let e = parse_script("10ms on\n5ms off\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("backwards"), "{e}");
    }

    #[test]
    fn instant_replay_uses_a_virtual_clock() {
        let mut s = SimulatedSource::from_script("0ms on\n3ms off\n", Pace::Instant).unwrap();
        assert!(!s.kernel_debounce());
        let e1 = s.next_edge(ms(1)).unwrap().unwrap();
        assert_eq!((e1.active, e1.kernel_ts_ns, e1.seq), (true, 0, 1));
        // Next edge is 3 ms away: a 1 ms wait times out and moves the clock by 1 ms.
        assert_eq!(s.next_edge(ms(1)).unwrap(), None);
        assert_eq!(s.now_ns(), MS);
        let e2 = s.next_edge(ms(10)).unwrap().unwrap();
        assert_eq!((e2.active, e2.kernel_ts_ns, e2.seq), (false, 3 * MS, 2));
        assert_eq!(s.now_ns(), 3 * MS);
        assert_eq!(s.remaining(), 0);
        assert_eq!(s.next_edge(ms(5)).unwrap(), None);
        assert_eq!(s.now_ns(), 8 * MS);
    }

    #[test]
    fn press_levels_follow_wiring() {
        let no = SimulatedSource::press_edges(Wiring::NormallyOpen, ms(300));
        assert_eq!(
            (no[0].active, no[1].active, no[1].at),
            (true, false, ms(300))
        );
        let nc = SimulatedSource::press_edges(Wiring::NormallyClosed, ms(300));
        assert_eq!((nc[0].active, nc[1].active), (false, true));
    }

    #[test]
    fn realtime_replay_stamps_edges_on_the_monotonic_clock() {
        let start = monotonic_now_ns();
        let mut s = SimulatedSource::press(Wiring::NormallyOpen, ms(30), Pace::RealTime);
        let mut got = Vec::new();
        for _ in 0..50 {
            if got.len() == 2 {
                break;
            }
            if let Some(e) = s.next_edge(ms(200)).unwrap() {
                // Delivered no earlier than scheduled.
                assert!(monotonic_now_ns() >= e.kernel_ts_ns);
                got.push(e);
            }
        }
        assert_eq!(got.len(), 2);
        assert!(got[0].kernel_ts_ns >= start);
        assert_eq!(got[1].kernel_ts_ns - got[0].kernel_ts_ns, 30 * MS);
        assert_eq!((got[0].active, got[1].active), (true, false));
    }

    #[test]
    fn channel_source_delivers_injected_press() {
        let (tx, mut s) = SimulatedSource::channel();
        assert_eq!(s.next_edge(Duration::ZERO).unwrap(), None);
        let sender = std::thread::spawn(move || {
            for e in SimulatedSource::press_edges(Wiring::NormallyClosed, ms(50)) {
                tx.send(e).unwrap();
            }
        });
        let mut got = Vec::new();
        for _ in 0..50 {
            if got.len() == 2 {
                break;
            }
            if let Some(e) = s.next_edge(ms(500)).unwrap() {
                got.push(e);
            }
        }
        assert_eq!(got.len(), 2);
        sender.join().unwrap();
        assert_eq!((got[0].active, got[1].active), (false, true));
        assert!(got[1].kernel_ts_ns - got[0].kernel_ts_ns >= 50 * MS);
        // Sender gone: the source stays quiet instead of failing.
        assert_eq!(s.next_edge(ms(5)).unwrap(), None);
    }

    #[test]
    fn simulated_press_through_the_input_loop_in_real_time() {
        let settings = LineSettings {
            chip: "sim".into(),
            line: LineId::Offset(0),
            active_low: false,
            bias: Bias::AsIs,
            wiring: Wiring::NormallyClosed,
            debounce: ms(10),
        };
        let src = SimulatedSource::press(Wiring::NormallyClosed, ms(100), Pace::RealTime);
        let mut input = ButtonInput::new(src, &settings, Thresholds::default());
        let mut events = Vec::new();
        for _ in 0..100 {
            if events.len() >= 2 {
                break;
            }
            events.extend(input.poll(ms(50)).unwrap());
        }
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(matches!(events[0], ButtonEvent::Pressed { .. }));
        assert!(matches!(events[1], ButtonEvent::Released { .. }));
        assert_eq!(events[1].ts_ns() - events[0].ts_ns(), 100 * MS);
    }
}
