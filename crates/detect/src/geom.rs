//! Boxes and zones.
//!
//! A [`Rect`] is in whatever space its maker used (model pixels, frame pixels, or normalised
//! `[0, 1]`); the functions say which they expect. A [`Polygon`] is always normalised, so one
//! zone drawn on a camera's picture holds for its main and sub streams alike.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// An axis-aligned box, `x0 <= x1`, `y0 <= y1` when well formed. Degenerate or non-finite
/// boxes have zero area rather than causing errors, since they come from model output.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rect {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}

impl Rect {
    pub const UNIT: Rect = Rect::new(0.0, 0.0, 1.0, 1.0);

    pub const fn new(x0: f32, y0: f32, x1: f32, y1: f32) -> Rect {
        Rect { x0, y0, x1, y1 }
    }

    pub fn from_xywh(x: f32, y: f32, w: f32, h: f32) -> Rect {
        Rect::new(x, y, x + w, y + h)
    }

    /// The whole of a `w`x`h` frame in pixels.
    pub fn frame(w: f32, h: f32) -> Rect {
        Rect::new(0.0, 0.0, w, h)
    }

    // `f32::max` returns the other operand for NaN, so a NaN side reads as zero.
    pub fn width(&self) -> f32 {
        (self.x1 - self.x0).max(0.0)
    }

    pub fn height(&self) -> f32 {
        (self.y1 - self.y0).max(0.0)
    }

    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }

    pub fn is_finite(&self) -> bool {
        self.x0.is_finite() && self.y0.is_finite() && self.x1.is_finite() && self.y1.is_finite()
    }

    pub fn centre(&self) -> (f32, f32) {
        ((self.x0 + self.x1) * 0.5, (self.y0 + self.y1) * 0.5)
    }

    /// The bottom centre: where a standing person's feet are.
    pub fn foot(&self) -> (f32, f32) {
        ((self.x0 + self.x1) * 0.5, self.y1)
    }

    pub fn diagonal(&self) -> f32 {
        self.width().hypot(self.height())
    }

    pub fn intersection(&self, o: &Rect) -> Option<Rect> {
        let r = Rect::new(
            self.x0.max(o.x0),
            self.y0.max(o.y0),
            self.x1.min(o.x1),
            self.y1.min(o.y1),
        );
        (r.area() > 0.0).then_some(r)
    }

    pub fn overlaps(&self, o: &Rect) -> bool {
        self.intersection(o).is_some()
    }

    /// Intersection over union; 0 for disjoint or degenerate boxes (never NaN).
    pub fn iou(&self, o: &Rect) -> f32 {
        let inter = self.intersection(o).map_or(0.0, |r| r.area());
        let union = self.area() + o.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }

    /// The smallest box holding both.
    pub fn union(&self, o: &Rect) -> Rect {
        Rect::new(
            self.x0.min(o.x0),
            self.y0.min(o.y0),
            self.x1.max(o.x1),
            self.y1.max(o.y1),
        )
    }

    /// Grown by `dx` left and right and `dy` above and below.
    pub fn expand(&self, dx: f32, dy: f32) -> Rect {
        Rect::new(self.x0 - dx, self.y0 - dy, self.x1 + dx, self.y1 + dy)
    }

    /// Cut to `[0, w] x [0, h]`.
    pub fn clamp(&self, w: f32, h: f32) -> Rect {
        let c = |v: f32, hi: f32| if v.is_nan() { 0.0 } else { v.clamp(0.0, hi) };
        Rect::new(c(self.x0, w), c(self.y0, h), c(self.x1, w), c(self.y1, h))
    }

    pub fn scale(&self, sx: f32, sy: f32) -> Rect {
        Rect::new(self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy)
    }

    /// Pixels of a `w`x`h` frame to `[0, 1]`.
    pub fn normalise(&self, w: f32, h: f32) -> Rect {
        if w > 0.0 && h > 0.0 {
            self.scale(1.0 / w, 1.0 / h)
        } else {
            Rect::default()
        }
    }
}

/// A polygon can not be a zone.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum GeomError {
    #[error("a polygon needs at least 3 points, this one has {0}")]
    TooFewPoints(usize),
    #[error("point {index} [{x}, {y}] is outside [0, 1] (zones are in normalised coordinates)")]
    OutOfRange { index: usize, x: f32, y: f32 },
}

/// A simple polygon in normalised coordinates, `[[x, y], …]` in config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<[f32; 2]>", into = "Vec<[f32; 2]>")]
pub struct Polygon {
    points: Vec<[f32; 2]>,
}

impl TryFrom<Vec<[f32; 2]>> for Polygon {
    type Error = GeomError;
    fn try_from(points: Vec<[f32; 2]>) -> Result<Self, GeomError> {
        Polygon::new(points)
    }
}

impl From<Polygon> for Vec<[f32; 2]> {
    fn from(p: Polygon) -> Self {
        p.points
    }
}

impl Polygon {
    pub fn new(points: Vec<[f32; 2]>) -> Result<Polygon, GeomError> {
        if points.len() < 3 {
            return Err(GeomError::TooFewPoints(points.len()));
        }
        for (index, &[x, y]) in points.iter().enumerate() {
            // `contains` on NaN-free input is what makes it total.
            if !(0.0..=1.0).contains(&x) || !(0.0..=1.0).contains(&y) {
                return Err(GeomError::OutOfRange { index, x, y });
            }
        }
        Ok(Polygon { points })
    }

    pub fn points(&self) -> &[[f32; 2]] {
        &self.points
    }

    pub fn bounds(&self) -> Rect {
        self.points.iter().fold(
            Rect::new(f32::MAX, f32::MAX, f32::MIN, f32::MIN),
            |r, &[x, y]| Rect::new(r.x0.min(x), r.y0.min(y), r.x1.max(x), r.y1.max(y)),
        )
    }

    /// Even-odd rule: points exactly on an edge may fall either way.
    pub fn contains(&self, x: f32, y: f32) -> bool {
        let mut inside = false;
        let n = self.points.len();
        for i in 0..n {
            let [xi, yi] = self.points[i];
            let [xj, yj] = self.points[(i + n - 1) % n];
            if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                inside = !inside;
            }
        }
        inside
    }

    /// Zone membership of a normalised box: its foot point inside. People are in a zone
    /// where they stand; their head or a raised arm crossing the line in the picture (boxes
    /// reach up into whatever lies behind them) does not put them there.
    pub fn holds(&self, r: &Rect) -> bool {
        let (x, y) = r.foot();
        self.contains(x, y)
    }

    /// The fraction of a normalised box's area inside the polygon, exactly (the polygon
    /// clipped to the box). For masks and diagnostics; zone membership is [`Polygon::holds`].
    pub fn overlap_fraction(&self, r: &Rect) -> f32 {
        let area = r.area();
        if area <= 0.0 {
            return 0.0;
        }
        (clip_to_rect(&self.points, r).map_or(0.0, |p| shoelace(&p)) / area).clamp(0.0, 1.0)
    }
}

/// Sutherland–Hodgman against each side of the box; correct for concave subjects because
/// the clip window is convex (the spurious zero-width edges it leaves add no area).
fn clip_to_rect(points: &[[f32; 2]], r: &Rect) -> Option<Vec<[f32; 2]>> {
    let mut poly = points.to_vec();
    // (axis, bound, keep when below the bound)
    let sides = [
        (0, r.x0, false),
        (0, r.x1, true),
        (1, r.y0, false),
        (1, r.y1, true),
    ];
    for (axis, bound, below) in sides {
        let inside = |p: &[f32; 2]| {
            if below {
                p[axis] <= bound
            } else {
                p[axis] >= bound
            }
        };
        let mut out = Vec::with_capacity(poly.len() + 4);
        for i in 0..poly.len() {
            let cur = poly[i];
            let prev = poly[(i + poly.len() - 1) % poly.len()];
            if inside(&cur) != inside(&prev) {
                let t = (bound - prev[axis]) / (cur[axis] - prev[axis]);
                let mut p = [
                    prev[0] + t * (cur[0] - prev[0]),
                    prev[1] + t * (cur[1] - prev[1]),
                ];
                p[axis] = bound;
                out.push(p);
            }
            if inside(&cur) {
                out.push(cur);
            }
        }
        if out.len() < 3 {
            return None;
        }
        poly = out;
    }
    Some(poly)
}

fn shoelace(p: &[[f32; 2]]) -> f32 {
    let n = p.len();
    let twice: f32 = (0..n)
        .map(|i| {
            let [x0, y0] = p[i];
            let [x1, y1] = p[(i + 1) % n];
            x0 * y1 - x1 * y0
        })
        .sum();
    twice.abs() * 0.5
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-5
    }

    #[test]
    fn iou_area_union_clamp() {
        let a = Rect::new(0.0, 0.0, 2.0, 2.0);
        let b = Rect::new(1.0, 1.0, 3.0, 3.0);
        assert_eq!(a.area(), 4.0);
        assert!(close(a.iou(&b), 1.0 / 7.0));
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&Rect::new(5.0, 5.0, 6.0, 6.0)), 0.0);
        assert_eq!(a.union(&b), Rect::new(0.0, 0.0, 3.0, 3.0));
        assert_eq!(a.expand(1.0, 0.5), Rect::new(-1.0, -0.5, 3.0, 2.5));
        assert_eq!(
            Rect::new(-5.0, 1.0, 50.0, f32::NAN).clamp(10.0, 10.0),
            Rect::new(0.0, 1.0, 10.0, 0.0)
        );
        assert_eq!(
            Rect::new(0.0, 0.0, 8.0, 4.0).normalise(16.0, 8.0),
            Rect::new(0.0, 0.0, 0.5, 0.5)
        );
    }

    #[test]
    fn degenerate_and_nan_boxes_have_no_area_and_no_nan_iou() {
        let nan = Rect::new(f32::NAN, 0.0, 1.0, 1.0);
        assert_eq!(nan.area(), 0.0);
        assert_eq!(nan.iou(&nan), 0.0);
        let flipped = Rect::new(2.0, 2.0, 1.0, 1.0);
        assert_eq!(flipped.area(), 0.0);
        assert_eq!(flipped.iou(&Rect::UNIT), 0.0);
        assert!(!nan.is_finite());
    }

    #[test]
    fn polygon_checks_its_points() {
        assert_eq!(
            Polygon::new(vec![[0.0, 0.0], [1.0, 1.0]]),
            Err(GeomError::TooFewPoints(2))
        );
        let e = Polygon::new(vec![[0.0, 0.0], [1.5, 0.0], [0.0, 1.0]]).unwrap_err();
        assert_eq!(
            e,
            GeomError::OutOfRange {
                index: 1,
                x: 1.5,
                y: 0.0
            }
        );
        assert!(e.to_string().contains("point 1"));
        assert!(Polygon::new(vec![[f32::NAN, 0.0], [1.0, 0.0], [0.0, 1.0]]).is_err());
    }

    /// An L: the notch at top right is outside.
    fn ell() -> Polygon {
        Polygon::new(vec![
            [0.0, 0.0],
            [0.5, 0.0],
            [0.5, 0.5],
            [1.0, 0.5],
            [1.0, 1.0],
            [0.0, 1.0],
        ])
        .unwrap()
    }

    #[test]
    fn point_in_concave_polygon() {
        let l = ell();
        assert!(l.contains(0.25, 0.25));
        assert!(l.contains(0.75, 0.75));
        assert!(!l.contains(0.75, 0.25));
        assert!(!l.contains(1.5, 0.75));
        assert!(!l.contains(f32::NAN, 0.5));
        assert_eq!(l.bounds(), Rect::UNIT);
    }

    #[test]
    fn zone_membership_is_the_foot_point() {
        // The lower half of the picture is the zone (say, the floor in front of a till).
        let floor = Polygon::new(vec![[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]).unwrap();
        // Standing on the floor, head well above the line: in.
        assert!(floor.holds(&Rect::new(0.4, 0.1, 0.6, 0.9)));
        // Standing just past the line, most of the box above it: still in.
        let near = Rect::new(0.4, 0.0, 0.6, 0.55);
        assert!(floor.holds(&near) && floor.overlap_fraction(&near) < 0.1);
        // Feet short of the line (standing behind it, in the picture above): out.
        assert!(!floor.holds(&Rect::new(0.4, 0.1, 0.6, 0.45)));
    }

    #[test]
    fn overlap_fraction_is_exact_for_concave_polygons() {
        let l = ell();
        assert!(close(l.overlap_fraction(&Rect::UNIT), 0.75));
        assert!(close(
            l.overlap_fraction(&Rect::new(0.5, 0.0, 1.0, 0.5)),
            0.0
        ));
        assert!(close(
            l.overlap_fraction(&Rect::new(0.25, 0.25, 0.75, 0.75)),
            0.75
        ));
        assert!(close(
            l.overlap_fraction(&Rect::new(0.1, 0.6, 0.2, 0.7)),
            1.0
        ));
        assert_eq!(l.overlap_fraction(&Rect::default()), 0.0);
    }

    #[test]
    fn polygon_deserialises_from_pairs_and_rejects_bad_ones() {
        #[derive(Deserialize)]
        struct Z {
            p: Polygon,
        }
        let z: Z = toml::from_str("p = [[0, 0], [1, 0], [0, 1]]").unwrap();
        assert_eq!(z.p.points().len(), 3);
        let e = toml::from_str::<Z>("p = [[0, 0], [2, 0], [0, 1]]")
            .err()
            .unwrap();
        assert!(e.to_string().contains("outside [0, 1]"), "{e}");
    }
}
