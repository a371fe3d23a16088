//! Maps a camera's media time (GStreamer running time) to UTC.
//!
//! The mapping is anchored once and then follows media time, so frame times stay
//! smooth and monotonic. Each frame's arrival-based UTC estimate is compared with the
//! mapping; if they drift apart by more than `max_drift` (box clock stepped, camera
//! clock skewed, long stall) we re-anchor and report the step for the log.

#[derive(Debug, Clone)]
pub struct Timeline {
    anchor: Option<(i64, i64)>,
    last_dts_utc: i64,
    max_drift_ns: i64,
    pub steps: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    pub pts_utc: i64,
    pub dts_utc: Option<i64>,
    /// Set when this frame re-anchored the mapping: the size of the step in ns.
    pub step_ns: Option<i64>,
}

impl Timeline {
    pub fn new(max_drift_ns: i64) -> Self {
        Timeline {
            anchor: None,
            last_dts_utc: i64::MIN,
            max_drift_ns,
            steps: 0,
        }
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
                (reference, est_utc)
            }
            Some((rt, utc)) => {
                let predicted = utc + (reference - rt);
                let drift = est_utc - predicted;
                if drift.abs() > self.max_drift_ns {
                    self.anchor = Some((reference, est_utc));
                    self.steps += 1;
                    step = Some(drift);
                    (reference, est_utc)
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
        Mapped {
            pts_utc: pts + off,
            dts_utc: dts.map(|d| d + off),
            step_ns: step,
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
        // Box clock stepped back 10 s: re-anchor, but never behind the last frame.
        let m = t.map(100 * MS, Some(100 * MS), base - 10_000 * MS);
        assert!(m.step_ns.unwrap() < 0);
        assert!(m.dts_utc.unwrap() > base);
        // Forward step of 3 s is taken as is.
        let m = t.map(200 * MS, Some(200 * MS), base + 3_200 * MS);
        assert_eq!(m.dts_utc, Some(base + 3_200 * MS));
        assert_eq!(t.steps, 2);
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
