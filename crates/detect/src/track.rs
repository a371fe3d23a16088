//! Stable identities for detections across a camera's frames, with zone stays and the best
//! picture of each person.
//!
//! Greedy matching on overlap and centre distance against a constant-velocity prediction:
//! enough for people at walking speed and a few inferences a second, and with no matrix
//! maths to get wrong. A track only counts a miss when the detector looked where it was
//! expected (the gate may have inferred only crops elsewhere, or nothing).

use crate::geom::{Polygon, Rect};
use crate::model::Detection;

/// Matching and lifetime.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackerConfig {
    /// Overlap with the prediction that allows a match.
    pub min_iou: f32,
    /// Or a centre this close, in diagonals of the predicted box (small fast boxes may not
    /// overlap from one inference to the next).
    pub max_centre_distance: f32,
    /// Sightings before a track is confirmed and reported: one-frame false positives never are.
    pub min_hits: u32,
    /// Searched-but-not-found updates a confirmed track survives (occlusion, a missed frame).
    pub max_missed: u32,
    /// A track not seen for this long ends even if nobody looked (longer than the gate's
    /// full-frame refresh, so people standing still are kept).
    pub max_unseen_ns: i64,
    /// Consecutive sightings outside a zone before leaving it: foot points jitter at the edge.
    pub zone_exit_after: u32,
    /// Sharpness at which the best-shot weight is one half (see [`BestShot::quality`]).
    pub sharpness_half: f32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            min_iou: 0.1,
            max_centre_distance: 1.0,
            min_hits: 3,
            max_missed: 5,
            max_unseen_ns: 60_000_000_000,
            zone_exit_after: 2,
            sharpness_half: 100.0,
        }
    }
}

/// A detection and, where the caller measured it, the sharpness of its region of the frame
/// ([`crate::quality::sharpness`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sighting {
    pub detection: Detection,
    pub sharpness: Option<f32>,
}

impl From<Detection> for Sighting {
    fn from(detection: Detection) -> Self {
        Sighting {
            detection,
            sharpness: None,
        }
    }
}

/// The picture to keep of a track: the sighting with the highest quality.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BestShot {
    /// The caller's frame number.
    pub frame: u64,
    pub at_ns: i64,
    pub rect: Rect,
    pub score: f32,
    pub sharpness: Option<f32>,
    /// `score × √area × s / (s + sharpness_half)`: confident, large and crisp wins; unknown
    /// sharpness weighs one half. √area so a near person does not always beat a sharp one.
    pub quality: f32,
}

/// A track's stay in one zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZoneStay {
    pub inside: bool,
    /// When the current visit began.
    pub entered_ns: Option<i64>,
    /// Of visits already over.
    pub past_dwell_ns: i64,
    outside_run: u32,
    left_ns: i64,
}

/// One tracked object.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub id: u64,
    pub class: usize,
    /// Last seen box, frame pixels.
    pub rect: Rect,
    pub score: f32,
    pub first_seen_ns: i64,
    pub last_seen_ns: i64,
    pub hits: u32,
    pub missed: u32,
    pub confirmed: bool,
    /// Zone stays, in the order of the tracker's zones.
    pub zones: Vec<ZoneStay>,
    pub best: Option<BestShot>,
    /// Pixels per second.
    velocity: (f32, f32),
}

impl Track {
    /// Where the track should be at `at_ns`, at its last velocity.
    pub fn predicted(&self, at_ns: i64) -> Rect {
        // Past a second unseen, a velocity says little about where someone went.
        let dt = ((at_ns - self.last_seen_ns) as f32 / 1e9).min(1.0);
        let (dx, dy) = (self.velocity.0 * dt, self.velocity.1 * dt);
        Rect::new(
            self.rect.x0 + dx,
            self.rect.y0 + dy,
            self.rect.x1 + dx,
            self.rect.y1 + dy,
        )
    }

    pub fn in_zone(&self, zone: usize) -> bool {
        self.zones.get(zone).is_some_and(|z| z.inside)
    }

    /// Time spent in the zone over all visits, up to the last sighting.
    pub fn dwell_ns(&self, zone: usize) -> i64 {
        self.zones.get(zone).map_or(0, |z| {
            z.past_dwell_ns
                + z.entered_ns
                    .filter(|_| z.inside)
                    .map_or(0, |e| self.last_seen_ns - e)
        })
    }
}

/// What changed in one update. Only confirmed tracks are reported.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackEvent {
    Confirmed {
        id: u64,
        at_ns: i64,
    },
    /// `at_ns`: the first sighting inside (which may precede confirmation).
    Entered {
        id: u64,
        zone: usize,
        at_ns: i64,
    },
    /// `at_ns`: the first sighting outside; `dwell_ns`: the visit's length.
    Exited {
        id: u64,
        zone: usize,
        at_ns: i64,
        dwell_ns: i64,
    },
    /// The track's final state.
    Ended(Box<Track>),
}

/// One inference's result for the tracker.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub at_ns: i64,
    pub index: u64,
    pub sightings: &'a [Sighting],
    /// Regions (frame pixels) the detector ran on: tracks expected elsewhere are not missed.
    pub searched: &'a [Rect],
}

/// Tracks of one camera.
#[derive(Debug, Clone)]
pub struct Tracker {
    cfg: TrackerConfig,
    frame_w: f32,
    frame_h: f32,
    zones: Vec<Polygon>,
    tracks: Vec<Track>,
    next_id: u64,
}

impl Tracker {
    /// `frame_w`x`frame_h`: the frame the detections' pixels refer to; `zones` normalised.
    pub fn new(cfg: TrackerConfig, frame_w: f32, frame_h: f32, zones: Vec<Polygon>) -> Tracker {
        Tracker {
            cfg,
            frame_w,
            frame_h,
            zones,
            tracks: Vec::new(),
            next_id: 1,
        }
    }

    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    pub fn update(&mut self, f: &Frame) -> Vec<TrackEvent> {
        let mut events = Vec::new();
        let sightings: Vec<&Sighting> = f
            .sightings
            .iter()
            .filter(|s| {
                s.detection.rect.is_finite()
                    && s.detection.rect.area() > 0.0
                    && s.detection.score.is_finite()
            })
            .collect();

        // Every allowed pair, best affinity first, taken greedily.
        let mut pairs = Vec::new();
        for (ti, t) in self.tracks.iter().enumerate() {
            // Where the velocity says, or where they were: someone who stopped or turned
            // round is near the second, not the first.
            let pred = t.predicted(f.at_ns);
            let reach = pred.diagonal().max(1.0) * self.cfg.max_centre_distance;
            for (si, s) in sightings.iter().enumerate() {
                if s.detection.class != t.class {
                    continue;
                }
                let (sx, sy) = s.detection.rect.centre();
                let score = |r: &Rect| {
                    let (px, py) = r.centre();
                    let iou = r.iou(&s.detection.rect);
                    let near = 1.0 - (sx - px).hypot(sy - py) / reach;
                    (iou >= self.cfg.min_iou || near >= 0.0).then(|| iou + 0.5 * near.max(0.0))
                };
                let best = match (score(&pred), score(&t.rect)) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                if let Some(a) = best {
                    pairs.push((a, ti, si));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut track_taken = vec![false; self.tracks.len()];
        let mut sighting_taken = vec![false; sightings.len()];
        for (_, ti, si) in pairs {
            if track_taken[ti] || sighting_taken[si] {
                continue;
            }
            track_taken[ti] = true;
            sighting_taken[si] = true;
            self.observe(ti, sightings[si], f, &mut events);
        }

        // Misses, and the end of tracks.
        let mut kept = Vec::with_capacity(self.tracks.len());
        for (ti, mut t) in std::mem::take(&mut self.tracks).into_iter().enumerate() {
            if !track_taken[ti] {
                let (cx, cy) = t.predicted(f.at_ns).centre();
                if f.searched
                    .iter()
                    .any(|r| r.x0 <= cx && cx < r.x1 && r.y0 <= cy && cy < r.y1)
                {
                    t.missed += 1;
                }
            }
            let allowed = if t.confirmed { self.cfg.max_missed } else { 0 };
            let lost = t.missed > allowed
                || f.at_ns.saturating_sub(t.last_seen_ns) > self.cfg.max_unseen_ns;
            if !lost {
                kept.push(t);
            } else if t.confirmed {
                end(t, &mut events);
            }
        }
        self.tracks = kept;

        for (si, s) in sightings.iter().enumerate() {
            if sighting_taken[si] {
                continue;
            }
            let d = s.detection;
            self.tracks.push(Track {
                id: self.next_id,
                class: d.class,
                rect: d.rect,
                score: d.score,
                first_seen_ns: f.at_ns,
                last_seen_ns: f.at_ns,
                hits: 0,
                missed: 0,
                confirmed: false,
                zones: vec![ZoneStay::default(); self.zones.len()],
                best: None,
                velocity: (0.0, 0.0),
            });
            self.next_id += 1;
            let ti = self.tracks.len() - 1;
            self.observe(ti, s, f, &mut events);
        }
        events
    }

    /// Ends every confirmed track (the stream stopped): their exits and ends.
    pub fn finish(&mut self) -> Vec<TrackEvent> {
        let mut events = Vec::new();
        for t in std::mem::take(&mut self.tracks) {
            if t.confirmed {
                end(t, &mut events);
            }
        }
        events
    }

    fn observe(&mut self, ti: usize, s: &Sighting, f: &Frame, events: &mut Vec<TrackEvent>) {
        let cfg = &self.cfg;
        let t = &mut self.tracks[ti];
        let d = s.detection;
        let dt = (f.at_ns - t.last_seen_ns) as f32 / 1e9;
        if t.hits > 0 && dt > 0.0 {
            let (ox, oy) = t.rect.centre();
            let (nx, ny) = d.rect.centre();
            let v = ((nx - ox) / dt, (ny - oy) / dt);
            // Half old, half new: smooths detector jitter but turns within a step or two.
            t.velocity = if t.hits == 1 {
                v
            } else {
                ((t.velocity.0 + v.0) * 0.5, (t.velocity.1 + v.1) * 0.5)
            };
        }
        t.rect = d.rect;
        t.score = d.score;
        t.last_seen_ns = f.at_ns;
        t.hits += 1;
        t.missed = 0;

        let sharp_w = match s.sharpness {
            Some(v) if v > 0.0 && v.is_finite() => {
                v / (v + cfg.sharpness_half.max(f32::MIN_POSITIVE))
            }
            Some(_) => 0.0,
            None => 0.5,
        };
        let quality = d.score * d.rect.area().sqrt() * sharp_w;
        if t.best.is_none_or(|b| quality > b.quality) {
            t.best = Some(BestShot {
                frame: f.index,
                at_ns: f.at_ns,
                rect: d.rect,
                score: d.score,
                sharpness: s.sharpness,
                quality,
            });
        }

        let newly_confirmed = !t.confirmed && t.hits >= cfg.min_hits;
        if newly_confirmed {
            t.confirmed = true;
            events.push(TrackEvent::Confirmed {
                id: t.id,
                at_ns: f.at_ns,
            });
        }
        let foot = d.rect.normalise(self.frame_w, self.frame_h);
        for (zi, zone) in self.zones.iter().enumerate() {
            let z = &mut t.zones[zi];
            let was_inside = z.inside;
            if zone.holds(&foot) {
                z.outside_run = 0;
                if !z.inside {
                    z.inside = true;
                    z.entered_ns = Some(f.at_ns);
                }
            } else if z.inside {
                z.outside_run += 1;
                if z.outside_run == 1 {
                    z.left_ns = f.at_ns;
                }
                if z.outside_run >= cfg.zone_exit_after {
                    let visit = z.left_ns - z.entered_ns.unwrap_or(z.left_ns);
                    z.inside = false;
                    z.past_dwell_ns += visit;
                    z.outside_run = 0;
                    if t.confirmed {
                        events.push(TrackEvent::Exited {
                            id: t.id,
                            zone: zi,
                            at_ns: z.left_ns,
                            dwell_ns: visit,
                        });
                    }
                }
            }
            // Entries of a track not yet confirmed are reported when it is, with their time.
            if t.confirmed && z.inside && (!was_inside || newly_confirmed) {
                events.push(TrackEvent::Entered {
                    id: t.id,
                    zone: zi,
                    at_ns: z.entered_ns.unwrap_or(f.at_ns),
                });
            }
        }
    }
}

/// A confirmed track's last events: leaving its zones when last seen, then its end.
fn end(mut t: Track, events: &mut Vec<TrackEvent>) {
    for (zi, z) in t.zones.iter_mut().enumerate() {
        if z.inside {
            let visit = t.last_seen_ns - z.entered_ns.unwrap_or(t.last_seen_ns);
            z.inside = false;
            z.past_dwell_ns += visit;
            events.push(TrackEvent::Exited {
                id: t.id,
                zone: zi,
                at_ns: t.last_seen_ns,
                dwell_ns: visit,
            });
        }
    }
    events.push(TrackEvent::Ended(Box::new(t)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PERSON;

    const MS: i64 = 1_000_000;
    const W: f32 = 640.0;
    const H: f32 = 480.0;
    const WHOLE: [Rect; 1] = [Rect::new(0.0, 0.0, W, H)];

    fn person(x: f32, y: f32) -> Sighting {
        Detection {
            rect: Rect::from_xywh(x, y, 40.0, 100.0),
            score: 0.8,
            class: PERSON,
        }
        .into()
    }

    fn step(t: &mut Tracker, i: i64, sightings: &[Sighting]) -> Vec<TrackEvent> {
        t.update(&Frame {
            at_ns: i * 100 * MS,
            index: i as u64,
            sightings,
            searched: &WHOLE,
        })
    }

    fn id_at(t: &Tracker, x: f32, y: f32) -> u64 {
        t.tracks()
            .iter()
            .find(|t| (t.rect.x0 - x).abs() < 1.0 && (t.rect.y0 - y).abs() < 1.0)
            .unwrap()
            .id
    }

    #[test]
    fn a_walker_who_turns_round_keeps_their_id() {
        let mut t = Tracker::new(TrackerConfig::default(), W, H, vec![]);
        // Fast to the right for a while, then back: the velocity points the wrong way.
        let x = |i: i64| {
            if i <= 6 {
                100.0 + 30.0 * i as f32
            } else {
                280.0 - 30.0 * (i - 6) as f32
            }
        };
        step(&mut t, 0, &[person(x(0), 200.0)]);
        let id = id_at(&t, x(0), 200.0);
        for i in 1..8 {
            step(&mut t, i, &[person(x(i), 200.0)]);
            assert_eq!(t.tracks().len(), 1, "step {i}");
            assert_eq!(id_at(&t, x(i), 200.0), id, "step {i}");
        }
    }

    #[test]
    fn two_crossing_walkers_keep_their_ids() {
        let mut t = Tracker::new(TrackerConfig::default(), W, H, vec![]);
        // A walks right, B walks left, a little lower; they cross at step 12.
        let a = |i: i64| 50.0 + 20.0 * i as f32;
        let b = |i: i64| 530.0 - 20.0 * i as f32;
        step(&mut t, 0, &[person(a(0), 200.0), person(b(0), 215.0)]);
        let (ida, idb) = (id_at(&t, a(0), 200.0), id_at(&t, b(0), 215.0));
        assert_ne!(ida, idb);
        for i in 1..25 {
            // Listed in both orders, so the result does not hang on input order.
            let s = [person(a(i), 200.0), person(b(i), 215.0)];
            let s2 = [s[1], s[0]];
            step(&mut t, i, if i % 2 == 0 { &s } else { &s2 });
            assert_eq!(t.tracks().len(), 2, "step {i}");
            assert_eq!(id_at(&t, a(i), 200.0), ida, "step {i}");
            assert_eq!(id_at(&t, b(i), 215.0), idb, "step {i}");
        }
        assert!(
            t.tracks()
                .iter()
                .all(|t| t.confirmed && t.first_seen_ns == 0)
        );
    }

    #[test]
    fn a_track_lost_past_max_missed_ends_and_a_flash_never_confirms() {
        let mut t = Tracker::new(TrackerConfig::default(), W, H, vec![]);
        let mut events = Vec::new();
        for i in 0..5 {
            events.extend(step(&mut t, i, &[person(100.0, 100.0)]));
        }
        assert!(matches!(events[0], TrackEvent::Confirmed { id: 1, at_ns } if at_ns == 200 * MS));
        // Missed 5 times: still there (occlusion). The sixth ends it.
        for i in 5..10 {
            assert!(step(&mut t, i, &[]).is_empty());
        }
        assert_eq!(t.tracks().len(), 1);
        let e = step(&mut t, 10, &[]);
        let [TrackEvent::Ended(end)] = e.as_slice() else {
            panic!("{e:?}")
        };
        assert_eq!(
            (end.id, end.first_seen_ns, end.last_seen_ns, end.hits),
            (1, 0, 400 * MS, 5)
        );
        assert!(t.tracks().is_empty());
        // One sighting, then nothing: never confirmed, never reported.
        step(&mut t, 11, &[person(300.0, 100.0)]);
        assert!(step(&mut t, 12, &[]).is_empty());
        assert!(t.tracks().is_empty());
    }

    #[test]
    fn a_track_nobody_looked_for_is_kept_until_max_unseen() {
        let mut t = Tracker::new(TrackerConfig::default(), W, H, vec![]);
        for i in 0..3 {
            step(&mut t, i, &[person(100.0, 100.0)]);
        }
        // The detector only ran on a crop at the other side: not a miss.
        let elsewhere = [Rect::new(400.0, 0.0, 640.0, 480.0)];
        for i in 3..20 {
            t.update(&Frame {
                at_ns: i * 100 * MS,
                index: i as u64,
                sightings: &[],
                searched: &elsewhere,
            });
        }
        assert_eq!(t.tracks()[0].missed, 0);
        let e = t.update(&Frame {
            at_ns: 200 * MS + 61_000 * MS,
            index: 99,
            sightings: &[],
            searched: &[],
        });
        assert!(matches!(e.as_slice(), [TrackEvent::Ended(_)]));
    }

    #[test]
    fn zone_entry_exit_and_dwell() {
        // The zone: the left half of the picture.
        let left = Polygon::new(vec![[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]).unwrap();
        let mut t = Tracker::new(TrackerConfig::default(), W, H, vec![left]);
        let mut events = Vec::new();
        // Walks right 20 px a step from x=200 (foot at 220): crosses 320 at step 5.
        for i in 0..12 {
            events.extend(step(&mut t, i, &[person(200.0 + 20.0 * i as f32, 300.0)]));
        }
        let zone_events: Vec<_> = events
            .iter()
            .filter(|e| !matches!(e, TrackEvent::Confirmed { .. }))
            .collect();
        // Entered reported at confirmation (step 2) with the first sighting's time; exited at
        // the first sighting outside (step 5, foot 320 is not < 320), after two outside.
        assert_eq!(
            zone_events,
            [
                &TrackEvent::Entered {
                    id: 1,
                    zone: 0,
                    at_ns: 0
                },
                &TrackEvent::Exited {
                    id: 1,
                    zone: 0,
                    at_ns: 500 * MS,
                    dwell_ns: 500 * MS
                },
            ]
        );
        assert_eq!(t.tracks()[0].dwell_ns(0), 500 * MS);
        assert!(!t.tracks()[0].in_zone(0));
        // Flicker across the edge for one sighting does not leave the zone.
        let mut t = Tracker::new(TrackerConfig::default(), W, H, t.zones.clone());
        let mut events = Vec::new();
        for (i, x) in [100.0, 100.0, 100.0, 300.0, 290.0, 100.0]
            .into_iter()
            .enumerate()
        {
            events.extend(step(&mut t, i as i64, &[person(x, 300.0)]));
        }
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, TrackEvent::Exited { .. })),
            "{events:?}"
        );
        assert_eq!(t.tracks()[0].dwell_ns(0), 500 * MS);
        // The end closes the stay.
        let e = t.finish();
        assert!(matches!(e[0], TrackEvent::Exited { dwell_ns, .. } if dwell_ns == 500 * MS));
        assert!(matches!(e[1], TrackEvent::Ended(_)));
    }

    #[test]
    fn best_shot_weighs_score_size_and_sharpness() {
        let mut t = Tracker::new(TrackerConfig::default(), W, H, vec![]);
        let shot = |score: f32, size: f32, sharpness: Option<f32>| Sighting {
            detection: Detection {
                rect: Rect::from_xywh(100.0, 100.0, size * 0.4, size),
                score,
                class: PERSON,
            },
            sharpness,
        };
        step(&mut t, 0, &[shot(0.6, 100.0, Some(50.0))]);
        step(&mut t, 1, &[shot(0.9, 100.0, Some(50.0))]); // more confident: better
        step(&mut t, 2, &[shot(0.9, 110.0, Some(5.0))]); // larger but blurred: worse
        step(&mut t, 3, &[shot(f32::NAN, 100.0, Some(500.0))]); // NaN score: ignored
        step(&mut t, 4, &[shot(0.9, 100.0, Some(f32::NAN))]); // NaN sharpness: worthless
        let best = t.tracks()[0].best.unwrap();
        assert_eq!((best.frame, best.score), (1, 0.9));
        step(&mut t, 5, &[shot(0.85, 100.0, Some(400.0))]); // much sharper: better
        assert_eq!(t.tracks()[0].best.unwrap().frame, 5);
    }

    #[test]
    fn classes_do_not_match_each_other() {
        let mut t = Tracker::new(TrackerConfig::default(), W, H, vec![]);
        let mut bag = person(100.0, 100.0);
        bag.detection.class = 24;
        step(&mut t, 0, &[person(100.0, 100.0)]);
        step(&mut t, 1, &[bag]);
        assert_eq!(t.tracks().len(), 1);
        assert_eq!(t.tracks()[0].class, 24);
    }
}
