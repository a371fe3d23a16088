//! Events from tracks: a person in a zone, loitering there, anyone in the store while it is
//! closed. Each fires once per track (and zone), so a person standing in view for an hour is
//! one event, not one per frame.

use crate::geom::{Polygon, Rect};
use crate::model::PERSON;
use crate::track::Track;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::Duration;
use thiserror::Error;

/// Which objects a rule counts, by their latest sighting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectFilter {
    pub min_score: f32,
    /// Box area as a share of the frame (0–1), so one setting serves any resolution: a tiny
    /// box is far away or a poster; a huge one is someone at the lens or a false positive.
    pub min_area: f32,
    pub max_area: f32,
}

impl Default for ObjectFilter {
    fn default() -> Self {
        ObjectFilter {
            min_score: 0.5,
            min_area: 0.0,
            max_area: 1.0,
        }
    }
}

impl ObjectFilter {
    /// `rect` in frame pixels of a `frame_w`x`frame_h` frame.
    pub fn passes(&self, score: f32, rect: &Rect, frame_w: f32, frame_h: f32) -> bool {
        let area = rect.normalise(frame_w, frame_h).area();
        score >= self.min_score && area >= self.min_area && area <= self.max_area
    }

    fn check(&self) -> Result<(), String> {
        let unit = |v: f32| (0.0..=1.0).contains(&v);
        if !unit(self.min_score) {
            return Err(format!("min_score {} is outside 0–1", self.min_score));
        }
        if !unit(self.min_area) || !unit(self.max_area) {
            return Err(format!(
                "min_area {} and max_area {} must be shares of the frame, 0–1",
                self.min_area, self.max_area
            ));
        }
        if self.min_area > self.max_area {
            return Err(format!(
                "min_area {} is above max_area {}",
                self.min_area, self.max_area
            ));
        }
        Ok(())
    }
}

/// One zone of a camera.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// Goes into events and topics: 1–64 of `A–Z a–z 0–9 - _`.
    pub name: String,
    /// Normalised `[[x, y], …]`; a person is in the zone when their feet are.
    pub polygon: Polygon,
    #[serde(default)]
    pub filter: ObjectFilter,
    /// A person in the zone longer than this is loitering (`"90s"`, `"2m"`); absent: never.
    #[serde(
        default,
        with = "duration_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub loiter_after: Option<Duration>,
}

/// A camera's rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    #[serde(default)]
    pub zones: Vec<ZoneConfig>,
    /// Report any person seen while the store is closed.
    #[serde(default = "yes")]
    pub closed_hours: bool,
    /// Which objects count for the closed-hours rule.
    #[serde(default)]
    pub filter: ObjectFilter,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            zones: Vec::new(),
            closed_hours: true,
            filter: ObjectFilter::default(),
        }
    }
}

fn yes() -> bool {
    true
}

/// Durations in the project's config form (humantime: `"30s"`, `"1m 30s"`).
mod duration_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration ({e}); write e.g. \"90s\" or \"2m\""
            ))
        })
    }
}

/// A rules config that can not work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RulesError {
    #[error("zones[{index}] {name:?}: {problem}")]
    Zone {
        index: usize,
        name: String,
        problem: String,
    },
    #[error("filter: {0}")]
    Filter(String),
}

/// What the rules saw. Zones by name, tracks by the tracker's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleEvent {
    PersonInZone {
        zone: String,
        track: u64,
        at_ns: i64,
    },
    Loitering {
        zone: String,
        track: u64,
        dwell_ns: i64,
        at_ns: i64,
    },
    ClosedHours {
        track: u64,
        at_ns: i64,
    },
}

/// The rules of one camera and what they have already reported.
#[derive(Debug, Clone)]
pub struct Rules {
    cfg: RulesConfig,
    /// (track, zone) pairs reported in the zone and not yet out of it: a re-entry fires again.
    in_zone: HashSet<(u64, usize)>,
    loitered: HashSet<(u64, usize)>,
    closed: HashSet<u64>,
}

impl Rules {
    pub fn new(cfg: RulesConfig) -> Result<Rules, RulesError> {
        cfg.filter.check().map_err(RulesError::Filter)?;
        for (index, z) in cfg.zones.iter().enumerate() {
            let fail = |problem: String| RulesError::Zone {
                index,
                name: z.name.clone(),
                problem,
            };
            let ok_name = (1..=64).contains(&z.name.len())
                && z.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok_name {
                return Err(fail(
                    "name must be 1–64 characters from A–Z a–z 0–9 - _".into(),
                ));
            }
            if let Some(first) = cfg.zones[..index].iter().position(|o| o.name == z.name) {
                return Err(fail(format!("name already used by zones[{first}]")));
            }
            z.filter.check().map_err(|p| fail(format!("filter: {p}")))?;
            if z.loiter_after == Some(Duration::ZERO) {
                return Err(fail("loiter_after must be more than 0s".into()));
            }
        }
        Ok(Rules {
            cfg,
            in_zone: HashSet::new(),
            loitered: HashSet::new(),
            closed: HashSet::new(),
        })
    }

    pub fn config(&self) -> &RulesConfig {
        &self.cfg
    }

    /// The zones' polygons, in order: what the camera's [`crate::track::Tracker`] is given.
    pub fn zone_polygons(&self) -> Vec<Polygon> {
        self.cfg.zones.iter().map(|z| z.polygon.clone()).collect()
    }

    /// New events for the tracks after an update; `open` from
    /// [`crate::schedule::Schedule::is_open`]. Confirmed people only.
    pub fn evaluate(
        &mut self,
        at_ns: i64,
        tracks: &[Track],
        frame_w: f32,
        frame_h: f32,
        open: bool,
    ) -> Vec<RuleEvent> {
        let mut events = Vec::new();
        // Forget tracks that have ended, so the sets stay as small as the scene.
        let live: HashSet<u64> = tracks.iter().map(|t| t.id).collect();
        self.in_zone.retain(|(id, _)| live.contains(id));
        self.loitered.retain(|(id, _)| live.contains(id));
        self.closed.retain(|id| live.contains(id));

        for t in tracks.iter().filter(|t| t.confirmed && t.class == PERSON) {
            for (zi, z) in self.cfg.zones.iter().enumerate() {
                if !t.in_zone(zi) {
                    self.in_zone.remove(&(t.id, zi));
                    continue;
                }
                if !z.filter.passes(t.score, &t.rect, frame_w, frame_h) {
                    continue;
                }
                if self.in_zone.insert((t.id, zi)) {
                    events.push(RuleEvent::PersonInZone {
                        zone: z.name.clone(),
                        track: t.id,
                        at_ns,
                    });
                }
                let dwell_ns = t.dwell_ns(zi);
                let over = z
                    .loiter_after
                    .is_some_and(|d| dwell_ns as u128 > d.as_nanos());
                if over && self.loitered.insert((t.id, zi)) {
                    events.push(RuleEvent::Loitering {
                        zone: z.name.clone(),
                        track: t.id,
                        dwell_ns,
                        at_ns,
                    });
                }
            }
            let counts =
                self.cfg.closed_hours && self.cfg.filter.passes(t.score, &t.rect, frame_w, frame_h);
            if !open && counts && self.closed.insert(t.id) {
                events.push(RuleEvent::ClosedHours { track: t.id, at_ns });
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Detection;
    use crate::track::{Frame, Sighting, Tracker, TrackerConfig};

    const S: i64 = 1_000_000_000;
    const W: f32 = 640.0;
    const H: f32 = 480.0;

    const CONFIG: &str = r#"
        [[zones]]
        name = "till"
        polygon = [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]
        loiter_after = "30s"

        [[zones]]
        name = "stock-room"
        polygon = [[0.5, 0], [1, 0], [1, 1], [0.5, 1]]
        filter = { min_score = 0.7, max_area = 0.2 }
    "#;

    /// Tracker and rules over `frames` of one person box each (x, score), a second apart.
    fn run(rules: &mut Rules, frames: &[(f32, f32)], open: bool) -> Vec<RuleEvent> {
        let mut tracker = Tracker::new(TrackerConfig::default(), W, H, rules.zone_polygons());
        let mut out = Vec::new();
        for (i, &(x, score)) in frames.iter().enumerate() {
            let at_ns = i as i64 * S;
            let s: Sighting = Detection {
                rect: Rect::from_xywh(x, 200.0, 40.0, 100.0),
                score,
                class: PERSON,
            }
            .into();
            tracker.update(&Frame {
                at_ns,
                index: i as u64,
                sightings: &[s],
                searched: &[Rect::frame(W, H)],
            });
            out.extend(rules.evaluate(at_ns, tracker.tracks(), W, H, open));
        }
        out
    }

    fn rules() -> Rules {
        Rules::new(toml::from_str(CONFIG).unwrap()).unwrap()
    }

    #[test]
    fn person_in_zone_once_then_loitering_once() {
        let mut r = rules();
        let events = run(&mut r, &[(100.0, 0.8); 40], true);
        assert_eq!(
            events,
            [
                // Confirmed at the third sighting.
                RuleEvent::PersonInZone {
                    zone: "till".into(),
                    track: 1,
                    at_ns: 2 * S
                },
                // Dwell counts from the first sighting: over 30 s at 31 s.
                RuleEvent::Loitering {
                    zone: "till".into(),
                    track: 1,
                    dwell_ns: 31 * S,
                    at_ns: 31 * S
                },
            ]
        );
    }

    #[test]
    fn re_entry_fires_again_and_filters_apply_per_zone() {
        let mut r = rules();
        // Till, walking to the stock room at a low score there (filtered), confident, back.
        let path = [
            (100.0, 0.8),
            (100.0, 0.8),
            (100.0, 0.8),
            (100.0, 0.8),
            (140.0, 0.8),
            (180.0, 0.8),
            (220.0, 0.8),
            (260.0, 0.8),
            (300.0, 0.6),
            (340.0, 0.6),
            (380.0, 0.9),
            (340.0, 0.9),
            (300.0, 0.9),
            (260.0, 0.8),
            (220.0, 0.8),
        ];
        let events = run(&mut r, &path, true);
        let names: Vec<_> = events
            .iter()
            .map(|e| match e {
                RuleEvent::PersonInZone { zone, at_ns, .. } => (zone.as_str(), at_ns / S),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(names, [("till", 2), ("stock-room", 10), ("till", 13)]);
    }

    #[test]
    fn closed_hours_once_per_confirmed_person() {
        let mut r = rules();
        let closed = |r: &mut Rules, frames: &[(f32, f32)], open| {
            let e = run(r, frames, open);
            e.into_iter()
                .filter(|e| matches!(e, RuleEvent::ClosedHours { .. }))
                .collect::<Vec<_>>()
        };
        let events = closed(&mut r, &[(600.0, 0.8); 10], false);
        assert_eq!(
            events,
            [RuleEvent::ClosedHours {
                track: 1,
                at_ns: 2 * S
            }]
        );
        let mut r = rules();
        assert!(closed(&mut r, &[(600.0, 0.8); 10], true).is_empty());
        // Below the closed-hours filter's score: not counted.
        let mut r = rules();
        assert!(closed(&mut r, &[(600.0, 0.3); 10], false).is_empty());
    }

    #[test]
    fn config_is_strict_and_checked() {
        let bad = |text: &str| match toml::from_str::<RulesConfig>(text) {
            Ok(c) => Rules::new(c).unwrap_err().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(bad("closed_hour = true").contains("unknown field `closed_hour`"));
        let zone = |extra: &str| {
            format!("[[zones]]\nname = \"till\"\npolygon = [[0, 0], [1, 0], [0, 1]]\n{extra}")
        };
        assert!(bad(&zone("loiter = \"30s\"")).contains("unknown field `loiter`"));
        assert!(bad(&zone("loiter_after = \"30\"")).contains("\"30\" is not a duration"));
        assert!(bad(&zone("filter = { min_scor = 0.5 }")).contains("unknown field `min_scor`"));
        assert_eq!(
            bad(&zone("filter = { min_area = 0.5, max_area = 0.1 }")),
            "zones[0] \"till\": filter: min_area 0.5 is above max_area 0.1"
        );
        assert_eq!(
            bad(&format!("{}\n{}", zone(""), zone(""))),
            "zones[1] \"till\": name already used by zones[0]"
        );
        assert!(bad(&zone("").replace("till", "till 1")).contains("1–64 characters"));
        assert_eq!(
            bad("filter = { min_score = 1.5 }"),
            "filter: min_score 1.5 is outside 0–1"
        );
        let c: RulesConfig = toml::from_str(CONFIG).unwrap();
        assert_eq!(
            toml::from_str::<RulesConfig>(&toml::to_string(&c).unwrap()).unwrap(),
            c
        );
        assert!(c.closed_hours && c.zones[1].loiter_after.is_none());
    }
}
