//! Maps a camera's media time (GStreamer running time) to UTC.
//!
//! The mapping is anchored once and then follows media time, so frame times stay
//! smooth and monotonic. Each frame's arrival-based UTC estimate is compared with the
//! mapping; if they stay apart by more than `max_drift` for a second of media time (box
//! clock stepped, camera clock skewed, long stall) we re-anchor and report the step for
//! the log. A single late frame is arrival jitter, not a step: on a busy box frames
//! arrive hundreds of milliseconds late, and re-anchoring on each would squeeze time.
//!
//! A step of the box clock itself is known exactly (the time keeper publishes each
//! epoch of the box clock, `storeguard_base::clock::box_clock`): it is not left to the
//! drift check. Estimates from box time are compared on the anchor's epoch until the
//! next keyframe; there the time line moves by the step at once, and the writer starts
//! a segment on the new epoch (`Mapped::rebase`). So a step never squeezes, gaps or
//! reorders frames, and each segment is on one clock (docs/time.md).

use storeguard_base::clock::BoxClock;

#[derive(Debug, Clone)]
pub struct Timeline {
    anchor: Option<(i64, i64)>,
    last_dts_utc: i64,
    max_drift_ns: i64,
    /// Running time at which the current run of out-of-bounds estimates began.
    excursion_since: Option<i64>,
    pub steps: u64,
    /// The box clock epoch (id, base offset) the anchor is on.
    epoch: Option<(i64, i64)>,
    /// The anchor came from box time (arrival), not the camera's clock.
    anchor_box: bool,
    /// Whether the estimate being mapped is box time.
    est_box: bool,
    /// The epoch the rows are on, as last told to the writer.
    rows_epoch: i64,
    /// A backward correction still to take, in ns (≤ 0), and the last frame's media time.
    slew_ns: i64,
    last_reference: i64,
}

/// A backward correction is taken at 1/8 of the media time (12.5 %): at 15 fps, frames
/// 58 ms apart instead of 67 ms, 125 ms a second.
const SLEW_DIVISOR: i64 = 8;

/// How long estimates must disagree with the mapping before it is re-anchored.
const STEP_CONFIRM_NS: i64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    pub pts_utc: i64,
    pub dts_utc: Option<i64>,
    /// Set when this frame re-anchored the mapping: the size of the step in ns.
    pub step_ns: Option<i64>,
    /// Set when this frame is the first on a box clock epoch: (epoch, how far the time
    /// line moved), for `SegmentWriter::rebase`.
    pub rebase: Option<(i64, i64)>,
}

impl Timeline {
    pub fn new(max_drift_ns: i64) -> Self {
        Timeline {
            anchor: None,
            last_dts_utc: i64::MIN,
            max_drift_ns,
            excursion_since: None,
            steps: 0,
            epoch: None,
            anchor_box: true,
            est_box: true,
            rows_epoch: i64::MIN,
            slew_ns: 0,
            last_reference: 0,
        }
    }

    /// Like [`map`](Self::map), on the box clock `clock`. `box_time`: the estimate
    /// comes from the box clock (arrival), not the camera's own clock. A new epoch is
    /// taken at a keyframe (or the first frame); the time line moves with the box
    /// clock's step only if its anchor came from box time.
    pub fn map_on(
        &mut self,
        pts: i64,
        dts: Option<i64>,
        est_utc: i64,
        box_time: bool,
        keyframe: bool,
        clock: BoxClock,
    ) -> Mapped {
        let pending = match self.epoch {
            Some((id, base)) if id != clock.epoch => clock.base_ns - base,
            _ => 0,
        };
        let switch =
            self.epoch.map(|e| e.0) != Some(clock.epoch) && (keyframe || self.anchor.is_none());
        let mut moved = 0;
        let est = if switch {
            if self.anchor.is_some() && self.anchor_box {
                moved = pending;
                if let Some(a) = self.anchor.as_mut() {
                    a.1 += moved;
                }
                if self.last_dts_utc != i64::MIN {
                    self.last_dts_utc += moved;
                }
            }
            self.excursion_since = None;
            self.epoch = Some((clock.epoch, clock.base_ns));
            est_utc
        } else if box_time {
            // Until the switch, box time is compared on the anchor's epoch.
            est_utc - pending
        } else {
            est_utc
        };
        self.est_box = box_time;
        let mut m = self.map(pts, dts, est);
        // Rows are on the box clock's epoch only while the anchor came from box time;
        // a line anchored on the camera's clock never moves with the box clock (0).
        let rows = if self.anchor_box {
            self.epoch.map_or(0, |e| e.0)
        } else {
            0
        };
        if switch || rows != self.rows_epoch {
            self.rows_epoch = rows;
            m.rebase = Some((rows, moved));
        }
        m
    }

    /// Forget the anchor (new connection: the camera's running time restarts).
    pub fn reset(&mut self) {
        self.anchor = None;
    }

    /// `pts`/`dts`: running time in ns; `est_utc`: wall-clock estimate for `dts` (or
    /// `pts` when there is no dts), from arrival time or the camera's NTP mapping.
    pub fn map(&mut self, pts: i64, dts: Option<i64>, est_utc: i64) -> Mapped {
        let reference = dts.unwrap_or(pts);
        let mut step = None;
        let (rt, utc) = match self.anchor {
            None => {
                self.anchor = Some((reference, est_utc));
                self.anchor_box = self.est_box;
                (reference, est_utc)
            }
            Some((rt, mut utc)) => {
                if self.slew_ns < 0 {
                    // Slewing back: at most 1/8 of the media time since the last frame.
                    let since = (reference - self.last_reference).max(0);
                    let take = self.slew_ns.max(-(since / SLEW_DIVISOR));
                    self.slew_ns -= take;
                    utc += take;
                    self.anchor = Some((rt, utc));
                }
                let predicted = utc + (reference - rt);
                // Compared with where the time line is heading, slew included.
                let drift = est_utc - (predicted + self.slew_ns);
                if drift.abs() <= self.max_drift_ns {
                    self.excursion_since = None;
                    (rt, utc)
                } else if reference - *self.excursion_since.get_or_insert(reference)
                    >= STEP_CONFIRM_NS
                {
                    self.anchor_box = self.est_box;
                    self.excursion_since = None;
                    self.steps += 1;
                    step = Some(drift);
                    if drift < 0 {
                        // Decode time cannot go back: the time line slews onto the
                        // estimates instead of stepping, so frames stay evenly spaced
                        // (never 1 ms apart, as a step back once placed them).
                        self.slew_ns += drift;
                        (rt, utc)
                    } else {
                        self.slew_ns = 0;
                        self.anchor = Some((reference, est_utc));
                        (reference, est_utc)
                    }
                } else {
                    (rt, utc)
                }
            }
        };
        let mut off = utc - rt;
        // Decode time never goes backwards, even across a backwards clock step.
        let dts_utc = reference + off;
        if dts_utc <= self.last_dts_utc {
            let fix = self.last_dts_utc + 1_000_000 - dts_utc;
            off += fix;
            if let Some(a) = self.anchor.as_mut() {
                a.1 += fix;
            }
        }
        self.last_dts_utc = reference + off;
        self.last_reference = reference;
        Mapped {
            pts_utc: pts + off,
            dts_utc: dts.map(|d| d + off),
            step_ns: step,
            rebase: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const MS: i64 = 1_000_000;

    #[test]
    fn follows_media_time_despite_jitter() {
        let mut t = Timeline::new(500 * MS);
        let base = 1_700_000_000_000 * MS;
        let a = t.map(0, None, base);
        assert_eq!(a.pts_utc, base);
        // 40 ms of arrival jitter does not move frame times.
        let b = t.map(66 * MS, None, base + 106 * MS);
        assert_eq!(b.pts_utc, base + 66 * MS);
        assert_eq!(b.step_ns, None);
    }

    #[test]
    fn steps_are_reported_and_time_stays_monotonic() {
        let mut t = Timeline::new(500 * MS);
        let base = 1_700_000_000_000 * MS;
        t.map(0, Some(0), base);
        // Box clock stepped back 10 s: confirmed after a second, re-anchored, but never
        // behind the last frame.
        let mut last = None;
        for i in 1..=12 {
            let rt = i * 100 * MS;
            let m = t.map(rt, Some(rt), base - 10_000 * MS + rt);
            if i < 11 {
                assert_eq!(m.step_ns, None, "frame {i}");
            }
            last = last.or(m.step_ns.map(|_| m));
        }
        let m = last.expect("step reported");
        assert!(m.step_ns.unwrap() < 0);
        assert!(m.dts_utc.unwrap() > base);
        // A forward step of 3 s is taken as is, once confirmed.
        let mut stepped = None;
        for i in 13..=30 {
            let rt = i * 100 * MS;
            let m = t.map(rt, Some(rt), base + 3_000 * MS + rt);
            stepped = stepped.or(m.step_ns.map(|_| (rt, m)));
        }
        let (rt, m) = stepped.expect("forward step");
        assert_eq!(m.dts_utc, Some(base + 3_000 * MS + rt));
        assert_eq!(t.steps, 2);
    }

    #[test]
    fn a_burst_of_late_frames_is_jitter_not_a_step() {
        let mut t = Timeline::new(500 * MS);
        let base = 1_700_000_000_000 * MS;
        t.map(0, Some(0), base);
        // Frames 1..5 arrive 800 ms late (box busy), then on time again.
        for i in 1..=5 {
            let rt = i * 66 * MS;
            assert_eq!(
                t.map(rt, Some(rt), base + rt + 800 * MS).dts_utc,
                Some(base + rt)
            );
        }
        let rt = 6 * 66 * MS;
        assert_eq!(t.map(rt, Some(rt), base + rt).dts_utc, Some(base + rt));
        assert_eq!(t.steps, 0);
    }

    #[test]
    fn a_late_first_frame_after_a_reconnect_is_slewed_back_never_squeezed() {
        const F: i64 = 66_666_667;
        let mut t = Timeline::new(500 * MS);
        let base = 1_700_000_000_000 * MS;
        // The first frame of a new session arrives 900 ms late (a loaded box); the
        // camera's clock then says where frames really are.
        let mut last = t.map(0, None, base + 900 * MS).pts_utc;
        let mut steps = 0;
        for i in 1..300 {
            let rt = i * F;
            let m = t.map(rt, None, base + rt);
            let d = m.pts_utc - last;
            assert!(
                (F - F / SLEW_DIVISOR - 1..=F).contains(&d),
                "frame {i}: {d} ns after the last"
            );
            steps += m.step_ns.is_some() as u32;
            last = m.pts_utc;
        }
        assert_eq!(steps, 1, "one backward correction, not one a second");
        assert_eq!(last, base + 299 * F, "the time line has caught up");
    }

    fn epoch(id: i64, base: i64) -> BoxClock {
        BoxClock {
            epoch: id,
            base_ns: base,
            synced: id > 1,
            error_ns: None,
            offset_ns: base,
        }
    }

    #[test]
    fn a_box_clock_step_moves_the_time_line_at_the_next_keyframe() {
        const F: i64 = 66_666_667;
        let mut t = Timeline::new(500 * MS);
        let boot = 10_000 * MS; // 1970-01-01T00:00:10Z
        let step = 1_764_600_000_000 * MS - boot;
        let first = t.map_on(0, None, boot, true, true, epoch(1, boot));
        assert_eq!(
            first.rebase,
            Some((1, 0)),
            "the first frame names its epoch"
        );
        let mut last = first.pts_utc;
        let mut rebased = None;
        for i in 1..60 {
            let rt = i * F;
            // The clock steps at frame 20 (arrival jumps at once); the time keeper
            // publishes it at frame 22; the GOP is 30 frames.
            let arrival = boot + rt + if i >= 20 { step } else { 0 };
            let clock = if i >= 22 {
                epoch(2, boot + step)
            } else {
                epoch(1, boot)
            };
            let m = t.map_on(rt, None, arrival, true, i % 30 == 0, clock);
            assert_eq!(m.step_ns, None, "frame {i}: no drift re-anchor");
            let expect = if m.rebase.is_some() || rebased.is_some() {
                boot + step + rt
            } else {
                boot + rt
            };
            assert_eq!(m.pts_utc, expect, "frame {i}");
            if let Some(r) = m.rebase {
                assert_eq!((i, r), (30, (2, step)));
                rebased = Some(i);
            } else {
                assert_eq!(m.pts_utc - last, F, "frame {i}: evenly spaced");
            }
            last = m.pts_utc;
        }
        assert_eq!(rebased, Some(30));
        assert_eq!(t.steps, 0);
    }

    #[test]
    fn a_camera_clock_time_line_does_not_move_with_the_box_clock() {
        let mut t = Timeline::new(500 * MS);
        let base = 1_700_000_000_000 * MS;
        t.map_on(0, None, base, false, true, epoch(1, 0));
        let m = t.map_on(
            100 * MS,
            None,
            base + 100 * MS,
            false,
            true,
            epoch(2, 300 * MS),
        );
        assert_eq!(
            m.rebase,
            Some((0, 0)),
            "rows on the camera's clock: no epoch"
        );
        assert_eq!(m.pts_utc, base + 100 * MS);
    }

    #[test]
    fn b_frames_keep_their_pts_order() {
        let mut t = Timeline::new(500 * MS);
        let base = 1_700_000_000_000 * MS;
        let i = t.map(100 * MS, Some(0), base);
        let p = t.map(300 * MS, Some(66 * MS), base + 66 * MS);
        let b = t.map(166 * MS, Some(133 * MS), base + 133 * MS);
        assert!(i.pts_utc < b.pts_utc && b.pts_utc < p.pts_utc);
    }
}
