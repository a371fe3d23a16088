//! One camera's segment writer: access units in, MPEG-TS segment files out.
//!
//! Runs on the camera's ingest thread (a retina task or a GStreamer streaming thread),
//! so it only does buffered writes.
//! Syncing and indexing happen on the syncer thread through `checkpoint`, which hands
//! over exactly what was written so far; the index never describes unsynced bytes.

use super::ts::{self, TsWriter, VideoCodec};
use crate::store::recording::{GapChange, STATE_CLOSED, STATE_OPEN, SegmentProgress};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// One access unit as it leaves the camera pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub data: &'a [u8],
    /// Wall-clock UTC (ns) of the frame's presentation time.
    pub pts_utc_ns: i64,
    /// Wall-clock UTC (ns) of its decode time, when it differs (B-frames).
    pub dts_utc_ns: Option<i64>,
    pub keyframe: bool,
}

/// A keyframe as written to the ring, for whoever watches the recording (detection).
#[derive(Debug, Clone, Copy)]
pub struct Keyframe<'a> {
    pub camera: &'a str,
    pub format: StreamFormat,
    /// The access unit in Annex B, parameter sets included.
    pub data: &'a [u8],
    pub pts_utc_ns: i64,
}

/// Called with every keyframe right after it is written, under the writer's lock:
/// it must only copy and return (the recording never waits on detection).
pub type KeyframeTap = std::sync::Arc<dyn Fn(&Keyframe<'_>) + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFormat {
    pub codec: VideoCodec,
    pub width: u32,
    pub height: u32,
}

pub fn codec_name(c: VideoCodec) -> &'static str {
    match c {
        VideoCodec::H264 => "h264",
        VideoCodec::H265 => "h265",
    }
}

/// A frame this much later than the previous one's end is a gap, even if the camera
/// never disconnected (a stalled stream that resumed on its own).
const GAP_THRESHOLD_NS: i64 = 2_000_000_000;
const DEFAULT_FRAME_NS: i64 = 66_666_667;
/// Buffers this close together are parts of one frame (no camera runs at 500 fps).
const SAME_FRAME_NS: i64 = 2_000_000;
/// A camera's own clock is trusted only this close to the box clock (the ingests'
/// `MAX_CAMERA_SKEW_NS`): the most its times can add to the box clock's error.
const CAMERA_AGREEMENT_NS: i64 = 2_000_000_000;

#[derive(Debug, Clone, Copy)]
struct Pending {
    pts: i64,
    dts: Option<i64>,
    keyframe: bool,
}

struct Open {
    rel: String,
    file: BufWriter<File>,
    start_ns: i64,
    end_ns: i64,
    frames: u64,
    params: Option<Vec<u8>>,
    format: StreamFormat,
    new_keyframes: Vec<(i64, u64)>,
    /// The box clock epoch its times are on: one per segment (docs/time.md).
    epoch: i64,
    /// Extent at the last checkpoint that flushed cleanly: what is known to be in the
    /// file, whole frames only. A later failed write cuts the segment back to it.
    flushed: Extent,
    /// Extent at the last successful fsync. A failed fsync ends the segment here: what
    /// followed may never reach the disk, whatever a later fsync says.
    durable: Extent,
}

#[derive(Debug, Clone, Copy, Default)]
struct Extent {
    bytes: u64,
    end_ns: i64,
    frames: u64,
}

/// What the syncer must make durable and index for one camera.
pub struct Checkpoint {
    pub items: Vec<(SegmentProgress, File)>,
    /// Rows about bytes already durable (a segment closed at its last fsynced end).
    pub rows: Vec<SegmentProgress>,
    pub gaps: Vec<GapChange>,
}

/// A write or fsync of the recording failed: standing until frames written after it
/// are durable again. What `cameras`, `doctor` and the health events show.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DiskFault {
    /// What failed, on which path, with the errno.
    pub error: String,
    pub since_ns: i64,
}

pub struct SegmentWriter {
    camera: String,
    data_dir: PathBuf,
    segment_len_ns: i64,
    ts: Option<TsWriter>,
    format: Option<StreamFormat>,
    time_source: &'static str,
    /// The box clock epoch the camera's time line is on now (0: on the camera's own
    /// clock, which no box step moves). Segments and gaps carry it.
    epoch: i64,
    cur: Option<Open>,
    closed: Vec<(SegmentProgress, File)>,
    rows: Vec<SegmentProgress>,
    gaps: Vec<GapChange>,
    fault: Option<DiskFault>,
    /// Where the open gap ends once the frames after it are durable (while faulted).
    gap_close_at: Option<i64>,
    /// End of the last written frame; where the next gap would start.
    last_end_ns: Option<i64>,
    last_dts_ns: Option<i64>,
    frame_ns: i64,
    /// Reason for the gap that the next frame closes.
    down_reason: Option<String>,
    gap_open: bool,
    /// Non-picture NAL units waiting for the next picture (kept allocated).
    pending_prefix: Vec<u8>,
    /// The latest frame, held until we know no more of it is coming.
    pending: Option<Pending>,
    pending_data: Vec<u8>,
    tap: Option<KeyframeTap>,
    pub stats: WriterStats,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct WriterStats {
    pub frames: u64,
    pub bytes: u64,
    pub segments: u64,
    pub dropped_waiting_keyframe: u64,
    pub write_errors: u64,
    pub last_error: Option<String>,
}

impl SegmentWriter {
    /// `last_end_ns`: where this camera's recording stopped before (from the index), so
    /// the time the recorder was not running shows up as a gap.
    pub fn new(
        camera: &str,
        data_dir: &Path,
        segment_len_ns: i64,
        last_end_ns: Option<i64>,
    ) -> Self {
        SegmentWriter {
            camera: camera.to_string(),
            data_dir: data_dir.to_path_buf(),
            segment_len_ns,
            ts: None,
            format: None,
            time_source: "arrival",
            epoch: storeguard_base::clock::box_clock().epoch,
            cur: None,
            closed: Vec::new(),
            rows: Vec::new(),
            gaps: Vec::new(),
            fault: None,
            gap_close_at: None,
            last_end_ns,
            last_dts_ns: None,
            frame_ns: DEFAULT_FRAME_NS,
            down_reason: last_end_ns.map(|_| "recorder not running".to_string()),
            gap_open: false,
            pending_prefix: Vec::new(),
            pending: None,
            pending_data: Vec::new(),
            tap: None,
            stats: WriterStats::default(),
        }
    }

    pub fn camera(&self) -> &str {
        &self.camera
    }

    pub fn set_segment_len(&mut self, ns: i64) {
        self.segment_len_ns = ns;
    }

    pub fn set_tap(&mut self, tap: Option<KeyframeTap>) {
        self.tap = tap;
    }

    pub fn set_time_source(&mut self, s: &'static str) {
        self.time_source = s;
    }

    /// The camera's time line moved to another box clock epoch (the clock stepped), by
    /// `delta_ns`: frames from here on are on the new clock. The next keyframe (this
    /// one, normally) starts a new segment, and the time already written counts as
    /// moved too, so the step is neither a gap nor a jump back.
    pub fn rebase(&mut self, epoch: i64, delta_ns: i64) {
        if epoch == self.epoch && delta_ns == 0 {
            return;
        }
        if let Err(e) = self.flush_pending() {
            tracing::warn!(camera = %self.camera, error = %e, "writing the last frame failed");
        }
        self.epoch = epoch;
        if delta_ns != 0 {
            self.last_end_ns = self.last_end_ns.map(|t| t + delta_ns);
            self.last_dts_ns = self.last_dts_ns.map(|t| t + delta_ns);
        }
    }

    /// The stream (re)started with this format. A change of codec or size starts a new
    /// segment at the next keyframe, so every segment has one set of codec parameters.
    pub fn set_format(&mut self, f: StreamFormat) {
        if self.format != Some(f) {
            if self.ts.as_ref().map(|t| t.codec()) != Some(f.codec) {
                self.ts = Some(TsWriter::new(f.codec));
            }
            self.format = Some(f);
        }
    }

    /// The camera went away: close the segment now and open a gap that the next frame
    /// ends. The reason is what `cameras` and the index show for the gap.
    pub fn mark_down(&mut self, reason: &str, at_ns: i64) {
        if let Err(e) = self.flush_pending() {
            tracing::warn!(camera = %self.camera, error = %e, "writing the last frame failed");
        }
        self.close_current();
        if !self.gap_open {
            // The gap starts exactly where the recording ends, even when the last frame's
            // camera-clock time is a few ms ahead of ours: no overlap, no hole.
            let start = self.last_end_ns.unwrap_or(at_ns);
            self.gaps.push(GapChange::Open {
                camera: self.camera.clone(),
                start_ns: start,
                reason: reason.to_string(),
                epoch: self.epoch,
            });
            self.gap_open = true;
        }
        self.down_reason = Some(reason.to_string());
        self.last_dts_ns = None;
    }

    /// Takes one buffer from the camera. A frame can arrive split over several buffers
    /// (parameter sets alone, or slices of one picture with the same timestamp, as
    /// x264's sliced threads produce); they are joined into one access unit, so each
    /// frame is written, counted and indexed once. That holds the latest frame back
    /// until the next one starts (one frame interval) or the next checkpoint.
    pub fn write(&mut self, f: &Frame<'_>) -> io::Result<()> {
        let Some(format) = self.format else {
            return Err(io::Error::other("frame before stream format"));
        };
        if !ts::has_picture(format.codec, f.data) {
            // Parameter sets / SEI on their own: they belong to the next picture.
            self.flush_pending()?;
            self.pending_prefix.extend_from_slice(f.data);
            return Ok(());
        }
        // Parts of one frame share its timestamp; an upstream that split a frame and
        // stamped the parts apart still puts them far closer than any two frames.
        let same_frame = |p: &Pending| {
            let d = f.dts_utc_ns.unwrap_or(f.pts_utc_ns) - p.dts.unwrap_or(p.pts);
            (0..SAME_FRAME_NS).contains(&d)
        };
        if let Some(p) = &mut self.pending
            && same_frame(p)
            && self.pending_prefix.is_empty()
        {
            self.pending_data.extend_from_slice(f.data);
            p.keyframe |= f.keyframe;
            return Ok(());
        }
        self.flush_pending()?;
        self.pending_data.clear();
        self.pending_data.append(&mut self.pending_prefix);
        self.pending_data.extend_from_slice(f.data);
        self.pending = Some(Pending {
            pts: f.pts_utc_ns,
            dts: f.dts_utc_ns,
            keyframe: f.keyframe,
        });
        Ok(())
    }

    /// Writes the frame held back by `write`, if any.
    fn flush_pending(&mut self) -> io::Result<()> {
        let (Some(p), Some(format)) = (self.pending.take(), self.format) else {
            return Ok(());
        };
        let data = std::mem::take(&mut self.pending_data);
        let r = self.write_au(
            &Frame {
                data: &data,
                pts_utc_ns: p.pts,
                dts_utc_ns: p.dts,
                keyframe: p.keyframe,
            },
            format,
        );
        self.pending_data = data;
        self.pending_data.clear();
        r
    }

    fn write_au(&mut self, f: &Frame<'_>, format: StreamFormat) -> io::Result<()> {
        let dts = f.dts_utc_ns.unwrap_or(f.pts_utc_ns);
        if self.cur.is_none() && !f.keyframe {
            self.stats.dropped_waiting_keyframe += 1;
            return Ok(());
        }
        self.note_gap(dts);
        if let Some(prev) = self.last_dts_ns {
            let d = dts - prev;
            if d > 0 && d < 1_000_000_000 {
                // Smoothed so one late frame doesn't distort segment end times.
                self.frame_ns = (self.frame_ns * 7 + d) / 8;
            }
        }
        self.last_dts_ns = Some(dts);

        let codec = format.codec;
        let params = if f.keyframe {
            ts::parameter_sets(codec, f.data).map(|p| encode_params(&p))
        } else {
            None
        };
        let rotate = match &self.cur {
            None => true,
            Some(c) => {
                f.keyframe
                    && (dts - c.start_ns >= self.segment_len_ns
                        || c.epoch != self.epoch
                        || c.format != format
                        || (params.is_some() && c.params.is_some() && params != c.params))
            }
        };
        if rotate {
            self.close_current();
            if let Err(e) = self.open(f.pts_utc_ns.min(dts), format, params.clone()) {
                self.record_error(e.to_string());
                let at = self.last_end_ns.unwrap_or(dts);
                self.mark_down(&format!("cannot create a segment: {e}"), at);
                return Err(e);
            }
        }
        let ts_w = self.ts.as_mut().expect("format set");
        let cur = self.cur.as_mut().expect("segment open");
        let r = ts_w.write_access_unit(
            &mut cur.file,
            f.data,
            utc_to_90k(f.pts_utc_ns),
            f.dts_utc_ns.map(utc_to_90k),
            f.keyframe,
        );
        match r {
            Ok(w) => {
                if f.keyframe {
                    cur.new_keyframes.push((f.pts_utc_ns, w.offset));
                    if cur.params.is_none() {
                        cur.params = params;
                    }
                }
                cur.frames += 1;
                cur.end_ns = cur.end_ns.max(dts + self.frame_ns);
                self.last_end_ns = Some(cur.end_ns);
                self.stats.frames += 1;
                self.stats.bytes += w.bytes;
                if f.keyframe
                    && let Some(tap) = &self.tap
                {
                    tap(&Keyframe {
                        camera: &self.camera,
                        format,
                        data: f.data,
                        pts_utc_ns: f.pts_utc_ns,
                    });
                }
                Ok(())
            }
            Err(e) => {
                // The file's tail is undefined now: the segment ends where its last
                // flushed frame ended, and the lost time is a gap, never silent.
                let path = self.data_dir.join(&cur.rel);
                self.record_error(format!("writing {}: {e}", path.display()));
                if let Some(c) = self.cur.take() {
                    self.finish(c);
                }
                let at = self.last_end_ns.unwrap_or(dts);
                self.mark_down(&format!("write failed: {e}"), at);
                Err(e)
            }
        }
    }

    fn note_gap(&mut self, dts: i64) {
        if self.gap_open && self.fault.is_some() {
            // Frames again, but on a failing disk: the gap ends only once they are durable.
            self.gap_close_at.get_or_insert(dts);
        } else if self.gap_open {
            self.gaps.push(GapChange::Close {
                camera: self.camera.clone(),
                end_ns: dts,
            });
            self.gap_open = false;
            self.down_reason = None;
        } else if let Some(end) = self.last_end_ns
            && dts - end
                > if self.down_reason.is_some() {
                    // A known outage (the recorder restarted) is a gap however short: a
                    // quick restart still leaves a hole in the index.
                    self.frame_ns / 2
                } else {
                    GAP_THRESHOLD_NS
                }
        {
            let reason = self
                .down_reason
                .take()
                .unwrap_or_else(|| "no frames received".into());
            self.gaps.push(GapChange::Closed {
                camera: self.camera.clone(),
                start_ns: end,
                end_ns: dts,
                reason,
                epoch: self.epoch,
            });
        }
        self.down_reason = None;
    }

    fn open(
        &mut self,
        start_ns: i64,
        format: StreamFormat,
        params: Option<Vec<u8>>,
    ) -> io::Result<()> {
        let rel = segment_rel_path(&self.camera, start_ns);
        let abs = self.data_dir.join(&rel);
        let created = (|| {
            if let Some(dir) = abs.parent() {
                std::fs::create_dir_all(dir)?;
            }
            OpenOptions::new().write(true).create_new(true).open(&abs)
        })();
        let file = created
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", abs.display())))?;
        self.ts.as_mut().expect("format set").start_file();
        self.cur = Some(Open {
            rel,
            file: BufWriter::with_capacity(128 * 1024, file),
            start_ns,
            end_ns: start_ns,
            frames: 0,
            params,
            format,
            new_keyframes: Vec::new(),
            epoch: self.epoch,
            flushed: Extent {
                bytes: 0,
                end_ns: start_ns,
                frames: 0,
            },
            durable: Extent {
                bytes: 0,
                end_ns: start_ns,
                frames: 0,
            },
        });
        self.stats.segments += 1;
        Ok(())
    }

    fn close_current(&mut self) {
        if let Some(c) = self.cur.take() {
            self.finish(c);
        }
    }

    /// Closes a segment and queues it for the syncer. If its buffered tail can't be
    /// written (disk full), the file is cut back to the last clean checkpoint and indexed
    /// as that: a segment the index doesn't know would never be evicted.
    fn finish(&mut self, mut c: Open) {
        let flushed = c.file.flush();
        if flushed.is_ok() {
            let bytes = self.bytes_of(&c);
            let p = progress(
                &self.camera,
                &c.rel,
                &c,
                bytes,
                STATE_CLOSED,
                self.time_source,
            );
            self.closed.push((p, into_file(c.file)));
            return;
        }
        let keep = c.flushed;
        if let Err(e) = &flushed {
            tracing::error!(camera = %self.camera, path = %c.rel, error = %e, kept_bytes = keep.bytes, "closing segment failed; keeping what was flushed before");
            let path = self.data_dir.join(&c.rel);
            self.record_error(format!("writing {}: {e}", path.display()));
            // The time after the kept part is lost: the next frame states it as a gap.
            self.down_reason = Some(format!("write failed: {e}"));
        }
        self.last_end_ns = Some(keep.end_ns);
        c.end_ns = keep.end_ns;
        c.frames = keep.frames;
        c.new_keyframes.retain(|k| k.1 < keep.bytes);
        let p = progress(
            &self.camera,
            &c.rel,
            &c,
            keep.bytes,
            STATE_CLOSED,
            self.time_source,
        );
        let abs = self.data_dir.join(&c.rel);
        let file = into_file(c.file);
        if keep.frames == 0 {
            drop(file);
            if let Err(e) = std::fs::remove_file(&abs) {
                tracing::warn!(path = %abs.display(), error = %e, "removing an empty segment failed");
            }
            return;
        }
        // Cutting the unflushed tail also gives its space back.
        if let Err(e) = file.set_len(keep.bytes) {
            tracing::warn!(path = %abs.display(), error = %e, "cutting a segment back to its flushed end failed");
        }
        self.closed.push((p, file));
    }

    fn bytes_of(&self, c: &Open) -> u64 {
        c.file.get_ref().metadata().map(|m| m.len()).unwrap_or(0)
    }

    /// Hands everything written since the last checkpoint to the syncer: flushes the
    /// buffer and returns file handles to fsync plus the rows to commit afterwards.
    pub fn checkpoint(&mut self) -> Checkpoint {
        // The held-back frame is complete by now (a frame's parts arrive back to back).
        if let Err(e) = self.flush_pending() {
            tracing::warn!(camera = %self.camera, error = %e, "writing the last frame failed");
        }
        let mut items = std::mem::take(&mut self.closed);
        if let Some(mut c) = self.cur.take() {
            let flushed = c.file.flush();
            match (flushed, c.file.get_ref().try_clone()) {
                (Ok(()), Ok(f)) => {
                    let bytes = self.bytes_of(&c);
                    c.flushed = Extent {
                        bytes,
                        end_ns: c.end_ns,
                        frames: c.frames,
                    };
                    let mut p = progress(
                        &self.camera,
                        &c.rel,
                        &c,
                        bytes,
                        STATE_OPEN,
                        self.time_source,
                    );
                    p.new_keyframes = std::mem::take(&mut c.new_keyframes);
                    items.push((p, f));
                    self.cur = Some(c);
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(camera = %self.camera, path = %c.rel, error = %e, "flushing segment failed; closing it");
                    let path = self.data_dir.join(&c.rel);
                    self.record_error(format!("writing {}: {e}", path.display()));
                    self.finish(c);
                    items.append(&mut self.closed);
                    let at = self.last_end_ns.unwrap_or(0);
                    self.mark_down(&format!("write failed: {e}"), at);
                }
            }
        }
        Checkpoint {
            items,
            rows: std::mem::take(&mut self.rows),
            gaps: std::mem::take(&mut self.gaps),
        }
    }

    /// The standing write fault, if any.
    pub fn fault(&self) -> Option<&DiskFault> {
        self.fault.as_ref()
    }

    fn record_error(&mut self, error: String) {
        // Whatever was written since the gap is lost with it: the gap ends later.
        self.gap_close_at = None;
        self.stats.write_errors += 1;
        self.stats.last_error = Some(error.clone());
        match &mut self.fault {
            Some(f) => f.error = error,
            None => {
                self.fault = Some(DiskFault {
                    error,
                    since_ns: storeguard_base::now_ns(),
                })
            }
        }
    }

    /// The syncer fsynced `p`'s bytes. Frames written after the fault began being durable
    /// end the fault, and the gap it opened.
    pub fn synced(&mut self, p: &SegmentProgress) {
        if let Some(c) = self.cur.as_mut().filter(|c| c.rel == p.path) {
            c.durable = Extent {
                bytes: p.bytes,
                end_ns: p.end_ns,
                frames: p.frames,
            };
        }
        let Some(f) = &self.fault else {
            return;
        };
        if p.frames == 0 || p.end_ns <= f.since_ns {
            return;
        }
        tracing::info!(camera = %self.camera, path = %p.path, "recording is durable again");
        self.fault = None;
        if let Some(end_ns) = self.gap_close_at.take()
            && self.gap_open
        {
            self.gaps.push(GapChange::Close {
                camera: self.camera.clone(),
                end_ns,
            });
            self.gap_open = false;
            self.down_reason = None;
        }
    }

    /// fsync of `p`'s file failed: nothing after its last durable point can be trusted
    /// (a later fsync may report success for pages the kernel already dropped), so the
    /// segment ends there and the time since is a gap.
    pub fn sync_failed(&mut self, p: &SegmentProgress, e: &io::Error) {
        let path = self.data_dir.join(&p.path);
        self.record_error(format!("fsync {}: {e}", path.display()));
        let reason = format!("fsync failed: {e}");
        let Some(c) = self.cur.take_if(|c| c.rel == p.path) else {
            // A closed segment: its unsynced tail is unknown, so all of it is stated.
            self.gaps.push(GapChange::Closed {
                camera: self.camera.clone(),
                start_ns: p.start_ns,
                end_ns: p.end_ns,
                reason,
                epoch: p.clock_epoch,
            });
            return;
        };
        let d = c.durable;
        let file = into_file(c.file);
        if d.frames == 0 {
            drop(file);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "removing a segment that never became durable failed");
            }
        } else {
            let _ = file.set_len(d.bytes);
            let mut row = p.clone();
            (row.bytes, row.end_ns, row.frames) = (d.bytes, d.end_ns, d.frames);
            row.state = STATE_CLOSED;
            row.new_keyframes.clear();
            self.rows.push(row);
        }
        self.last_end_ns = Some(if d.frames == 0 { c.start_ns } else { d.end_ns });
        self.gap_close_at = None;
        let at = self.last_end_ns.unwrap_or(p.start_ns);
        self.mark_down(&reason, at);
    }

    /// Closes the open segment (shutdown, camera removed). No gap is opened: the next
    /// start records the downtime as "recorder not running" once frames flow again.
    pub fn finish_all(&mut self) {
        if let Err(e) = self.flush_pending() {
            tracing::warn!(camera = %self.camera, error = %e, "writing the last frame failed");
        }
        self.close_current();
    }

    pub fn written_until(&self) -> Option<i64> {
        self.last_end_ns
    }

    pub fn current_path(&self) -> Option<&str> {
        self.cur.as_ref().map(|c| c.rel.as_str())
    }
}

/// The file under a buffered writer, dropping whatever it could not write.
fn into_file(w: BufWriter<File>) -> File {
    w.into_parts().0
}

fn progress(
    camera: &str,
    rel: &str,
    c: &Open,
    bytes: u64,
    state: i64,
    time_source: &'static str,
) -> SegmentProgress {
    let clock = storeguard_base::clock::box_clock();
    SegmentProgress {
        camera: camera.to_string(),
        path: rel.to_string(),
        start_ns: c.start_ns,
        end_ns: c.end_ns,
        bytes,
        frames: c.frames,
        codec: codec_name(c.format.codec),
        width: c.format.width,
        height: c.format.height,
        params: c.params.clone(),
        time_source,
        state,
        new_keyframes: c.new_keyframes.clone(),
        clock_epoch: c.epoch,
        time_synced: clock.synced,
        // A camera's clock is used only within 2 s of the box clock.
        time_error_ns: clock.error_ns.map(|e| {
            if time_source == "ntp" {
                e + CAMERA_AGREEMENT_NS
            } else {
                e
            }
        }),
    }
}

/// Parameter sets as one Annex B blob (VPS, SPS, PPS), for the index. Repeats are
/// dropped: a parser re-inserting SPS/PPS in front of the encoder's own copies is not
/// a change of parameters.
fn encode_params(p: &ts::ParameterSets<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    let mut seen: Vec<&[u8]> = Vec::new();
    for nal in p.vps.iter().chain(&p.sps).chain(&p.pps) {
        if seen.contains(nal) {
            continue;
        }
        seen.push(nal);
        v.extend_from_slice(&[0, 0, 0, 1]);
        v.extend_from_slice(nal);
    }
    v
}

/// 90 kHz timestamps derived from UTC: a gap in time stays a gap in PTS, and a reader
/// can recover wall time from any PTS given the segment's start.
pub fn utc_to_90k(ns: i64) -> u64 {
    ((ns as i128 * 9 / 100_000) as u64) & ((1 << 33) - 1)
}

/// `recordings/<camera>/<YYYYMMDD>/<camera>-<YYYYMMDDTHHMMSS.mmmZ>.ts`: sorted by time,
/// and the start time survives even if the index is lost.
pub fn segment_rel_path(camera: &str, start_ns: i64) -> String {
    let t = chrono::DateTime::from_timestamp_nanos(start_ns);
    format!(
        "recordings/{camera}/{}/{camera}-{}.ts",
        day_dir_name(start_ns),
        t.format("%Y%m%dT%H%M%S%.3fZ")
    )
}

/// The day directory (`YYYYMMDD`, UTC) a segment starting at `ns` goes in.
pub fn day_dir_name(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .format("%Y%m%d")
        .to_string()
}

/// Inverse of `segment_rel_path` for the time part, used to index orphan files.
pub fn start_from_file_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".ts")?;
    let ts = stem.rsplit('-').next()?;
    let t = chrono::NaiveDateTime::parse_from_str(ts, "%Y%m%dT%H%M%S%.3fZ").ok()?;
    t.and_utc().timestamp_nanos_opt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        let ns = 1_795_000_000_123_000_000;
        let rel = segment_rel_path("cam1", ns);
        assert!(rel.starts_with("recordings/cam1/"), "{rel}");
        let name = rel.rsplit('/').next().unwrap();
        assert_eq!(start_from_file_name(name), Some(ns));
    }

    #[test]
    fn pts_follows_utc() {
        assert_eq!(utc_to_90k(1_000_000_000), 90_000);
        assert_eq!(
            utc_to_90k(2_000_000_000) - utc_to_90k(1_000_000_000),
            90_000
        );
    }
}
