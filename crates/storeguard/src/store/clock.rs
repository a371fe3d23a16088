//! SQL for trustworthy time (docs/time.md): clock epochs, steps, and the corrections a
//! step applies to what was recorded on the clock before it.

use super::{Result, Store};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use std::collections::HashMap;

/// How one step maps times of its old epoch onto the new one.
///
/// - The old epoch was never synchronised (a cold boot at 1970, a clock set by hand):
///   its error was the same all along, so every time moves by the step.
/// - It was synchronised until `synced_until_ns` and then drifted (NTP lost): its error
///   grew from nothing then to the step's size at the step, so times move by the step's
///   share of that: none at `synced_until_ns`, all of it at the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fix {
    pub step: i64,
    pub epoch_after: i64,
    /// The old clock's reading at the step.
    pub before_ns: i64,
    pub size_ns: i64,
    pub synced_until_ns: Option<i64>,
}

impl Fix {
    pub fn apply(&self, t: i64) -> i64 {
        match self.synced_until_ns {
            None => t.saturating_add(self.size_ns),
            Some(l) if t <= l => t,
            Some(l) => {
                let span = (self.before_ns - l).max(1) as f64;
                let share = ((t - l) as f64 / span).min(1.0);
                t + (self.size_ns as f64 * share).round() as i64
            }
        }
    }

    /// `apply` in SQL over column `c`, with parameters `:d` (size), `:s` (before) and
    /// `:l` (synced until, NULL if never).
    fn sql(c: &str) -> String {
        format!(
            "(CASE WHEN :l IS NULL THEN {c} + :d WHEN {c} <= :l THEN {c} \
             ELSE {c} + CAST(round(:d * min(1.0, CAST({c} - :l AS REAL) / max(1, :s - :l))) AS INTEGER) END)"
        )
    }
}

/// The fixes of every recorded step, by the epoch each one ends.
#[derive(Debug, Default, Clone)]
pub struct Fixes(HashMap<i64, Fix>);

impl Fixes {
    pub(super) fn load(c: &Connection) -> rusqlite::Result<Fixes> {
        let mut st = c.prepare(
            "SELECT id, epoch_before, epoch_after, before_ns, size_ns, synced_until_ns FROM clock_step",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(1)?,
                Fix {
                    step: r.get(0)?,
                    epoch_after: r.get(2)?,
                    before_ns: r.get(3)?,
                    size_ns: r.get(4)?,
                    synced_until_ns: r.get(5)?,
                },
            ))
        })?;
        Ok(Fixes(rows.collect::<rusqlite::Result<_>>()?))
    }

    /// The steps that followed `epoch`, in order (a row recorded in it and committed
    /// after its step is corrected at commit). Bounded: epochs only ever chain forward.
    pub fn chain(&self, mut epoch: i64) -> Vec<Fix> {
        let mut out = Vec::new();
        while let Some(f) = self.0.get(&epoch) {
            if out.len() > 64 {
                break;
            }
            out.push(*f);
            epoch = f.epoch_after;
        }
        out
    }
}

/// Corrects segments `ids` and their keyframes by `fix`, keeping the recorded values.
fn correct_segments(
    tx: &rusqlite::Transaction<'_>,
    fix: &Fix,
    ids: &[i64],
) -> rusqlite::Result<(usize, usize)> {
    if ids.is_empty() {
        return Ok((0, 0));
    }
    let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let p = rusqlite::named_params! {
        ":d": fix.size_ns, ":s": fix.before_ns, ":l": fix.synced_until_ns, ":step": fix.step,
    };
    let segs = tx.execute(
        &format!(
            "UPDATE segment SET recorded_start_ns = coalesce(recorded_start_ns, start_ns),
                recorded_end_ns = coalesce(recorded_end_ns, end_ns),
                start_ns = {}, end_ns = {}, clock_step = :step, clock_epoch = :after
             WHERE id IN ({list})",
            Fix::sql("start_ns"),
            Fix::sql("end_ns")
        ),
        rusqlite::named_params! {
            ":d": fix.size_ns, ":s": fix.before_ns, ":l": fix.synced_until_ns, ":step": fix.step,
            ":after": fix.epoch_after,
        },
    )?;
    let kfs = tx.execute(
        &format!(
            "UPDATE keyframe SET recorded_utc_ns = coalesce(recorded_utc_ns, utc_ns), utc_ns = {}
             WHERE segment IN ({list})",
            Fix::sql("utc_ns")
        ),
        &p[..3],
    )?;
    Ok((segs, kfs))
}

/// A step of the box clock, as recorded.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepRow {
    pub id: i64,
    pub at_ns: i64,
    pub before_ns: i64,
    pub after_ns: i64,
    pub size_ns: i64,
    pub cause: String,
    pub synced_after: bool,
    pub error_after_ns: Option<i64>,
    pub corrected: serde_json::Value,
}

/// What a new step is, before it has an id.
#[derive(Debug, Clone)]
pub struct NewStep {
    pub at_ns: i64,
    pub before_ns: i64,
    pub after_ns: i64,
    pub size_ns: i64,
    pub cause: String,
    pub epoch_before: i64,
    pub boot_id: String,
    pub base_after_ns: i64,
    pub synced_until_ns: Option<i64>,
    pub synced_after: bool,
    pub error_after_ns: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochRow {
    pub id: i64,
    pub boot_id: String,
    pub base_ns: i64,
    pub synced_until_ns: Option<i64>,
}

/// The time quality of footage: where its times came from, how far they can be off,
/// and the steps that corrected them.
#[derive(Debug, Clone, PartialEq)]
pub struct FootageTime {
    /// `box_ntp`, `camera_rtcp` or `box_unsynchronised`: the worst over the footage.
    pub source: &'static str,
    /// None: not bounded (recorded on an unsynchronised clock and not corrected).
    pub error_ns: Option<i64>,
    pub corrections: Vec<StepRow>,
}

/// A segment's (time_source, time_synced, time_error_ns, clock_step).
type SegTime = (String, Option<bool>, Option<i64>, Option<i64>);

const STEP_COLS: &str =
    "id, at_ns, before_ns, after_ns, size_ns, cause, synced_after, error_after_ns, corrected";

fn step_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StepRow> {
    let corrected: String = r.get(8)?;
    Ok(StepRow {
        id: r.get(0)?,
        at_ns: r.get(1)?,
        before_ns: r.get(2)?,
        after_ns: r.get(3)?,
        size_ns: r.get(4)?,
        cause: r.get(5)?,
        synced_after: r.get(6)?,
        error_after_ns: r.get(7)?,
        corrected: serde_json::from_str(&corrected).unwrap_or(serde_json::Value::Null),
    })
}

impl Store {
    /// The most recent clock epoch, if any.
    pub fn last_epoch(&self) -> Result<Option<EpochRow>> {
        let c = self.conn();
        self.sq(
            c.query_row(
                "SELECT id, boot_id, base_ns, synced_until_ns FROM clock_epoch ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    Ok(EpochRow {
                        id: r.get(0)?,
                        boot_id: r.get(1)?,
                        base_ns: r.get(2)?,
                        synced_until_ns: r.get(3)?,
                    })
                },
            )
            .optional(),
        )
    }

    /// Starts an epoch (a new boot, or the first run).
    pub fn open_epoch(&self, boot_id: &str, base_ns: i64, now_ns: i64) -> Result<i64> {
        let c = self.conn();
        self.sq(c.execute(
            "INSERT INTO clock_epoch(boot_id, base_ns, started_ns) VALUES (?1, ?2, ?3)",
            params![boot_id, base_ns, now_ns],
        ))?;
        Ok(c.last_insert_rowid())
    }

    /// The clock was synchronised at `ns` in this epoch.
    pub fn epoch_synced_until(&self, epoch: i64, ns: i64) -> Result<()> {
        let c = self.conn();
        self.sq(c.execute(
            "UPDATE clock_epoch SET synced_until_ns = max(coalesce(synced_until_ns, ?2), ?2) WHERE id = ?1",
            params![epoch, ns],
        ))
        .map(|_| ())
    }

    /// Records a step and, in the same transaction, corrects every row recorded on the
    /// old clock: segments (box time only) and their keyframes, gaps, events, and the
    /// windows and retention locks of their clips not yet sealed. Recorded values are
    /// kept (`recorded_*`). Rows of the old epoch committed later are corrected as they
    /// are committed. Returns the step and the new epoch.
    pub fn record_step(&self, s: &NewStep) -> Result<(StepRow, i64)> {
        let mut c = self.conn();
        let r = (|| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO clock_epoch(boot_id, base_ns, started_ns) VALUES (?1, ?2, ?3)",
                params![s.boot_id, s.base_after_ns, s.at_ns],
            )?;
            let after = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO clock_step(at_ns, before_ns, after_ns, size_ns, cause, epoch_before, epoch_after, synced_until_ns, synced_after, error_after_ns, corrected)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, '{}')",
                params![s.at_ns, s.before_ns, s.after_ns, s.size_ns, s.cause, s.epoch_before, after, s.synced_until_ns, s.synced_after, s.error_after_ns],
            )?;
            let step = tx.last_insert_rowid();
            let f = |c: &str| Fix::sql(c);
            let run = |sql: String, with_epochs: bool| -> rusqlite::Result<usize> {
                let mut st = tx.prepare(&sql)?;
                let mut p: Vec<(&str, &dyn rusqlite::ToSql)> = vec![
                    (":d", &s.size_ns),
                    (":s", &s.before_ns),
                    (":l", &s.synced_until_ns),
                    (":step", &step),
                ];
                if with_epochs {
                    p.push((":before", &s.epoch_before));
                    p.push((":after", &after));
                }
                let p: Vec<(&str, &dyn rusqlite::ToSql)> =
                    p.into_iter().filter(|(n, _)| sql.contains(n)).collect();
                st.execute(p.as_slice())
            };
            let fix = Fix {
                step,
                epoch_after: after,
                before_ns: s.before_ns,
                size_ns: s.size_ns,
                synced_until_ns: s.synced_until_ns,
            };
            // Now: the segments still open in the index, the only ones a sync round can
            // still update. The closed ones follow in chunks (`correct_remaining`).
            let open: Vec<i64> = {
                let mut st =
                    tx.prepare("SELECT id FROM segment WHERE clock_epoch = ?1 AND state = 0")?;
                st.query_map([s.epoch_before], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let (segments, keyframes) = correct_segments(&tx, &fix, &open)?;
            let gaps = run(
                format!(
                    "UPDATE gap SET recorded_start_ns = coalesce(recorded_start_ns, start_ns),
                        recorded_end_ns = coalesce(recorded_end_ns, end_ns),
                        start_ns = {}, end_ns = CASE WHEN end_ns IS NULL OR end_ns > :s THEN end_ns ELSE {} END,
                        clock_step = :step, clock_epoch = :after
                     WHERE clock_epoch = :before",
                    f("start_ns"),
                    f("end_ns")
                ),
                true,
            )?;
            let events = run(
                format!(
                    "UPDATE event SET recorded_at_ns = coalesce(recorded_at_ns, at_ns), at_ns = {},
                        clock_step = :step, clock_epoch = :after
                     WHERE clock_epoch = :before",
                    f("at_ns")
                ),
                true,
            )?;
            let open_clips = "SELECT id FROM event WHERE clock_step = :step";
            let locks = run(
                format!(
                    "UPDATE retention_lock SET from_ns = {}, to_ns = {}
                     WHERE id IN (SELECT lock_id FROM clip WHERE state NOT IN ('sealed', 'acked') AND event IN ({open_clips}))",
                    f("from_ns"),
                    f("to_ns")
                ),
                false,
            )?;
            let clips = run(
                format!(
                    "UPDATE clip SET from_ns = {}, to_ns = {}
                     WHERE state NOT IN ('sealed', 'acked') AND event IN ({open_clips})",
                    f("from_ns"),
                    f("to_ns")
                ),
                false,
            )?;
            let corrected = serde_json::json!({
                "segments": segments, "keyframes": keyframes, "gaps": gaps,
                "events": events, "clips": clips, "locks": locks,
            });
            tx.execute(
                "UPDATE clock_step SET corrected = ?2 WHERE id = ?1",
                params![step, corrected.to_string()],
            )?;
            let row = tx.query_row(
                &format!("SELECT {STEP_COLS} FROM clock_step WHERE id = ?1"),
                [step],
                step_row,
            )?;
            tx.commit()?;
            Ok((row, after))
        })();
        let (mut row, after) = self.sq(r)?;
        let fix = Fix {
            step: row.id,
            epoch_after: after,
            before_ns: s.before_ns,
            size_ns: s.size_ns,
            synced_until_ns: s.synced_until_ns,
        };
        // Still under the connection's lock: a sync round committed after the step
        // sees its fix.
        self.fixes().0.insert(s.epoch_before, fix);
        drop(c);
        let (segs, kfs) = self.correct_remaining(s.epoch_before, &fix)?;
        for (k, n) in [("segments", segs), ("keyframes", kfs)] {
            let v = row.corrected[k].as_u64().unwrap_or(0) + n as u64;
            row.corrected[k] = v.into();
        }
        let c = self.conn();
        self.sq(c.execute(
            "UPDATE clock_step SET corrected = ?2 WHERE id = ?1",
            params![row.id, row.corrected.to_string()],
        ))?;
        Ok((row, after))
    }

    /// Corrects the closed segments of a step's old epoch in chunks, newest first (where
    /// pending clips are), one transaction each, so the alarm path and the recorder
    /// never wait long for the database. Interrupted (a crash), it goes on at the next
    /// start ([`resume_corrections`](Self::resume_corrections)): a corrected row has
    /// left the old epoch.
    fn correct_remaining(&self, epoch_before: i64, fix: &Fix) -> Result<(usize, usize)> {
        let (mut segs, mut kfs) = (0, 0);
        let (mut chunks, mut longest) = (0, std::time::Duration::ZERO);
        loop {
            let t = std::time::Instant::now();
            let mut c = self.conn();
            let r = (|| {
                let tx = c.transaction()?;
                let ids: Vec<i64> = {
                    let mut st = tx.prepare_cached(
                        "SELECT id FROM segment WHERE clock_epoch = ?1 ORDER BY start_ns DESC LIMIT 128",
                    )?;
                    st.query_map([epoch_before], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?
                };
                let n = correct_segments(&tx, fix, &ids)?;
                tx.commit()?;
                Ok(n)
            })();
            drop(c);
            let (s, k) = self.sq(r)?;
            longest = longest.max(t.elapsed());
            chunks += 1;
            if s == 0 {
                if segs > 0 {
                    tracing::info!(
                        segments = segs,
                        keyframes = kfs,
                        chunks,
                        longest_ms = longest.as_millis() as u64,
                        "recorded times corrected"
                    );
                }
                return Ok((segs, kfs));
            }
            segs += s;
            kfs += k;
            // The connection's lock is not fair: leave a gap for whoever waits on it.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// Finishes corrections a crash interrupted.
    pub fn resume_corrections(&self) -> Result<usize> {
        let fixes: Vec<(i64, Fix)> = self.fixes().0.iter().map(|(e, f)| (*e, *f)).collect();
        let mut n = 0;
        for (epoch, fix) in fixes {
            n += self.correct_remaining(epoch, &fix)?.0;
        }
        Ok(n)
    }

    /// The latest steps, newest first.
    pub fn clock_steps(&self, limit: usize) -> Result<Vec<StepRow>> {
        let c = self.conn();
        let mut st = self.sq(c.prepare(&format!(
            "SELECT {STEP_COLS} FROM clock_step ORDER BY id DESC LIMIT ?1"
        )))?;
        let rows = st
            .query_map([limit as i64], step_row)
            .and_then(|m| m.collect());
        self.sq(rows)
    }

    /// The time quality of a camera's footage in [from, to): the worst source and error
    /// bound over its segments, and the steps that corrected any of them.
    pub fn footage_time(&self, camera: &str, from_ns: i64, to_ns: i64) -> Result<FootageTime> {
        let c = self.conn();
        let mut st = self.sq(c.prepare_cached(&super::recording::sql::footage_time()))?;
        let rows: Vec<SegTime> = self.sq(st
            .query_map(params![camera, from_ns, to_ns], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .and_then(|m| m.collect()))?;
        drop(st);
        let mut steps: Vec<i64> = rows.iter().filter_map(|r| r.3).collect();
        steps.sort_unstable();
        steps.dedup();
        let mut corrections = Vec::new();
        for id in steps {
            if let Some(s) = self.sq(c
                .query_row(
                    &format!("SELECT {STEP_COLS} FROM clock_step WHERE id = ?1"),
                    [id],
                    step_row,
                )
                .optional())?
            {
                corrections.push(s);
            }
        }
        drop(c);
        Ok(footage_quality(&rows, corrections))
    }
}

/// The worst of the segments' qualities. A corrected segment's error is its step's
/// error bound after the step (plus the step's own uncertainty, see docs/time.md).
fn footage_quality(rows: &[SegTime], corrections: Vec<StepRow>) -> FootageTime {
    let mut rank = 0; // 0 box_ntp, 1 camera_rtcp, 2 box_unsynchronised
    let mut error: Option<i64> = Some(0);
    for (source, synced, err, step) in rows {
        let fixed = step.and_then(|id| corrections.iter().find(|s| s.id == id));
        let e = match fixed {
            Some(s) => s.error_after_ns.map(|e| e + super::STEP_UNCERTAINTY_NS),
            None => *err,
        };
        let r = if source == "ntp" {
            1
        } else if synced.unwrap_or(false) || fixed.is_some_and(|s| s.synced_after) {
            0
        } else {
            2
        };
        rank = rank.max(r);
        error = match (error, e) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
    if rows.is_empty() {
        error = None;
        rank = 2;
    }
    FootageTime {
        source: ["box_ntp", "camera_rtcp", "box_unsynchronised"][rank],
        error_ns: error,
        corrections,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const S: i64 = 1_000_000_000;

    #[test]
    fn a_never_synchronised_epoch_moves_by_the_whole_step() {
        let f = Fix {
            step: 1,
            epoch_after: 2,
            before_ns: 100 * S,
            size_ns: 1_764_000_000 * S,
            synced_until_ns: None,
        };
        assert_eq!(f.apply(10 * S), 1_764_000_010 * S);
        assert_eq!(f.apply(100 * S), 1_764_000_100 * S);
    }

    #[test]
    fn drift_after_losing_ntp_is_corrected_in_proportion() {
        let f = Fix {
            step: 1,
            epoch_after: 2,
            before_ns: 2000 * S,
            size_ns: -S,
            synced_until_ns: Some(1000 * S),
        };
        assert_eq!(f.apply(900 * S), 900 * S, "synchronised: unchanged");
        assert_eq!(f.apply(1500 * S), 1500 * S - S / 2);
        assert_eq!(f.apply(2000 * S), 1999 * S);
        // Order is kept across the whole epoch.
        let mut last = i64::MIN;
        for t in (900..2100).map(|t| t * S) {
            assert!(f.apply(t) > last);
            last = f.apply(t);
        }
    }
}

#[cfg(test)]
mod bench {
    use super::*;
    use crate::store::recording::SegmentProgress;

    /// How long a cold-boot step's correction holds the database: a day of 24 cameras
    /// recorded unsynchronised (60 s segments, a keyframe every 2 s).
    /// `cargo test -p storeguard --lib store::clock::bench -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench_correcting_a_day_of_24_cameras() {
        const S: i64 = 1_000_000_000;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let epoch = store.open_epoch("boot", 0, 0).unwrap();
        let mut batch = Vec::new();
        for cam in 0..24 {
            for n in 0..1440i64 {
                let start = 100 * S + n * 60 * S;
                batch.push(SegmentProgress {
                    camera: format!("cam{cam:02}"),
                    path: format!("recordings/cam{cam:02}/{n}.ts"),
                    start_ns: start,
                    end_ns: start + 60 * S,
                    bytes: 1,
                    frames: 900,
                    codec: "h264",
                    width: 1,
                    height: 1,
                    params: None,
                    time_source: "arrival",
                    state: 1,
                    new_keyframes: (0..30)
                        .map(|k| (start + k * 2 * S, k as u64 * 188))
                        .collect(),
                    clock_epoch: epoch,
                    time_synced: false,
                    time_error_ns: None,
                });
            }
            store.commit_sync(&batch, &[]).unwrap();
            batch.clear();
        }
        // Meanwhile another writer (as the alarm path is) measures how long it waits.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probe = |store: Store, stop: std::sync::Arc<std::sync::atomic::AtomicBool>| {
            std::thread::spawn(move || {
                let mut worst = std::time::Duration::ZERO;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = std::time::Instant::now();
                    store.meta_set("probe", "x").unwrap();
                    worst = worst.max(t.elapsed());
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                worst
            })
        };
        // The same commit's worst latency on this disk without a step, for comparison.
        let quiet = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let baseline = probe(store.clone(), quiet.clone());
        std::thread::sleep(std::time::Duration::from_secs(5));
        quiet.store(true, std::sync::atomic::Ordering::Relaxed);
        let baseline = baseline.join().unwrap();
        let prober = probe(store.clone(), stop.clone());
        let t0 = std::time::Instant::now();
        let (row, _) = store
            .record_step(&NewStep {
                at_ns: 1_764_600_000 * S,
                before_ns: 100 * S + 86_400 * S,
                after_ns: 1_764_600_000 * S,
                size_ns: 1_764_600_000 * S - 86_500 * S,
                cause: "NTP synchronised the clock".into(),
                epoch_before: epoch,
                boot_id: "boot".into(),
                base_after_ns: 1,
                synced_until_ns: None,
                synced_after: true,
                error_after_ns: Some(20_000_000),
            })
            .unwrap();
        let took = t0.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let worst = prober.join().unwrap();
        println!(
            "record_step: {} in {:.2} s; a concurrent commit took at most {:.0} ms (without a step: {:.0} ms)",
            row.corrected,
            took.as_secs_f64(),
            worst.as_secs_f64() * 1000.0,
            baseline.as_secs_f64() * 1000.0
        );
        assert_eq!(row.corrected["segments"], 24 * 1440);
    }
}
