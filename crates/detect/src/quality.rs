//! Cheap image measures on luma: focus, exposure, contrast, and a scene signature.
//!
//! They feed best-shot choice (`track`) and tamper rules (`tamper`), on
//! the small frames motion already uses, so they cost next to nothing per frame.

use crate::frame::{Luma, downscale};

/// Variance of the 4-neighbour Laplacian over the interior pixels: high for crisp detail,
/// low for blur. Only comparable between frames of one camera and size. 0 below 3x3.
pub fn sharpness(f: &Luma) -> f32 {
    let (w, h) = (f.width(), f.height());
    if w < 3 || h < 3 {
        return 0.0;
    }
    let mut acc = Moments::default();
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let c = 4 * i32::from(f.get(x, y));
            let n = i32::from(f.get(x - 1, y))
                + i32::from(f.get(x + 1, y))
                + i32::from(f.get(x, y - 1))
                + i32::from(f.get(x, y + 1));
            acc.add(f64::from(c - n));
        }
    }
    acc.variance() as f32
}

/// Mean luma, 0–255.
pub fn brightness(f: &Luma) -> f32 {
    luma_moments(f).mean() as f32
}

/// Standard deviation of luma: near 0 for a covered or blinded lens.
pub fn contrast(f: &Luma) -> f32 {
    luma_moments(f).variance().sqrt() as f32
}

/// The three at once, as tamper rules want them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub brightness: f32,
    pub contrast: f32,
    pub sharpness: f32,
}

pub fn stats(f: &Luma) -> Stats {
    let m = luma_moments(f);
    Stats {
        brightness: m.mean() as f32,
        contrast: m.variance().sqrt() as f32,
        sharpness: sharpness(f),
    }
}

fn luma_moments(f: &Luma) -> Moments {
    let mut m = Moments::default();
    for &v in f.data() {
        m.add(f64::from(v));
    }
    m
}

#[derive(Default)]
struct Moments {
    n: f64,
    sum: f64,
    sum_sq: f64,
}

impl Moments {
    fn add(&mut self, v: f64) {
        self.n += 1.0;
        self.sum += v;
        self.sum_sq += v * v;
    }

    fn mean(&self) -> f64 {
        if self.n > 0.0 { self.sum / self.n } else { 0.0 }
    }

    fn variance(&self) -> f64 {
        if self.n > 0.0 {
            (self.sum_sq / self.n - self.mean().powi(2)).max(0.0)
        } else {
            0.0
        }
    }
}

/// Side of the signature's grid.
pub const SIGNATURE_SIDE: usize = 16;

/// The scene's layout: luma averaged down to 16x16. Compared by correlation, so a change of
/// exposure or gain (day to dusk, IR switching) barely moves it but a camera turned to another
/// view does.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    cells: Vec<f32>,
}

impl Signature {
    pub fn of(f: &Luma) -> Signature {
        Signature {
            cells: downscale(f, SIGNATURE_SIDE, SIGNATURE_SIDE),
        }
    }

    /// Pearson correlation, -1 to 1. A featureless frame has no layout to match: 0.
    pub fn similarity(&self, o: &Signature) -> f32 {
        let n = self.cells.len().min(o.cells.len());
        if n == 0 {
            return 0.0;
        }
        let mean = |c: &[f32]| c.iter().sum::<f32>() / n as f32;
        let (ma, mb) = (mean(&self.cells[..n]), mean(&o.cells[..n]));
        let (mut ab, mut aa, mut bb) = (0f32, 0f32, 0f32);
        for (a, b) in self.cells.iter().zip(&o.cells) {
            let (da, db) = (a - ma, b - mb);
            ab += da * db;
            aa += da * da;
            bb += db * db;
        }
        // Below about one grey level of spread the layout is noise.
        if aa < n as f32 || bb < n as f32 {
            return 0.0;
        }
        (ab / (aa * bb).sqrt()).clamp(-1.0, 1.0)
    }

    /// Moves this signature `rate` (0–1) of the way to `o`: a reference that follows slow
    /// changes (furniture moved, seasons) but not a sudden new view.
    pub fn blend(&mut self, o: &Signature, rate: f32) {
        for (a, b) in self.cells.iter_mut().zip(&o.cells) {
            *a += (b - *a) * rate;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{box_blur, scene};

    #[test]
    fn flat_frames_measure_zero_and_tiny_frames_do_not_panic() {
        let flat = vec![77u8; 64 * 48];
        let f = Luma::new(&flat, 64, 48).unwrap();
        assert_eq!(brightness(&f), 77.0);
        assert_eq!(contrast(&f), 0.0);
        assert_eq!(sharpness(&f), 0.0);
        let one = Luma::new(&[9], 1, 1).unwrap();
        assert_eq!(
            stats(&one),
            Stats {
                brightness: 9.0,
                contrast: 0.0,
                sharpness: 0.0
            }
        );
        assert_eq!(Signature::of(&one).similarity(&Signature::of(&one)), 0.0);
    }

    #[test]
    fn contrast_is_the_standard_deviation() {
        let f = Luma::new(&[0, 200, 0, 200], 2, 2).unwrap();
        assert_eq!(brightness(&f), 100.0);
        assert_eq!(contrast(&f), 100.0);
    }

    #[test]
    fn blur_lowers_sharpness_a_lot() {
        let (w, h) = (96, 64);
        let s = scene(1, w, h);
        let b = box_blur(&s, w, h, 2);
        let sharp = sharpness(&Luma::new(&s, w, h).unwrap());
        let blurred = sharpness(&Luma::new(&b, w, h).unwrap());
        assert!(blurred < sharp * 0.1, "{sharp} -> {blurred}");
    }

    #[test]
    fn signature_matches_the_scene_not_its_exposure() {
        let (w, h) = (96, 64);
        let a = scene(1, w, h);
        let darker: Vec<u8> = a.iter().map(|&v| (f32::from(v) * 0.6) as u8).collect();
        let other = scene(2, w, h);
        let sig = |d: &[u8]| Signature::of(&Luma::new(d, w, h).unwrap());
        assert!(sig(&a).similarity(&sig(&a)) > 0.999);
        assert!(sig(&a).similarity(&sig(&darker)) > 0.98);
        assert!(sig(&a).similarity(&sig(&other)) < 0.5);
        let blurred = box_blur(&a, w, h, 2);
        assert!(sig(&a).similarity(&sig(&blurred)) > 0.95);
    }

    #[test]
    fn blend_moves_part_way() {
        let (w, h) = (32, 32);
        let a = scene(1, w, h);
        let b = scene(2, w, h);
        let sb = Signature::of(&Luma::new(&b, w, h).unwrap());
        let mut s = Signature::of(&Luma::new(&a, w, h).unwrap());
        let before = s.similarity(&sb);
        s.blend(&sb, 0.5);
        assert!(s.similarity(&sb) > before);
        s.blend(&sb, 1.0);
        assert!(s.similarity(&sb) > 0.999);
    }
}
