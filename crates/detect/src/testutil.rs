//! Synthetic frames shared by the unit tests.

/// A deterministic pseudo-random generator (an LCG), so tests never depend on a seed source.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    pub fn byte(&mut self) -> u8 {
        (self.next() >> 8) as u8
    }
}

/// Large blocks of random grey (the scene's layout, one per seed) plus fine noise (detail
/// that focus loss removes).
pub fn scene(seed: u64, w: usize, h: usize) -> Vec<u8> {
    let mut r = Lcg(seed);
    let (bw, bh) = (w.div_ceil(8), h.div_ceil(8));
    let blocks: Vec<u8> = (0..64).map(|_| 40 + r.byte() % 170).collect();
    let mut out = vec![0u8; w * h];
    for y in 0..h {
        for x in 0..w {
            let base = i32::from(blocks[(y / bh) * 8 + x / bw]);
            let noise = i32::from(r.byte() % 41) - 20;
            out[y * w + x] = (base + noise).clamp(0, 255) as u8;
        }
    }
    out
}

/// Mean over a (2r+1)² window, edges clamped: a defocused lens.
pub fn box_blur(src: &[u8], w: usize, h: usize, r: usize) -> Vec<u8> {
    let mut out = vec![0u8; w * h];
    for y in 0..h {
        for x in 0..w {
            let (mut sum, mut n) = (0u32, 0u32);
            for yy in y.saturating_sub(r)..(y + r + 1).min(h) {
                for xx in x.saturating_sub(r)..(x + r + 1).min(w) {
                    sum += u32::from(src[yy * w + xx]);
                    n += 1;
                }
            }
            out[y * w + x] = (sum / n) as u8;
        }
    }
    out
}

/// A flat frame with a filled rectangle `[x0, y0, width, height]`.
#[allow(dead_code)]
pub fn with_block(w: usize, h: usize, bg: u8, fg: u8, [x0, y0, bw, bh]: [usize; 4]) -> Vec<u8> {
    let mut out = vec![bg; w * h];
    for y in y0..(y0 + bh).min(h) {
        for x in x0..(x0 + bw).min(w) {
            out[y * w + x] = fg;
        }
    }
    out
}
