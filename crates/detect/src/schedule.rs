//! Opening hours: a weekly schedule in the wall-clock time of a named IANA zone, with
//! holidays, and whether the store is open at a UTC instant.
//!
//! ```toml
//! time_zone = "Europe/London"
//! hours = ["mon-fri 08:00-22:00", "sat 09:00-18:00", "sun closed"]
//! holidays = ["2026-12-25 closed", "2026-12-24 08:00-14:00"]
//! ```
//!
//! Ranges are wall-clock minutes, end excluded; a range whose end is not after its start runs
//! past midnight (`fri 20:00-02:00`) and belongs to the day it starts on, so a holiday on the
//! Saturday does not cut Friday night short, and a holiday on the Friday cancels it. Days an
//! entry does not name are closed. Across a DST change the wall clock rules: `08:00` is 08:00
//! on the clock on the shop wall, GMT or BST.

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// The schedule as written in config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// An IANA zone name, e.g. `Europe/London`.
    pub time_zone: String,
    /// `"<days> <ranges>"`: days `mon`, `mon-fri`, `sat,sun`; ranges `HH:MM-HH:MM`, several
    /// separated by commas, or `closed`.
    pub hours: Vec<String>,
    /// `"YYYY-MM-DD closed"` or `"YYYY-MM-DD <ranges>"`: replaces that date's weekly hours.
    #[serde(default)]
    pub holidays: Vec<String>,
}

/// Which schedule entry was wrong and how.
#[derive(Debug, Error)]
pub enum ScheduleError {
    #[error("time_zone {name:?} is not in the system's time-zone database (is tzdata installed?)")]
    TimeZone {
        name: String,
        #[source]
        source: jiff::Error,
    },
    #[error("hours is empty: name at least one day, e.g. \"mon-sun 00:00-24:00\"")]
    NoHours,
    #[error("hours[{index}] {entry:?}: {problem}")]
    Hours {
        index: usize,
        entry: String,
        problem: Problem,
    },
    #[error("holidays[{index}] {entry:?}: {problem}")]
    Holiday {
        index: usize,
        entry: String,
        problem: Problem,
    },
}

/// What was wrong with one entry.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Problem {
    #[error("expected \"<days> <ranges>\", e.g. \"mon-fri 08:00-22:00\" or \"sun closed\"")]
    Shape,
    #[error(
        "expected \"<date> <ranges>\", e.g. \"2026-12-25 closed\" or \"2026-12-24 08:00-14:00\""
    )]
    HolidayShape,
    #[error("unknown day {0:?}; days are mon tue wed thu fri sat sun")]
    Day(String),
    #[error("{0:?} is not a range; write HH:MM-HH:MM, e.g. 08:00-22:00, or closed")]
    Range(String),
    #[error("{0:?} is not a time; write HH:MM from 00:00 to 23:59 (24:00 only as an end)")]
    Time(String),
    #[error("range {0} is empty: start and end are the same")]
    Empty(String),
    #[error("ranges {0} and {1} overlap")]
    Overlap(String, String),
    #[error("{day} is already given by hours[{entry}]")]
    DayTwice { day: &'static str, entry: usize },
    #[error("{0:?} is not a date; write YYYY-MM-DD, e.g. 2026-12-25")]
    Date(String),
    #[error("{date} is already given by holidays[{entry}]")]
    DateTwice { date: String, entry: usize },
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const DAY_MINUTES: u16 = 24 * 60;

/// Wall-clock minutes since midnight, `start` included, `end` excluded; `end <= start` runs
/// past midnight into the next day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: u16,
    end: u16,
}

impl Range {
    fn overnight(&self) -> bool {
        self.end <= self.start
    }

    /// The part on the day it starts.
    fn same_day_end(&self) -> u16 {
        if self.overnight() {
            DAY_MINUTES
        } else {
            self.end
        }
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", hm(self.start), hm(self.end))
    }
}

/// A validated schedule, ready to answer [`Schedule::is_open`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "ScheduleConfig", into = "ScheduleConfig")]
pub struct Schedule {
    config: ScheduleConfig,
    tz: TimeZone,
    week: [Vec<Range>; 7],
    holidays: BTreeMap<Date, Vec<Range>>,
}

impl TryFrom<ScheduleConfig> for Schedule {
    type Error = ScheduleError;
    fn try_from(c: ScheduleConfig) -> Result<Self, ScheduleError> {
        Schedule::new(c)
    }
}

impl From<Schedule> for ScheduleConfig {
    fn from(s: Schedule) -> Self {
        s.config
    }
}

impl Schedule {
    pub fn new(config: ScheduleConfig) -> Result<Schedule, ScheduleError> {
        let tz = TimeZone::get(&config.time_zone).map_err(|source| ScheduleError::TimeZone {
            name: config.time_zone.clone(),
            source,
        })?;
        if config.hours.is_empty() {
            return Err(ScheduleError::NoHours);
        }
        let mut week: [Vec<Range>; 7] = Default::default();
        let mut given: [Option<usize>; 7] = [None; 7];
        for (index, entry) in config.hours.iter().enumerate() {
            let fail = |problem| ScheduleError::Hours {
                index,
                entry: entry.clone(),
                problem,
            };
            let (days, ranges) = split_entry(entry).ok_or_else(|| fail(Problem::Shape))?;
            let days = parse_days(days).map_err(fail)?;
            let ranges = parse_ranges(&ranges).map_err(fail)?;
            for d in days {
                if let Some(entry) = given[d] {
                    return Err(fail(Problem::DayTwice {
                        day: DAYS[d],
                        entry,
                    }));
                }
                given[d] = Some(index);
                week[d] = ranges.clone();
            }
        }
        let mut holidays = BTreeMap::new();
        let mut dates = BTreeMap::new();
        for (index, entry) in config.holidays.iter().enumerate() {
            let fail = |problem| ScheduleError::Holiday {
                index,
                entry: entry.clone(),
                problem,
            };
            let (date, ranges) = split_entry(entry).ok_or_else(|| fail(Problem::HolidayShape))?;
            let day: Date = parse_date(date).ok_or_else(|| fail(Problem::Date(date.into())))?;
            let ranges = parse_ranges(&ranges).map_err(fail)?;
            if let Some(&entry) = dates.get(&day) {
                return Err(fail(Problem::DateTwice {
                    date: date.into(),
                    entry,
                }));
            }
            dates.insert(day, index);
            holidays.insert(day, ranges);
        }
        Ok(Schedule {
            config,
            tz,
            week,
            holidays,
        })
    }

    /// Open every minute of every day: for stores that never close.
    pub fn always_open() -> Schedule {
        let all = vec![Range {
            start: 0,
            end: DAY_MINUTES,
        }];
        Schedule {
            config: ScheduleConfig {
                time_zone: "UTC".into(),
                hours: vec!["mon-sun 00:00-24:00".into()],
                holidays: Vec::new(),
            },
            tz: TimeZone::UTC,
            week: std::array::from_fn(|_| all.clone()),
            holidays: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &ScheduleConfig {
        &self.config
    }

    /// Whether the store is open at `utc_ns` (UTC nanoseconds), by the wall clock of its
    /// zone, to the minute.
    pub fn is_open(&self, utc_ns: i64) -> bool {
        let Ok(ts) = Timestamp::from_nanosecond(i128::from(utc_ns)) else {
            return false;
        };
        let local = self.tz.to_datetime(ts);
        let minute = (local.hour() as u16) * 60 + local.minute() as u16;
        let date = local.date();
        if self
            .day(date)
            .iter()
            .any(|r| r.start <= minute && minute < r.same_day_end())
        {
            return true;
        }
        date.yesterday()
            .is_ok_and(|y| self.day(y).iter().any(|r| r.overnight() && minute < r.end))
    }

    fn day(&self, date: Date) -> &[Range] {
        self.holidays
            .get(&date)
            .unwrap_or_else(|| &self.week[date.weekday().to_monday_zero_offset() as usize])
    }
}

/// `"<head> <rest>"`, with the rest's spaces dropped so `08:00-12:00, 13:00-18:00` reads.
fn split_entry(entry: &str) -> Option<(&str, String)> {
    let mut words = entry.split_whitespace();
    let head = words.next()?;
    let rest: String = words.collect();
    (!rest.is_empty()).then_some((head, rest))
}

/// Day indices (monday 0) of `mon`, `mon-fri`, `fri-mon` (wrapping), `sat,sun`.
fn parse_days(s: &str) -> Result<Vec<usize>, Problem> {
    let day = |d: &str| {
        let d = d.to_ascii_lowercase();
        DAYS.iter().position(|&n| n == d).ok_or(Problem::Day(d))
    };
    let mut out = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    out.push(d);
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => out.push(day(part)?),
        }
    }
    Ok(out)
}

/// `closed`, or `HH:MM-HH:MM[,HH:MM-HH:MM…]`, sorted and checked for overlaps.
fn parse_ranges(s: &str) -> Result<Vec<Range>, Problem> {
    if s.eq_ignore_ascii_case("closed") {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for part in s.split(',') {
        let (a, b) = part
            .split_once('-')
            .ok_or_else(|| Problem::Range(part.into()))?;
        let start = parse_time(a)
            .filter(|&m| m < DAY_MINUTES)
            .ok_or_else(|| Problem::Time(a.into()))?;
        let end = parse_time(b).ok_or_else(|| Problem::Time(b.into()))?;
        let r = Range { start, end };
        if start == end {
            return Err(Problem::Empty(r.to_string()));
        }
        out.push(r);
    }
    out.sort_by_key(|r| r.start);
    for w in out.windows(2) {
        if w[1].start < w[0].same_day_end() {
            return Err(Problem::Overlap(w[0].to_string(), w[1].to_string()));
        }
    }
    Ok(out)
}

/// `H:MM` or `HH:MM`, up to `24:00`, as minutes.
fn parse_time(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    let digits = |t: &str, n: std::ops::RangeInclusive<usize>| {
        n.contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(h, 1..=2) || !digits(m, 2..=2) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    let total = h * 60 + m;
    (m < 60 && total <= DAY_MINUTES).then_some(total)
}

fn parse_date(s: &str) -> Option<Date> {
    // jiff also reads other forms; the config admits only this one.
    let b = s.as_bytes();
    let shape = b.len() == 10 && b[4] == b'-' && b[7] == b'-';
    if !shape {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(hours: &[&str], holidays: &[&str]) -> Result<Schedule, ScheduleError> {
        Schedule::new(ScheduleConfig {
            time_zone: "Europe/London".into(),
            hours: hours.iter().map(|s| s.to_string()).collect(),
            holidays: holidays.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn at(utc: &str) -> i64 {
        i64::try_from(utc.parse::<Timestamp>().unwrap().as_nanosecond()).unwrap()
    }

    fn err(hours: &[&str], holidays: &[&str]) -> String {
        schedule(hours, holidays).unwrap_err().to_string()
    }

    const SHOP: [&str; 3] = ["mon-fri 08:00-22:00", "sat 09:00-18:00", "sun closed"];

    #[test]
    fn weekly_hours() {
        let s = schedule(&SHOP, &[]).unwrap();
        // 2026-01-05 is a Monday; January is GMT, so local = UTC.
        assert!(!s.is_open(at("2026-01-05T07:59:59Z")));
        assert!(s.is_open(at("2026-01-05T08:00:00Z")));
        assert!(s.is_open(at("2026-01-05T21:59:59Z")));
        assert!(!s.is_open(at("2026-01-05T22:00:00Z")));
        assert!(s.is_open(at("2026-01-10T10:00:00Z"))); // Saturday
        assert!(!s.is_open(at("2026-01-10T18:30:00Z")));
        assert!(!s.is_open(at("2026-01-11T12:00:00Z"))); // Sunday
    }

    #[test]
    fn london_dst_change_days_follow_the_wall_clock() {
        let s = schedule(&["mon-sun 08:00-22:00"], &[]).unwrap();
        // Saturday 28 March 2026, still GMT.
        assert!(!s.is_open(at("2026-03-28T07:30:00Z")));
        assert!(s.is_open(at("2026-03-28T08:00:00Z")));
        // Sunday 29 March, clocks forward at 01:00 UTC: 08:00 BST is 07:00 UTC.
        assert!(!s.is_open(at("2026-03-29T06:59:00Z")));
        assert!(s.is_open(at("2026-03-29T07:00:00Z")));
        assert!(s.is_open(at("2026-03-29T20:59:00Z")));
        assert!(!s.is_open(at("2026-03-29T21:00:00Z")));
        // Sunday 25 October, clocks back: 08:00 GMT is 08:00 UTC again.
        assert!(!s.is_open(at("2026-10-25T07:30:00Z")));
        assert!(s.is_open(at("2026-10-25T08:00:00Z")));
        assert!(s.is_open(at("2026-10-25T21:59:00Z")));
    }

    #[test]
    fn a_range_past_midnight_belongs_to_the_day_it_starts() {
        // January: GMT. 2026-01-09 is a Friday.
        let s = schedule(&["fri 20:00-02:00"], &[]).unwrap();
        assert!(!s.is_open(at("2026-01-09T19:59:00Z")));
        assert!(s.is_open(at("2026-01-09T23:30:00Z")));
        assert!(s.is_open(at("2026-01-10T01:59:00Z")));
        assert!(!s.is_open(at("2026-01-10T02:00:00Z")));
        assert!(!s.is_open(at("2026-01-08T01:00:00Z"))); // Thursday early: no Wednesday night
        // A holiday on the Saturday does not cut Friday night short…
        let s = schedule(&["fri 20:00-02:00"], &["2026-01-10 closed"]).unwrap();
        assert!(s.is_open(at("2026-01-10T01:00:00Z")));
        // …a holiday on the Friday cancels it.
        let s = schedule(&["fri 20:00-02:00"], &["2026-01-09 closed"]).unwrap();
        assert!(!s.is_open(at("2026-01-09T23:00:00Z")));
        assert!(!s.is_open(at("2026-01-10T01:00:00Z")));
    }

    #[test]
    fn holidays_close_or_set_special_hours() {
        let s = schedule(&SHOP, &["2026-12-25 closed", "2026-12-24 08:00-14:00"]).unwrap();
        assert!(!s.is_open(at("2026-12-25T12:00:00Z"))); // a Friday
        assert!(s.is_open(at("2026-12-24T13:00:00Z")));
        assert!(!s.is_open(at("2026-12-24T15:00:00Z")));
        assert!(s.is_open(at("2026-12-23T21:00:00Z")));
    }

    #[test]
    fn split_shifts_day_lists_and_wrapping_ranges() {
        let s = schedule(
            &["sat-mon 10:00-12:00, 14:00-24:00", "wed,fri 09:00-17:00"],
            &[],
        )
        .unwrap();
        assert!(s.is_open(at("2026-01-11T11:00:00Z"))); // Sunday
        assert!(!s.is_open(at("2026-01-11T13:00:00Z")));
        assert!(s.is_open(at("2026-01-12T23:59:00Z"))); // Monday
        assert!(!s.is_open(at("2026-01-13T11:00:00Z"))); // Tuesday: not named, closed
        assert!(s.is_open(at("2026-01-14T09:00:00Z"))); // Wednesday
        assert!(Schedule::always_open().is_open(at("2026-01-13T03:00:00Z")));
    }

    #[test]
    fn errors_name_the_entry_and_the_problem() {
        assert_eq!(
            err(&["mon-fri 08:00-22:00", "mnday 09:00-10:00"], &[]),
            "hours[1] \"mnday 09:00-10:00\": unknown day \"mnday\"; days are mon tue wed thu fri sat sun"
        );
        assert!(err(&["mon 8.00-22:00"], &[]).contains("\"8.00\" is not a time"));
        assert!(err(&["mon 08:00-25:00"], &[]).contains("\"25:00\" is not a time"));
        assert!(err(&["mon 24:00-02:00"], &[]).contains("\"24:00\" is not a time"));
        assert!(err(&["mon 08:00"], &[]).contains("\"08:00\" is not a range"));
        assert!(err(&["mon"], &[]).starts_with("hours[0] \"mon\": expected \"<days> <ranges>\""));
        assert!(err(&["mon 10:00-10:00"], &[]).contains("range 10:00-10:00 is empty"));
        assert!(
            err(&["mon 08:00-12:00,11:00-13:00"], &[])
                .contains("ranges 08:00-12:00 and 11:00-13:00 overlap")
        );
        assert_eq!(
            err(&["mon-fri 08:00-22:00", "fri 08:00-23:00"], &[]),
            "hours[1] \"fri 08:00-23:00\": fri is already given by hours[0]"
        );
        assert_eq!(
            err(&SHOP, &["2026-12-25 closed", "2026-12-25 10:00-12:00"]),
            "holidays[1] \"2026-12-25 10:00-12:00\": 2026-12-25 is already given by holidays[0]"
        );
        assert!(err(&SHOP, &["25/12/2026 closed"]).contains("\"25/12/2026\" is not a date"));
        assert!(err(&SHOP, &["2026-02-30 closed"]).contains("\"2026-02-30\" is not a date"));
        assert!(
            err(&SHOP, &["2026-12-25"])
                .contains("holidays[0] \"2026-12-25\": expected \"<date> <ranges>\"")
        );
        assert!(err(&[], &[]).starts_with("hours is empty"));
        let tz = Schedule::new(ScheduleConfig {
            time_zone: "Europe/Londn".into(),
            hours: vec!["mon closed".into()],
            holidays: vec![],
        })
        .unwrap_err();
        assert!(
            tz.to_string()
                .starts_with("time_zone \"Europe/Londn\" is not in"),
            "{tz}"
        );
    }

    #[test]
    fn deserialises_strictly_and_round_trips() {
        let text = r#"
            time_zone = "Europe/London"
            hours = ["mon-fri 08:00-22:00", "sat 09:00-18:00", "sun closed"]
            holidays = ["2026-12-25 closed"]
        "#;
        let s: Schedule = toml::from_str(text).unwrap();
        assert!(s.is_open(at("2026-01-05T12:00:00Z")));
        assert_eq!(
            toml::from_str::<ScheduleConfig>(&toml::to_string(&s).unwrap()).unwrap(),
            *s.config()
        );
        let e = toml::from_str::<Schedule>(&text.replace("holidays", "holiday")).unwrap_err();
        assert!(e.to_string().contains("unknown field `holiday`"), "{e}");
        let e = toml::from_str::<Schedule>(&text.replace("sat 09", "sat 9h")).unwrap_err();
        assert!(
            e.to_string()
                .contains("hours[1] \"sat 9h:00-18:00\": \"9h:00\" is not a time"),
            "{e}"
        );
    }
}
