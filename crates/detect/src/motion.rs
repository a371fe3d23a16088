//! Motion gating: which frames need the detector at all, and where to look.
//!
//! Runs on a small luma frame (the decoder's cheap 64–160 px wide copy). Inference costs
//! tens of milliseconds; with 20–24 cameras on two cores it only runs where something moves,
//! on crops at the model's native size, plus a slow full-frame refresh for people who stand
//! still (they fade into the background model).

use crate::frame::{FrameError, Luma};
use crate::geom::{Polygon, Rect};
use std::time::Duration;

/// Background model and change thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct MotionConfig {
    /// A pixel moved when it differs from the background by more than this (luma levels):
    /// above sensor noise and compression shimmer.
    pub threshold: u8,
    /// Background learning per frame where nothing moved.
    pub learn_rate: f32,
    /// Slower where something moved, so a walker leaves no ghost but a parked trolley
    /// becomes background in the end.
    pub moving_learn_rate: f32,
    /// Frames that only build the background.
    pub warmup_frames: u32,
    /// Side of the grid cells, in small-frame pixels: single pixels are noise, cells of
    /// changed pixels are motion.
    pub cell: usize,
    /// The share of a cell's pixels that must change for the cell to count.
    pub cell_fraction: f32,
    /// A change over more than this share of the unmasked picture at once is lighting or a
    /// camera's exposure, not an object: the background is relearned and the whole frame
    /// reported, so the detector looks everywhere once.
    pub relearn_fraction: f32,
}

impl Default for MotionConfig {
    fn default() -> Self {
        MotionConfig {
            threshold: 20,
            learn_rate: 0.05,
            moving_learn_rate: 0.005,
            warmup_frames: 5,
            cell: 4,
            cell_fraction: 0.3,
            relearn_fraction: 0.6,
        }
    }
}

/// Pixels of the small frame whose motion is ignored (a TV screen, a road behind the
/// window): the camera's mask polygons, rasterised once.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    width: usize,
    height: usize,
    excluded: Vec<bool>,
}

impl Mask {
    /// A pixel is excluded when its centre lies inside any polygon.
    pub fn new(polygons: &[Polygon], width: usize, height: usize) -> Mask {
        let mut excluded = vec![false; width * height];
        for p in polygons {
            // Only the polygon's bounding box can hold its pixels.
            let b = p
                .bounds()
                .scale(width as f32, height as f32)
                .clamp(width as f32, height as f32);
            for y in b.y0 as usize..(b.y1.ceil() as usize).min(height) {
                for x in b.x0 as usize..(b.x1.ceil() as usize).min(width) {
                    let (nx, ny) = (
                        (x as f32 + 0.5) / width as f32,
                        (y as f32 + 0.5) / height as f32,
                    );
                    if p.contains(nx, ny) {
                        excluded[y * width + x] = true;
                    }
                }
            }
        }
        Mask {
            width,
            height,
            excluded,
        }
    }

    pub fn is_excluded(&self, x: usize, y: usize) -> bool {
        x < self.width && y < self.height && self.excluded[y * self.width + x]
    }

    pub fn excluded_count(&self) -> usize {
        self.excluded.iter().filter(|&&e| e).count()
    }
}

/// What one frame showed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Motion {
    /// Normalised boxes around moving regions, disjoint.
    pub boxes: Vec<Rect>,
    /// Share of unmasked pixels that changed.
    pub changed: f32,
    /// The background was relearned (see [`MotionConfig::relearn_fraction`]).
    pub relearned: bool,
}

/// A running-average background per camera.
#[derive(Debug, Clone)]
pub struct MotionDetector {
    cfg: MotionConfig,
    width: usize,
    height: usize,
    mask: Mask,
    background: Vec<f32>,
    frames: u32,
}

impl MotionDetector {
    pub fn new(
        cfg: MotionConfig,
        width: usize,
        height: usize,
        masks: &[Polygon],
    ) -> Result<MotionDetector, FrameError> {
        if width == 0 || height == 0 {
            return Err(FrameError::Empty { width, height });
        }
        Ok(MotionDetector {
            mask: Mask::new(masks, width, height),
            background: Vec::new(),
            cfg,
            width,
            height,
            frames: 0,
        })
    }

    pub fn mask(&self) -> &Mask {
        &self.mask
    }

    /// The small frame's size it expects.
    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    pub fn update(&mut self, f: &Luma) -> Result<Motion, FrameError> {
        f.expect_size(self.width, self.height)?;
        let px = f.data();
        if self.background.is_empty() {
            self.background = px.iter().map(|&v| f32::from(v)).collect();
        }
        self.frames = self.frames.saturating_add(1);
        let warm = self.frames > self.cfg.warmup_frames;

        let thr = f32::from(self.cfg.threshold);
        let mut moved = vec![false; px.len()];
        let (mut n_moved, mut n_open) = (0usize, 0usize);
        for (i, (&v, bg)) in px.iter().zip(self.background.iter_mut()).enumerate() {
            let v = f32::from(v);
            let m = (v - *bg).abs() > thr && !self.mask.excluded[i];
            moved[i] = m;
            n_moved += usize::from(m);
            n_open += usize::from(!self.mask.excluded[i]);
            let rate = if m && warm {
                self.cfg.moving_learn_rate
            } else {
                self.cfg.learn_rate
            };
            *bg += (v - *bg) * rate;
        }
        let changed = if n_open > 0 {
            n_moved as f32 / n_open as f32
        } else {
            0.0
        };
        if !warm {
            return Ok(Motion::default());
        }
        if changed > self.cfg.relearn_fraction {
            self.background = px.iter().map(|&v| f32::from(v)).collect();
            return Ok(Motion {
                boxes: vec![Rect::UNIT],
                changed,
                relearned: true,
            });
        }
        Ok(Motion {
            boxes: self.regions(&moved),
            changed,
            relearned: false,
        })
    }

    /// Cells with enough moved pixels, grouped 8-connected, as normalised boxes.
    fn regions(&self, moved: &[bool]) -> Vec<Rect> {
        let cell = self.cfg.cell.max(1);
        let (gw, gh) = (self.width.div_ceil(cell), self.height.div_ceil(cell));
        let mut count = vec![0u32; gw * gh];
        let mut size = vec![0u32; gw * gh];
        for y in 0..self.height {
            for x in 0..self.width {
                let c = (y / cell) * gw + x / cell;
                size[c] += 1;
                count[c] += u32::from(moved[y * self.width + x]);
            }
        }
        let mut active: Vec<bool> = count
            .iter()
            .zip(&size)
            .map(|(&n, &s)| n > 0 && n as f32 >= self.cfg.cell_fraction * s as f32)
            .collect();
        let mut boxes = Vec::new();
        let mut stack = Vec::new();
        for start in 0..active.len() {
            if !active[start] {
                continue;
            }
            active[start] = false;
            stack.push(start);
            let (mut x0, mut y0, mut x1, mut y1) = (gw, gh, 0, 0);
            while let Some(c) = stack.pop() {
                let (cx, cy) = (c % gw, c / gw);
                (x0, y0, x1, y1) = (x0.min(cx), y0.min(cy), x1.max(cx), y1.max(cy));
                for ny in cy.saturating_sub(1)..(cy + 2).min(gh) {
                    for nx in cx.saturating_sub(1)..(cx + 2).min(gw) {
                        let n = ny * gw + nx;
                        if active[n] {
                            active[n] = false;
                            stack.push(n);
                        }
                    }
                }
            }
            let r = Rect::new(
                (x0 * cell) as f32,
                (y0 * cell) as f32,
                ((x1 + 1) * cell).min(self.width) as f32,
                ((y1 + 1) * cell).min(self.height) as f32,
            );
            boxes.push(r.normalise(self.width as f32, self.height as f32));
        }
        merge_overlapping(boxes, |a, b| a.union(b))
    }
}

/// Merges boxes that overlap until none do, with `join` making the merged box.
fn merge_overlapping(mut boxes: Vec<Rect>, join: impl Fn(&Rect, &Rect) -> Rect) -> Vec<Rect> {
    'again: loop {
        for i in 0..boxes.len() {
            for j in i + 1..boxes.len() {
                if boxes[i].overlaps(&boxes[j]) {
                    let b = boxes.swap_remove(j);
                    boxes[i] = join(&boxes[i], &b);
                    continue 'again;
                }
            }
        }
        return boxes;
    }
}

/// How motion boxes become model inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct CropPlan {
    /// The model's input side: a crop is never smaller, so a distant person on a 1080p
    /// frame is seen at native resolution instead of shrunk 4.6 times with the whole frame.
    pub model_input: u32,
    /// Context around the motion on each side, as a share of the box's size: motion often
    /// covers only the moving limbs.
    pub margin: f32,
    /// Inferences per frame at most; more regions are merged, nearest first.
    pub max_crops: usize,
    /// When crops would cover this share of the frame, one full-frame inference is cheaper.
    pub full_frame_above: f32,
}

impl Default for CropPlan {
    fn default() -> Self {
        CropPlan {
            model_input: crate::model::INPUT_SIZE as u32,
            margin: 0.25,
            max_crops: 3,
            full_frame_above: 0.5,
        }
    }
}

/// Crops (frame pixels, whole numbers) around normalised motion boxes. Crops are square
/// where the frame allows, because the model stretches its input to a square: a square
/// crop keeps people's proportions.
pub fn plan_crops(motion: &[Rect], frame_w: u32, frame_h: u32, p: &CropPlan) -> Vec<Rect> {
    let (fw, fh) = (frame_w as f32, frame_h as f32);
    if frame_w == 0 || frame_h == 0 {
        return Vec::new();
    }
    let whole = vec![Rect::frame(fw, fh)];
    let fit = |r: &Rect| fit_crop(r, fw, fh, p.model_input as f32);
    let crops: Vec<Rect> = motion
        .iter()
        .filter(|m| m.is_finite())
        .map(|m| m.clamp(1.0, 1.0).scale(fw, fh))
        .filter(|m| m.area() > 0.0)
        .map(|m| fit(&m.expand(m.width() * p.margin, m.height() * p.margin)))
        .collect();
    if crops.is_empty() {
        return Vec::new();
    }
    if p.max_crops == 0 {
        return whole;
    }
    let mut crops = merge_overlapping(crops, |a, b| fit(&a.union(b)));
    while crops.len() > p.max_crops {
        // The pair whose merge adds the least new area.
        let mut best = (0, 1, f32::MAX);
        for i in 0..crops.len() {
            for j in i + 1..crops.len() {
                let cost = crops[i].union(&crops[j]).area() - crops[i].area() - crops[j].area();
                if cost < best.2 {
                    best = (i, j, cost);
                }
            }
        }
        let b = crops.swap_remove(best.1);
        crops[best.0] = fit(&crops[best.0].union(&b));
        crops = merge_overlapping(crops, |a, b| fit(&a.union(b)));
    }
    let covered: f32 = crops.iter().map(Rect::area).sum();
    if covered >= p.full_frame_above * fw * fh {
        return whole;
    }
    // Whole pixels for the cropper; rounding the size separately keeps it at the input size.
    crops
        .iter()
        .map(|c| {
            Rect::from_xywh(
                c.x0.round(),
                c.y0.round(),
                c.width().round(),
                c.height().round(),
            )
            .clamp(fw, fh)
        })
        .collect()
}

/// `r` grown to a square of at least `min_side` around its centre (each side capped by the
/// frame), then moved, not cut, to lie inside the frame.
fn fit_crop(r: &Rect, fw: f32, fh: f32, min_side: f32) -> Rect {
    let side = r.width().max(r.height()).max(min_side);
    let (w, h) = (side.min(fw), side.min(fh));
    let (cx, cy) = r.centre();
    let x0 = (cx - w / 2.0).clamp(0.0, fw - w);
    let y0 = (cy - h / 2.0).clamp(0.0, fh - h);
    Rect::from_xywh(x0, y0, w, h)
}

/// What to run the detector on for one frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Nothing moved: an inference saved.
    Skip,
    /// These regions, frame pixels.
    Crops(Vec<Rect>),
    /// The whole frame.
    Full(Rect),
}

/// Per camera: how many frames were asked about and how each was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GateStats {
    pub frames: u64,
    /// Frames where motion said no: inferences saved.
    pub skipped: u64,
    pub cropped: u64,
    pub full: u64,
    /// Of `full`, those run only because the refresh was due.
    pub refreshes: u64,
}

/// Motion gate with the slow refresh: every `refresh` the whole frame is inferred even
/// without motion, so a person who stands still (and so has faded into the background) is
/// still seen, and the tracker keeps them. Only while someone could be standing there:
/// someone is tracked, or something moved since the last full look. Nobody arrives
/// without moving, so a scene that stayed empty and still costs no inference at all.
#[derive(Debug, Clone)]
pub struct Gate {
    refresh_ns: i64,
    last_full_ns: Option<i64>,
    moved_since_full: bool,
    plan: CropPlan,
    stats: GateStats,
}

impl Gate {
    pub fn new(refresh: Duration, plan: CropPlan) -> Gate {
        Gate {
            refresh_ns: i64::try_from(refresh.as_nanos()).unwrap_or(i64::MAX),
            last_full_ns: None,
            moved_since_full: false,
            plan,
            stats: GateStats::default(),
        }
    }

    pub fn stats(&self) -> &GateStats {
        &self.stats
    }

    /// `motion` as from [`MotionDetector::update`]; the frame's size in pixels;
    /// `tracking`: the camera's tracker holds someone.
    pub fn decide(
        &mut self,
        at_ns: i64,
        motion: &[Rect],
        frame_w: u32,
        frame_h: u32,
        tracking: bool,
    ) -> Plan {
        self.stats.frames += 1;
        let whole = Rect::frame(frame_w as f32, frame_h as f32);
        self.moved_since_full |= !motion.is_empty();
        let watching = tracking || self.moved_since_full;
        // A clock stepped backwards also makes a refresh due, rather than none for a long time.
        let due = match self.last_full_ns {
            None => true,
            Some(t) => watching && (at_ns < t || at_ns.saturating_sub(t) >= self.refresh_ns),
        };
        let crops = plan_crops(motion, frame_w, frame_h, &self.plan);
        if crops.is_empty() && !due {
            self.stats.skipped += 1;
            return Plan::Skip;
        }
        if due || crops == [whole] {
            if crops.is_empty() {
                self.stats.refreshes += 1;
            }
            self.stats.full += 1;
            self.last_full_ns = Some(at_ns);
            self.moved_since_full = false;
            return Plan::Full(whole);
        }
        self.stats.cropped += 1;
        Plan::Crops(crops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Lcg, with_block};

    const W: usize = 96;
    const H: usize = 64;

    /// A flat grey frame with ±3 levels of sensor noise.
    fn noisy(r: &mut Lcg, base: &[u8]) -> Vec<u8> {
        base.iter()
            .map(|&v| v.saturating_add(r.byte() % 7).saturating_sub(3))
            .collect()
    }

    fn run(d: &mut MotionDetector, frame: &[u8]) -> Motion {
        d.update(&Luma::new(frame, W, H).unwrap()).unwrap()
    }

    #[test]
    fn static_noisy_frames_show_no_motion_after_warm_up() {
        let mut d = MotionDetector::new(MotionConfig::default(), W, H, &[]).unwrap();
        let mut r = Lcg(7);
        let base = vec![120u8; W * H];
        for _ in 0..50 {
            let m = run(&mut d, &noisy(&mut r, &base));
            assert!(m.boxes.is_empty() && !m.relearned, "{m:?}");
        }
    }

    #[test]
    fn a_moving_block_gets_a_box_around_it() {
        let mut d = MotionDetector::new(MotionConfig::default(), W, H, &[]).unwrap();
        let mut r = Lcg(1);
        let empty = vec![100u8; W * H];
        for _ in 0..10 {
            run(&mut d, &noisy(&mut r, &empty));
        }
        for step in 0..10 {
            let x = 10 + step * 4;
            let frame = noisy(&mut r, &with_block(W, H, 100, 200, [x, 20, 12, 24]));
            let m = run(&mut d, &frame);
            assert_eq!(m.boxes.len(), 1, "step {step}: {m:?}");
            let b = m.boxes[0].scale(W as f32, H as f32);
            // Holds the block, within a cell of slack on each side.
            let block = Rect::from_xywh(x as f32, 20.0, 12.0, 24.0);
            assert!(b.intersection(&block) == Some(block), "step {step}: {b:?}");
            assert!(
                b.area() <= block.expand(8.0, 4.0).area(),
                "step {step}: {b:?}"
            );
        }
    }

    #[test]
    fn motion_inside_a_mask_is_ignored() {
        // The right half is masked (a screen showing adverts).
        let screen = Polygon::new(vec![[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]).unwrap();
        let mut d = MotionDetector::new(MotionConfig::default(), W, H, &[screen]).unwrap();
        assert_eq!(d.mask().excluded_count(), W * H / 2);
        let empty = vec![100u8; W * H];
        for _ in 0..10 {
            run(&mut d, &empty);
        }
        let m = run(&mut d, &with_block(W, H, 100, 220, [60, 10, 20, 20]));
        assert!(m.boxes.is_empty(), "{m:?}");
        let m = run(&mut d, &with_block(W, H, 100, 220, [10, 10, 20, 20]));
        assert_eq!(m.boxes.len(), 1);
    }

    #[test]
    fn a_light_switch_relearns_and_looks_everywhere_once() {
        let mut d = MotionDetector::new(MotionConfig::default(), W, H, &[]).unwrap();
        for _ in 0..10 {
            run(&mut d, &vec![60u8; W * H]);
        }
        let m = run(&mut d, &vec![160u8; W * H]);
        assert!(m.relearned);
        assert_eq!(m.boxes, [Rect::UNIT]);
        assert!(run(&mut d, &vec![160u8; W * H]).boxes.is_empty());
    }

    #[test]
    fn wrong_frame_size_is_an_error() {
        let mut d = MotionDetector::new(MotionConfig::default(), W, H, &[]).unwrap();
        let small = vec![0u8; 10];
        assert!(d.update(&Luma::new(&small, 5, 2).unwrap()).is_err());
        assert!(MotionDetector::new(MotionConfig::default(), 0, 10, &[]).is_err());
    }

    #[test]
    fn a_distant_person_gets_a_native_resolution_crop() {
        // A 40x90 px figure on a 1080p frame.
        let m = Rect::new(1500.0, 300.0, 1540.0, 390.0).normalise(1920.0, 1080.0);
        let c = plan_crops(&[m], 1920, 1080, &CropPlan::default());
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].width(), c[0].height()), (416.0, 416.0));
        assert!(
            c[0].intersection(&Rect::new(1500.0, 300.0, 1540.0, 390.0))
                .is_some()
        );
        assert_eq!(c[0].centre(), (1520.0, 345.0));
    }

    #[test]
    fn crops_stay_inside_the_frame_and_merge_when_they_overlap() {
        let px = |x0, y0, x1, y1| Rect::new(x0, y0, x1, y1).normalise(1920.0, 1080.0);
        // In the corner: moved inside, not cut.
        let c = plan_crops(
            &[px(0.0, 1050.0, 20.0, 1080.0)],
            1920,
            1080,
            &CropPlan::default(),
        );
        assert_eq!(c, [Rect::new(0.0, 664.0, 416.0, 1080.0)]);
        // Two boxes 100 px apart: one crop holding both.
        let c = plan_crops(
            &[
                px(500.0, 500.0, 540.0, 600.0),
                px(640.0, 500.0, 680.0, 600.0),
            ],
            1920,
            1080,
            &CropPlan::default(),
        );
        assert_eq!(c.len(), 1);
        assert!(c[0].x0 <= 500.0 && c[0].x1 >= 680.0, "{c:?}");
        // Far apart: two.
        let two = [
            px(100.0, 100.0, 140.0, 200.0),
            px(1700.0, 800.0, 1740.0, 900.0),
        ];
        assert_eq!(plan_crops(&two, 1920, 1080, &CropPlan::default()).len(), 2);
    }

    #[test]
    fn crops_are_capped_then_full_frame() {
        let px = |x: f32, y: f32| Rect::from_xywh(x, y, 30.0, 60.0).normalise(1920.0, 1080.0);
        let many = [
            px(50.0, 50.0),
            px(1800.0, 50.0),
            px(50.0, 950.0),
            px(1800.0, 950.0),
        ];
        let cap = CropPlan {
            full_frame_above: 1.0,
            ..CropPlan::default()
        };
        assert_eq!(plan_crops(&many, 1920, 1080, &cap).len(), 3);
        // Capped at 3, the merge makes a crop over half the frame: the whole frame instead.
        assert_eq!(
            plan_crops(&many, 1920, 1080, &CropPlan::default()),
            [Rect::frame(1920.0, 1080.0)]
        );
        // A sub-stream smaller than the model input is always inferred whole.
        let c = plan_crops(
            &[Rect::new(0.1, 0.1, 0.2, 0.2)],
            640,
            360,
            &CropPlan::default(),
        );
        assert_eq!(c, [Rect::frame(640.0, 360.0)]);
        // Nothing, empty, NaN or zero-size frames: no crops and no panic.
        assert!(plan_crops(&[], 1920, 1080, &CropPlan::default()).is_empty());
        assert!(
            plan_crops(
                &[Rect::new(f32::NAN, 0.0, 1.0, 1.0)],
                1920,
                1080,
                &CropPlan::default()
            )
            .is_empty()
        );
        assert!(plan_crops(&[Rect::UNIT], 0, 0, &CropPlan::default()).is_empty());
    }

    #[test]
    fn gate_skips_without_motion_and_refreshes_on_time() {
        const S: i64 = 1_000_000_000;
        let mut g = Gate::new(Duration::from_secs(10), CropPlan::default());
        let still: &[Rect] = &[];
        let walker = [Rect::new(0.5, 0.5, 0.52, 0.6)];
        // The first frame is always a full look.
        assert!(matches!(
            g.decide(0, still, 1920, 1080, false),
            Plan::Full(_)
        ));
        for t in 1..10 {
            assert_eq!(g.decide(t * S, still, 1920, 1080, false), Plan::Skip);
        }
        assert!(
            matches!(g.decide(9 * S + S / 2, &walker, 1920, 1080, false), Plan::Crops(c) if c.len() == 1)
        );
        // Something moved since the last full look: the refresh is due.
        assert!(matches!(
            g.decide(10 * S, still, 1920, 1080, false),
            Plan::Full(_)
        ));
        assert_eq!(g.decide(11 * S, still, 1920, 1080, true), Plan::Skip);
        // A clock stepped back with someone tracked: refresh now rather than in a long while.
        assert!(matches!(
            g.decide(3 * S, still, 1920, 1080, true),
            Plan::Full(_)
        ));
        let s = *g.stats();
        assert_eq!(
            s,
            GateStats {
                frames: 14,
                skipped: 10,
                cropped: 1,
                full: 3,
                refreshes: 3
            }
        );
    }

    #[test]
    fn an_empty_still_scene_is_never_refreshed() {
        const S: i64 = 1_000_000_000;
        let mut g = Gate::new(Duration::from_secs(10), CropPlan::default());
        assert!(matches!(g.decide(0, &[], 640, 360, false), Plan::Full(_)));
        for t in 1..1000 {
            assert_eq!(g.decide(t * S, &[], 640, 360, false), Plan::Skip);
        }
        // Someone tracked (standing still): refreshed on time.
        assert!(matches!(
            g.decide(1000 * S, &[], 640, 360, true),
            Plan::Full(_)
        ));
        assert_eq!(g.stats().skipped, 999);
    }
}
