//! Camera tamper rules on the cheap luma frames: a covered or blinded lens, a camera turned
//! away from its view, a lens knocked out of focus (or sprayed).
//!
//! Each condition must hold for `raise_after` before it is raised and be gone for
//! `clear_after` before it clears, so a person passing close to the lens or a light
//! flickering raises nothing and a real problem does not flap. The reference view and focus
//! are learned only from healthy frames and follow slowly, so a tampered view never becomes
//! the reference.

use crate::frame::Luma;
use crate::quality::{Signature, stats};
use std::time::Duration;

/// Thresholds and hold times.
#[derive(Debug, Clone, PartialEq)]
pub struct TamperConfig {
    /// Covered: mean luma below this (a hand, tape)…
    pub dark_below: f32,
    /// …or above this (a torch, a laser pointer)…
    pub bright_above: f32,
    /// …with contrast (luma std-dev) below this: a dark shop at night still has contrast.
    pub flat_below: f32,
    /// Turned away: similarity to the reference view below this.
    pub turned_below: f32,
    /// Defocused: sharpness below this share of the learned focus.
    pub defocus_fraction: f32,
    pub raise_after: Duration,
    pub clear_after: Duration,
    /// Per healthy frame, how far the reference moves to the current view.
    pub learn_rate: f32,
    /// Healthy frames before the reference is trusted.
    pub learn_frames: u32,
}

impl Default for TamperConfig {
    fn default() -> Self {
        TamperConfig {
            dark_below: 25.0,
            bright_above: 235.0,
            flat_below: 10.0,
            turned_below: 0.5,
            defocus_fraction: 0.3,
            raise_after: Duration::from_secs(10),
            clear_after: Duration::from_secs(10),
            learn_rate: 0.02,
            learn_frames: 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TamperKind {
    Covered,
    TurnedAway,
    Defocused,
}

const KINDS: [TamperKind; 3] = [
    TamperKind::Covered,
    TamperKind::TurnedAway,
    TamperKind::Defocused,
];

/// A condition raised or cleared, at the frame that settled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TamperEvent {
    pub kind: TamperKind,
    /// `true` raised, `false` cleared.
    pub raised: bool,
    pub at_ns: i64,
}

/// Time hysteresis: the state follows the condition once it has differed long enough.
#[derive(Debug, Clone, Copy, Default)]
struct Hold {
    active: bool,
    since_ns: Option<i64>,
}

impl Hold {
    fn step(&mut self, condition: bool, at_ns: i64, raise_ns: i64, clear_ns: i64) -> Option<bool> {
        if condition == self.active {
            self.since_ns = None;
            return None;
        }
        let since = *self.since_ns.get_or_insert(at_ns);
        let need = if self.active { clear_ns } else { raise_ns };
        if at_ns.saturating_sub(since) >= need {
            self.active = condition;
            self.since_ns = None;
            return Some(condition);
        }
        None
    }

    fn settled(&self) -> bool {
        !self.active && self.since_ns.is_none()
    }
}

/// One camera's tamper state.
#[derive(Debug, Clone)]
pub struct TamperDetector {
    cfg: TamperConfig,
    reference: Option<Signature>,
    focus: f32,
    learned: u32,
    holds: [Hold; 3],
}

impl TamperDetector {
    pub fn new(cfg: TamperConfig) -> TamperDetector {
        TamperDetector {
            cfg,
            reference: None,
            focus: 0.0,
            learned: 0,
            holds: [Hold::default(); 3],
        }
    }

    pub fn active(&self, kind: TamperKind) -> bool {
        self.holds[kind as usize].active
    }

    /// Forget the reference view and focus, for a camera re-aimed on purpose: learning starts
    /// again from the next healthy frames.
    pub fn relearn(&mut self) {
        self.reference = None;
        self.learned = 0;
        self.holds[TamperKind::TurnedAway as usize] = Hold::default();
        self.holds[TamperKind::Defocused as usize] = Hold::default();
    }

    pub fn update(&mut self, at_ns: i64, f: &Luma) -> Vec<TamperEvent> {
        let c = &self.cfg;
        let st = stats(f);
        let sig = Signature::of(f);
        let covered = (st.brightness < c.dark_below || st.brightness > c.bright_above)
            && st.contrast < c.flat_below;
        // A covered lens also has no layout and no focus: only one cause is reported.
        let trusted = self.learned >= c.learn_frames;
        let turned = !covered
            && trusted
            && self
                .reference
                .as_ref()
                .is_some_and(|r| r.similarity(&sig) < c.turned_below);
        let defocused =
            !covered && !turned && trusted && st.sharpness < c.defocus_fraction * self.focus;

        let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        let (raise, clear) = (ns(c.raise_after), ns(c.clear_after));
        let mut events = Vec::new();
        for (kind, condition) in KINDS.into_iter().zip([covered, turned, defocused]) {
            if let Some(raised) = self.holds[kind as usize].step(condition, at_ns, raise, clear) {
                events.push(TamperEvent {
                    kind,
                    raised,
                    at_ns,
                });
            }
        }

        if self.holds.iter().all(Hold::settled) {
            let rate = c.learn_rate;
            match &mut self.reference {
                Some(r) => {
                    r.blend(&sig, rate);
                    self.focus += (st.sharpness - self.focus) * rate;
                }
                None => {
                    self.reference = Some(sig);
                    self.focus = st.sharpness;
                }
            }
            self.learned = self.learned.saturating_add(1);
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{box_blur, scene};

    const W: usize = 96;
    const H: usize = 64;
    const S: i64 = 1_000_000_000;

    /// Feeds `frame` once a second over `[from, to)` seconds.
    fn feed(d: &mut TamperDetector, frame: &[u8], from: i64, to: i64) -> Vec<TamperEvent> {
        let f = Luma::new(frame, W, H).unwrap();
        (from..to).flat_map(|t| d.update(t * S, &f)).collect()
    }

    fn healthy() -> (TamperDetector, Vec<u8>) {
        let mut d = TamperDetector::new(TamperConfig::default());
        let view = scene(1, W, H);
        assert!(feed(&mut d, &view, 0, 20).is_empty());
        (d, view)
    }

    fn ev(kind: TamperKind, raised: bool, at: i64) -> TamperEvent {
        TamperEvent {
            kind,
            raised,
            at_ns: at * S,
        }
    }

    #[test]
    fn black_frame_is_covered_and_clears_after_the_hold() {
        let (mut d, view) = healthy();
        let black = vec![0u8; W * H];
        assert_eq!(
            feed(&mut d, &black, 20, 40),
            [ev(TamperKind::Covered, true, 30)]
        );
        assert!(d.active(TamperKind::Covered));
        assert_eq!(
            feed(&mut d, &view, 40, 60),
            [ev(TamperKind::Covered, false, 50)]
        );
        // A torch into the lens: as covered.
        let white = vec![255u8; W * H];
        assert_eq!(
            feed(&mut d, &white, 60, 71),
            [ev(TamperKind::Covered, true, 70)]
        );
    }

    #[test]
    fn a_covered_camera_from_the_start_is_covered() {
        let mut d = TamperDetector::new(TamperConfig::default());
        let black = vec![3u8; W * H];
        assert_eq!(
            feed(&mut d, &black, 0, 11),
            [ev(TamperKind::Covered, true, 10)]
        );
    }

    #[test]
    fn another_scene_is_turned_away() {
        let (mut d, _) = healthy();
        let other = scene(2, W, H);
        assert_eq!(
            feed(&mut d, &other, 20, 40),
            [ev(TamperKind::TurnedAway, true, 30)]
        );
        // It never becomes the reference while raised; re-aimed on purpose, it does.
        assert!(feed(&mut d, &other, 40, 200).is_empty());
        d.relearn();
        assert!(feed(&mut d, &other, 200, 260).is_empty());
        assert!(!d.active(TamperKind::TurnedAway));
    }

    #[test]
    fn a_blurred_view_is_defocused() {
        let (mut d, view) = healthy();
        let blurred = box_blur(&view, W, H, 2);
        assert_eq!(
            feed(&mut d, &blurred, 20, 40),
            [ev(TamperKind::Defocused, true, 30)]
        );
        assert_eq!(
            feed(&mut d, &view, 40, 60),
            [ev(TamperKind::Defocused, false, 50)]
        );
    }

    #[test]
    fn brief_flicker_raises_nothing_and_is_not_learned() {
        let (mut d, view) = healthy();
        let black = vec![0u8; W * H];
        let other = scene(2, W, H);
        for round in 0..5 {
            let t = 20 + round * 20;
            assert!(feed(&mut d, &black, t, t + 3).is_empty());
            assert!(feed(&mut d, &other, t + 3, t + 8).is_empty());
            assert!(feed(&mut d, &view, t + 8, t + 20).is_empty());
        }
        // The reference is still the real view.
        assert_eq!(
            feed(&mut d, &other, 120, 131),
            [ev(TamperKind::TurnedAway, true, 130)]
        );
    }
}
