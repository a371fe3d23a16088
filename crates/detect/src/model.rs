//! The NanoDet-m person detector's contract (`models/README.md`): what goes in, how what
//! comes out becomes boxes in frame pixels.
//!
//! The inference itself (ONNX Runtime) lives in the device; here are only the steps either
//! side of it, on plain slices, so they are tested with synthetic tensors.

use crate::geom::Rect;
use thiserror::Error;

/// The model's input side, in pixels.
pub const INPUT_SIZE: usize = 416;
/// Floats in one batch item of the input tensor `[3, 416, 416]`.
pub const INPUT_LEN: usize = 3 * INPUT_SIZE * INPUT_SIZE;
pub const INPUT_NAME: &str = "image";
/// In the order the model emits them.
pub const OUTPUT_NAMES: [&str; 6] = ["cls_8", "cls_16", "cls_32", "reg_8", "reg_16", "reg_32"];
pub const STRIDES: [usize; 3] = [8, 16, 32];
pub const NUM_CLASSES: usize = 80;
/// Distribution bins per box side (GFL): distances 0..=10 strides.
pub const REG_BINS: usize = 11;
/// COCO class 0.
pub const PERSON: usize = 0;
/// Per channel, in the model's BGR order.
pub const MEAN_BGR: [f32; 3] = [103.53, 116.28, 123.675];
pub const STD_BGR: [f32; 3] = [57.375, 57.12, 58.395];

/// Anchor cells of the level with this stride: 2704, 676, 169.
pub const fn cells(stride: usize) -> usize {
    let g = INPUT_SIZE / stride;
    g * g
}

/// A tensor slice or a crop does not fit the contract.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ModelError {
    #[error("{what} has {got} values, expected {expected}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("image is {width}x{height}: both sides must be at least 1")]
    EmptyImage { width: usize, height: usize },
    #[error("crop {0:?} has no area")]
    EmptyCrop(Rect),
}

/// Byte order of packed 3-byte pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrder {
    Bgr,
    Rgb,
}

/// Packed 8-bit pixels (already stretched to the model's size, normally 416x416) to the
/// normalised planar BGR floats of one batch item. `out` is `3 * width * height` long.
pub fn preprocess(
    pixels: &[u8],
    width: usize,
    height: usize,
    order: ChannelOrder,
    out: &mut [f32],
) -> Result<(), ModelError> {
    if width == 0 || height == 0 {
        return Err(ModelError::EmptyImage { width, height });
    }
    let plane = width.saturating_mul(height);
    check_len("image", pixels.len(), plane.saturating_mul(3))?;
    check_len("input tensor", out.len(), plane.saturating_mul(3))?;
    // Source byte offset of each output plane (B, G, R).
    let src = match order {
        ChannelOrder::Bgr => [0, 1, 2],
        ChannelOrder::Rgb => [2, 1, 0],
    };
    let (b, rest) = out.split_at_mut(plane);
    let (g, r) = rest.split_at_mut(plane);
    for (i, px) in pixels.chunks_exact(3).enumerate() {
        b[i] = (f32::from(px[src[0]]) - MEAN_BGR[0]) / STD_BGR[0];
        g[i] = (f32::from(px[src[1]]) - MEAN_BGR[1]) / STD_BGR[1];
        r[i] = (f32::from(px[src[2]]) - MEAN_BGR[2]) / STD_BGR[2];
    }
    Ok(())
}

fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), ModelError> {
    if got == expected {
        Ok(())
    } else {
        Err(ModelError::Length {
            what,
            expected,
            got,
        })
    }
}

/// One batch item's six outputs, levels in stride order 8, 16, 32.
#[derive(Debug, Clone, Copy)]
pub struct Heads<'a> {
    pub cls: [&'a [f32]; 3],
    pub reg: [&'a [f32]; 3],
}

impl<'a> Heads<'a> {
    /// Item `item` of whole batch tensors (each `[batch, N, C]`, row-major).
    pub fn item(cls: [&'a [f32]; 3], reg: [&'a [f32]; 3], item: usize) -> Result<Self, ModelError> {
        let cut = |t: &'a [f32], what: &'static str, per: usize| -> Result<&'a [f32], ModelError> {
            let start = item.saturating_mul(per);
            t.get(start..start.saturating_add(per))
                .ok_or(ModelError::Length {
                    what,
                    expected: start.saturating_add(per),
                    got: t.len(),
                })
        };
        let mut out = Heads {
            cls: [&[]; 3],
            reg: [&[]; 3],
        };
        for (l, &s) in STRIDES.iter().enumerate() {
            out.cls[l] = cut(cls[l], OUTPUT_NAMES[l], cells(s) * NUM_CLASSES)?;
            out.reg[l] = cut(reg[l], OUTPUT_NAMES[l + 3], cells(s) * 4 * REG_BINS)?;
        }
        Ok(out)
    }
}

/// A detected object in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub rect: Rect,
    pub score: f32,
    pub class: usize,
}

/// What decoding keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeParams {
    /// Scores below are dropped (NaN scores always are).
    pub min_score: f32,
    /// Overlap above which the lower-scored box of a class is suppressed.
    pub nms_iou: f32,
    /// In frame pixels², after scaling back: tiny boxes are noise at any score.
    pub min_area: f32,
    /// `Some(c)`: only class `c` (normally [`PERSON`]); `None`: all 80.
    pub class: Option<usize>,
    /// Candidates kept (best first) before NMS, which is quadratic: a garbage tensor with
    /// every score at 1 must not cost seconds.
    pub max_candidates: usize,
}

impl Default for DecodeParams {
    fn default() -> Self {
        DecodeParams {
            min_score: 0.5,
            nms_iou: 0.6,
            min_area: 0.0,
            class: Some(PERSON),
            max_candidates: 1000,
        }
    }
}

/// Boxes of one batch item whose input was the region `crop` of the frame (frame pixels;
/// the whole frame for full-frame inference), in frame pixels, best first.
pub fn decode(heads: &Heads, crop: Rect, p: &DecodeParams) -> Result<Vec<Detection>, ModelError> {
    if crop.area() <= 0.0 || !crop.is_finite() {
        return Err(ModelError::EmptyCrop(crop));
    }
    let classes = match p.class {
        Some(c) if c < NUM_CLASSES => c..c + 1,
        Some(_) => 0..0,
        None => 0..NUM_CLASSES,
    };
    let sx = crop.width() / INPUT_SIZE as f32;
    let sy = crop.height() / INPUT_SIZE as f32;
    let mut found = Vec::new();
    for (l, &stride) in STRIDES.iter().enumerate() {
        let n = cells(stride);
        check_len(OUTPUT_NAMES[l], heads.cls[l].len(), n * NUM_CLASSES)?;
        check_len(OUTPUT_NAMES[l + 3], heads.reg[l].len(), n * 4 * REG_BINS)?;
        let g = INPUT_SIZE / stride;
        for i in 0..n {
            let scores = &heads.cls[l][i * NUM_CLASSES..(i + 1) * NUM_CLASSES];
            // The box is only worked out for cells where some class passes.
            let mut cell_box: Option<Rect> = None;
            for c in classes.clone() {
                let score = scores[c];
                if score.is_nan() || score < p.min_score {
                    continue;
                }
                let rect = *cell_box.get_or_insert_with(|| {
                    let reg = &heads.reg[l][i * 4 * REG_BINS..(i + 1) * 4 * REG_BINS];
                    let b = cell_box_416(reg, i, g, stride);
                    // The model may reach past its input's edge; nothing of the frame is there.
                    Rect::new(
                        (crop.x0 + b.x0 * sx).max(crop.x0),
                        (crop.y0 + b.y0 * sy).max(crop.y0),
                        (crop.x0 + b.x1 * sx).min(crop.x1),
                        (crop.y0 + b.y1 * sy).min(crop.y1),
                    )
                });
                if rect.is_finite() && rect.area() > 0.0 && rect.area() >= p.min_area {
                    found.push(Detection {
                        rect,
                        score,
                        class: c,
                    });
                }
            }
        }
    }
    sort_best_first(&mut found);
    found.truncate(p.max_candidates);
    nms(&mut found, p.nms_iou);
    Ok(found)
}

/// Cell `i` of a `g`x`g` level: its side distances (softmax expectation over the bins, in
/// strides) around the cell centre, in 416-pixel space.
fn cell_box_416(reg: &[f32], i: usize, g: usize, stride: usize) -> Rect {
    let s = stride as f32;
    let cx = ((i % g) as f32 + 0.5) * s;
    let cy = ((i / g) as f32 + 0.5) * s;
    let mut d = [0f32; 4];
    for (side, bins) in d.iter_mut().zip(reg.chunks_exact(REG_BINS)) {
        *side = expected_bin(bins) * s;
    }
    // NaN must survive the clamping `max`/`min` that follow, which would hide it.
    if d.iter().all(|v| v.is_finite()) {
        Rect::new(cx - d[0], cy - d[1], cx + d[2], cy + d[3])
    } else {
        Rect::default()
    }
}

fn expected_bin(bins: &[f32]) -> f32 {
    let max = bins.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    let mut weighted = 0.0;
    for (k, &v) in bins.iter().enumerate() {
        let e = (v - max).exp();
        sum += e;
        weighted += e * k as f32;
    }
    // All-NaN or all -inf bins make NaN here, and the box is then dropped as non-finite.
    weighted / sum
}

fn sort_best_first(d: &mut [Detection]) {
    d.sort_by(|a, b| b.score.total_cmp(&a.score));
}

/// Per-class greedy non-maximum suppression, keeping the best first. Also for merging the
/// detections of overlapping crops of one frame, where one person is seen twice.
pub fn nms(dets: &mut Vec<Detection>, iou: f32) {
    sort_best_first(dets);
    let mut kept: Vec<Detection> = Vec::with_capacity(dets.len());
    for d in dets.drain(..) {
        if !kept
            .iter()
            .any(|k| k.class == d.class && k.rect.iou(&d.rect) > iou)
        {
            kept.push(d);
        }
    }
    *dets = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zero tensors (scores 0, flat bins) for one batch item.
    struct Tensors {
        cls: Vec<Vec<f32>>,
        reg: Vec<Vec<f32>>,
    }

    impl Tensors {
        fn new() -> Self {
            Tensors {
                cls: STRIDES
                    .iter()
                    .map(|&s| vec![0.0; cells(s) * NUM_CLASSES])
                    .collect(),
                reg: STRIDES
                    .iter()
                    .map(|&s| vec![0.0; cells(s) * 4 * REG_BINS])
                    .collect(),
            }
        }

        /// Cell (cx, cy) of the level with this stride scores `score` for `class`, sides
        /// l, t, r, b at exactly these bin indices (one very peaked bin each).
        fn hot(
            &mut self,
            stride: usize,
            cx: usize,
            cy: usize,
            class: usize,
            score: f32,
            sides: [usize; 4],
        ) {
            let l = STRIDES.iter().position(|&s| s == stride).unwrap();
            let i = cy * (INPUT_SIZE / stride) + cx;
            self.cls[l][i * NUM_CLASSES + class] = score;
            for (side, &bin) in sides.iter().enumerate() {
                let base = i * 4 * REG_BINS + side * REG_BINS;
                self.reg[l][base..base + REG_BINS].fill(-50.0);
                self.reg[l][base + bin] = 50.0;
            }
        }

        fn heads(&self) -> Heads<'_> {
            Heads {
                cls: [&self.cls[0], &self.cls[1], &self.cls[2]],
                reg: [&self.reg[0], &self.reg[1], &self.reg[2]],
            }
        }
    }

    fn approx(a: Rect, b: Rect) -> bool {
        [a.x0 - b.x0, a.y0 - b.y0, a.x1 - b.x1, a.y1 - b.y1]
            .iter()
            .all(|d| d.abs() < 0.01)
    }

    const WHOLE: Rect = Rect::new(0.0, 0.0, 416.0, 416.0);

    #[test]
    fn one_hot_cell_gives_its_box() {
        let mut t = Tensors::new();
        // Stride 16, cell (10, 5): centre (168, 88). Sides 2, 3, 4, 5 strides.
        t.hot(16, 10, 5, PERSON, 0.9, [2, 3, 4, 5]);
        let d = decode(&t.heads(), WHOLE, &DecodeParams::default()).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].class, PERSON);
        assert_eq!(d[0].score, 0.9);
        assert!(
            approx(d[0].rect, Rect::new(136.0, 40.0, 232.0, 168.0)),
            "{:?}",
            d[0].rect
        );
    }

    #[test]
    fn box_scales_back_to_the_crop_in_the_frame() {
        let mut t = Tensors::new();
        t.hot(16, 10, 5, PERSON, 0.9, [2, 3, 4, 5]);
        // The input was the 832x832 region at (1000, 200) of a 1080p frame: 2x scale.
        let crop = Rect::from_xywh(1000.0, 200.0, 832.0, 832.0);
        let d = decode(&t.heads(), crop, &DecodeParams::default()).unwrap();
        assert!(
            approx(d[0].rect, Rect::new(1272.0, 280.0, 1464.0, 536.0)),
            "{:?}",
            d[0].rect
        );
    }

    #[test]
    fn softmax_expectation_between_bins() {
        // Two equal bins 2 and 3: expected 2.5 strides.
        let mut bins = [-50.0f32; REG_BINS];
        bins[2] = 1.0;
        bins[3] = 1.0;
        assert!((expected_bin(&bins) - 2.5).abs() < 1e-4);
        // Flat bins: the middle, 5.
        assert!((expected_bin(&[0.0; REG_BINS]) - 5.0).abs() < 1e-4);
        assert!(expected_bin(&[f32::NAN; REG_BINS]).is_nan());
    }

    #[test]
    fn boxes_past_the_input_edge_are_clamped() {
        let mut t = Tensors::new();
        // Top-left cell of stride 32 (centre 16, 16) reaching 10 strides left and up.
        t.hot(32, 0, 0, PERSON, 0.8, [10, 10, 1, 1]);
        let d = decode(&t.heads(), WHOLE, &DecodeParams::default()).unwrap();
        assert!(
            approx(d[0].rect, Rect::new(0.0, 0.0, 48.0, 48.0)),
            "{:?}",
            d[0].rect
        );
    }

    #[test]
    fn nms_suppresses_overlaps_of_a_class_only() {
        let mut t = Tensors::new();
        // Neighbouring stride-8 cells, same sides: heavily overlapping boxes.
        t.hot(8, 20, 20, PERSON, 0.9, [3, 6, 3, 6]);
        t.hot(8, 21, 20, PERSON, 0.7, [3, 6, 3, 6]);
        // Far away: kept.
        t.hot(8, 45, 45, PERSON, 0.6, [2, 2, 2, 2]);
        let d = decode(&t.heads(), WHOLE, &DecodeParams::default()).unwrap();
        assert_eq!(d.iter().map(|d| d.score).collect::<Vec<_>>(), [0.9, 0.6]);

        // Another class at the same place survives the person's suppression.
        t.hot(8, 21, 20, 2, 0.8, [3, 6, 3, 6]);
        let all = DecodeParams {
            class: None,
            ..DecodeParams::default()
        };
        let d = decode(&t.heads(), WHOLE, &all).unwrap();
        let got: Vec<_> = d.iter().map(|d| (d.class, d.score)).collect();
        assert_eq!(got, [(PERSON, 0.9), (2, 0.8), (PERSON, 0.6)]);
    }

    #[test]
    fn score_area_and_nan_filters() {
        let mut t = Tensors::new();
        t.hot(8, 10, 10, PERSON, 0.4, [3, 3, 3, 3]);
        t.hot(8, 30, 30, PERSON, f32::NAN, [3, 3, 3, 3]);
        t.hot(32, 6, 6, PERSON, 0.95, [1, 1, 1, 1]); // 64x64
        t.hot(16, 20, 20, PERSON, 0.9, [4, 4, 4, 4]); // 128x128
        // NaN bins: no box, not a NaN box.
        t.hot(8, 40, 10, PERSON, 0.99, [3, 3, 3, 3]);
        let base = 40 * 4 * REG_BINS + 10 * 52 * 4 * REG_BINS;
        t.reg[0][base..base + REG_BINS].fill(f32::NAN);
        let p = DecodeParams {
            min_area: 100.0 * 100.0,
            ..DecodeParams::default()
        };
        let d = decode(&t.heads(), WHOLE, &p).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].score, 0.9);
        let low = DecodeParams {
            min_score: 0.3,
            ..DecodeParams::default()
        };
        assert_eq!(decode(&t.heads(), WHOLE, &low).unwrap().len(), 3);
    }

    #[test]
    fn saturated_tensor_is_bounded() {
        let mut t = Tensors::new();
        for c in &mut t.cls {
            c.fill(1.0);
        }
        let d = decode(&t.heads(), WHOLE, &DecodeParams::default()).unwrap();
        assert!(!d.is_empty() && d.len() <= 1000);
    }

    #[test]
    fn wrong_lengths_and_empty_crops_are_errors() {
        let t = Tensors::new();
        let mut h = t.heads();
        h.reg[1] = &t.reg[1][1..];
        let e = decode(&h, WHOLE, &DecodeParams::default()).unwrap_err();
        assert_eq!(e.to_string(), "reg_16 has 29743 values, expected 29744");
        assert!(matches!(
            decode(
                &t.heads(),
                Rect::new(5.0, 5.0, 5.0, 9.0),
                &DecodeParams::default()
            ),
            Err(ModelError::EmptyCrop(_))
        ));
    }

    #[test]
    fn batch_items_are_cut_from_whole_tensors() {
        let a = Tensors::new();
        let mut b = Tensors::new();
        b.hot(16, 10, 5, PERSON, 0.9, [2, 3, 4, 5]);
        let join = |x: &Vec<f32>, y: &Vec<f32>| [x.as_slice(), y.as_slice()].concat();
        let cls: Vec<Vec<f32>> = (0..3).map(|l| join(&a.cls[l], &b.cls[l])).collect();
        let reg: Vec<Vec<f32>> = (0..3).map(|l| join(&a.reg[l], &b.reg[l])).collect();
        let cls = [cls[0].as_slice(), &cls[1], &cls[2]];
        let reg = [reg[0].as_slice(), &reg[1], &reg[2]];
        let p = DecodeParams::default();
        assert!(
            decode(&Heads::item(cls, reg, 0).unwrap(), WHOLE, &p)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            decode(&Heads::item(cls, reg, 1).unwrap(), WHOLE, &p)
                .unwrap()
                .len(),
            1
        );
        assert!(Heads::item(cls, reg, 2).is_err());
    }

    #[test]
    fn preprocess_normalises_into_bgr_planes() {
        let (w, h) = (2, 1);
        let bgr = [10u8, 20, 30, 103, 116, 124];
        let mut out = vec![0f32; 6];
        preprocess(&bgr, w, h, ChannelOrder::Bgr, &mut out).unwrap();
        assert!((out[0] - (10.0 - 103.53) / 57.375).abs() < 1e-6); // B of pixel 0
        assert!((out[2] - (20.0 - 116.28) / 57.12).abs() < 1e-6); // G plane
        assert!((out[4] - (30.0 - 123.675) / 58.395).abs() < 1e-6); // R plane
        assert!(out[1].abs() < 0.01 && out[3].abs() < 0.01 && out[5].abs() < 0.01);
        let rgb = [30u8, 20, 10, 124, 116, 103];
        let mut out2 = vec![0f32; 6];
        preprocess(&rgb, w, h, ChannelOrder::Rgb, &mut out2).unwrap();
        assert_eq!(out, out2);
        assert!(preprocess(&bgr, 3, 1, ChannelOrder::Bgr, &mut out).is_err());
        assert!(preprocess(&bgr, 0, 0, ChannelOrder::Bgr, &mut out).is_err());
        assert!(preprocess(&bgr, w, h, ChannelOrder::Bgr, &mut out[..5]).is_err());
    }
}
