//! Pixel work on decoded pictures: the small grey frame for motion and tamper, crops
//! stretched to the model's input, and JPEGs for best shots and stills.

use super::decode::Rgb;
use storeguard_detect::Rect;

/// Width of the small grey frame motion and tamper work on.
pub const SMALL_WIDTH: usize = 160;
/// Widest full-frame JPEG sent with a shot.
pub const THUMB_WIDTH: u32 = 640;

/// The small grey frame: area-averaged luma, `SMALL_WIDTH` wide, the picture's aspect.
pub fn small_luma(p: &Rgb) -> (Vec<u8>, usize, usize) {
    let (w, h) = (p.width as usize, p.height as usize);
    let sw = SMALL_WIDTH.min(w.max(1));
    let sh = (h * sw / w.max(1)).max(1);
    let mut sum = vec![0u32; sw * sh];
    let mut count = vec![0u32; sw * sh];
    // Every second pixel each way: a quarter of the work, and still far finer than 160 px.
    for y in (0..h).step_by(2) {
        let oy = y * sh / h;
        let row = &p.data[y * w * 3..(y + 1) * w * 3];
        for x in (0..w).step_by(2) {
            let i = x * 3;
            let l = (77 * row[i] as u32 + 150 * row[i + 1] as u32 + 29 * row[i + 2] as u32) >> 8;
            let o = oy * sw + x * sw / w;
            sum[o] += l;
            count[o] += 1;
        }
    }
    let luma = sum
        .iter()
        .zip(&count)
        .map(|(s, c)| (s / (*c).max(1)) as u8)
        .collect();
    (luma, sw, sh)
}

/// Grey pixels of `r` (frame pixels), subsampled to at most `max_w` wide: for the sharpness
/// of a person's box.
pub fn region_luma(p: &Rgb, r: &Rect, max_w: usize) -> Option<(Vec<u8>, usize, usize)> {
    let r = r.clamp(p.width as f32, p.height as f32);
    let (x0, y0) = (r.x0.max(0.0) as usize, r.y0.max(0.0) as usize);
    let (x1, y1) = (r.x1 as usize, r.y1 as usize);
    if x1 <= x0 + 2 || y1 <= y0 + 2 {
        return None;
    }
    let step = ((x1 - x0) / max_w.max(1)).max(1);
    let w = (x1 - x0).div_ceil(step);
    let h = (y1 - y0).div_ceil(step);
    let mut out = Vec::with_capacity(w * h);
    for y in (y0..y1).step_by(step) {
        for x in (x0..x1).step_by(step) {
            let [r, g, b] = p.pixel(x as u32, y as u32);
            out.push(((77 * r as u32 + 150 * g as u32 + 29 * b as u32) >> 8) as u8);
        }
    }
    Some((out, w, h))
}

/// The region `r` (frame pixels) stretched to `size`×`size` packed RGB, bilinear.
pub fn stretch(p: &Rgb, r: &Rect, size: usize, out: &mut Vec<u8>) {
    out.clear();
    out.resize(size * size * 3, 0);
    let r = r.clamp(p.width as f32, p.height as f32);
    let (pw, ph) = (p.width as usize, p.height as usize);
    if pw == 0 || ph == 0 {
        return;
    }
    let sx = r.width() / size as f32;
    let sy = r.height() / size as f32;
    // Horizontal taps are the same for every row.
    let xs: Vec<(usize, usize, u32)> = (0..size)
        .map(|x| {
            let fx = (r.x0 + (x as f32 + 0.5) * sx - 0.5).clamp(0.0, (pw - 1) as f32);
            let x0 = fx as usize;
            (x0, (x0 + 1).min(pw - 1), ((fx - x0 as f32) * 256.0) as u32)
        })
        .collect();
    for y in 0..size {
        let fy = (r.y0 + (y as f32 + 0.5) * sy - 0.5).clamp(0.0, (ph - 1) as f32);
        let y0 = fy as usize;
        let y1 = (y0 + 1).min(ph - 1);
        let wy = ((fy - y0 as f32) * 256.0) as u32;
        let (r0, r1) = (&p.data[y0 * pw * 3..], &p.data[y1 * pw * 3..]);
        let o = &mut out[y * size * 3..(y + 1) * size * 3];
        for (x, &(x0, x1, wx)) in xs.iter().enumerate() {
            for c in 0..3 {
                let a = r0[x0 * 3 + c] as u32 * (256 - wx) + r0[x1 * 3 + c] as u32 * wx;
                let b = r1[x0 * 3 + c] as u32 * (256 - wx) + r1[x1 * 3 + c] as u32 * wx;
                o[x * 3 + c] = ((a * (256 - wy) + b * wy) >> 16) as u8;
            }
        }
    }
}

/// JPEG of the region `r` (frame pixels) at native resolution.
pub fn crop_jpeg(p: &Rgb, r: &Rect) -> Option<Vec<u8>> {
    let r = r.clamp(p.width as f32, p.height as f32);
    let (x0, y0) = (r.x0.max(0.0) as u32, r.y0.max(0.0) as u32);
    let (x1, y1) = ((r.x1 as u32).min(p.width), (r.y1 as u32).min(p.height));
    if x1 <= x0 || y1 <= y0 {
        return None;
    }
    let (w, h) = (x1 - x0, y1 - y0);
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in y0..y1 {
        let s = ((y * p.width + x0) * 3) as usize;
        data.extend_from_slice(&p.data[s..s + (w * 3) as usize]);
    }
    jpeg(&data, w, h, 90)
}

/// JPEG of the whole picture, at most `THUMB_WIDTH` wide.
pub fn thumbnail_jpeg(p: &Rgb) -> Option<Vec<u8>> {
    if p.width <= THUMB_WIDTH {
        return jpeg(&p.data, p.width, p.height, 80);
    }
    let tw = THUMB_WIDTH as usize;
    let th = (p.height as usize * tw / p.width as usize).max(1);
    let mut out = Vec::new();
    // A plain stretch of the whole frame to tw×th: `stretch` does squares, so by rows here.
    let full = Rect::frame(p.width as f32, p.height as f32);
    stretch_to(p, &full, tw, th, &mut out);
    jpeg(&out, tw as u32, th as u32, 80)
}

fn stretch_to(p: &Rgb, r: &Rect, w: usize, h: usize, out: &mut Vec<u8>) {
    out.clear();
    out.resize(w * h * 3, 0);
    let (pw, ph) = (p.width as usize, p.height as usize);
    let sx = r.width() / w as f32;
    let sy = r.height() / h as f32;
    for y in 0..h {
        let py = ((r.y0 + (y as f32 + 0.5) * sy) as usize).min(ph - 1);
        for x in 0..w {
            let px = ((r.x0 + (x as f32 + 0.5) * sx) as usize).min(pw - 1);
            let s = (py * pw + px) * 3;
            out[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&p.data[s..s + 3]);
        }
    }
}

fn jpeg(rgb: &[u8], w: u32, h: u32, quality: u8) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode(rgb, w, h, image::ExtendedColorType::Rgb8)
        .ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> Rgb {
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                data.extend_from_slice(&[(x % 256) as u8, (y % 256) as u8, 128]);
            }
        }
        Rgb {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn the_small_frame_keeps_the_aspect_and_the_level() {
        let p = Rgb {
            width: 1920,
            height: 1080,
            data: vec![100; 1920 * 1080 * 3],
        };
        let (l, w, h) = small_luma(&p);
        assert_eq!((w, h), (160, 90));
        assert!(l.iter().all(|&v| (99..=100).contains(&v)));
    }

    #[test]
    fn a_stretched_crop_samples_its_region() {
        let p = gradient(800, 600);
        let mut out = Vec::new();
        stretch(&p, &Rect::new(100.0, 50.0, 300.0, 250.0), 100, &mut out);
        assert_eq!(out.len(), 100 * 100 * 3);
        // Top-left of the output is near (100, 50) of the input; bottom-right near (300, 250).
        assert!((out[0] as i32 - 100).abs() <= 2, "{}", out[0]);
        assert!((out[1] as i32 - 50).abs() <= 2, "{}", out[1]);
        let last = (100 * 100 - 1) * 3;
        assert!((out[last] as i32 - (299 % 256)).abs() <= 3, "{}", out[last]);
    }

    #[test]
    fn crops_and_thumbnails_are_jpegs_of_the_right_size() {
        let p = gradient(1280, 720);
        let c = crop_jpeg(&p, &Rect::new(10.0, 20.0, 110.0, 220.0)).unwrap();
        let img = image::load_from_memory(&c).unwrap();
        assert_eq!((img.width(), img.height()), (100, 200));
        let t = thumbnail_jpeg(&p).unwrap();
        let img = image::load_from_memory(&t).unwrap();
        assert_eq!((img.width(), img.height()), (640, 360));
        assert!(crop_jpeg(&p, &Rect::new(2000.0, 0.0, 2100.0, 10.0)).is_none());
    }
}
