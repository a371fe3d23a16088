//! Pixel work on decoded pictures: the small grey frame for motion and tamper, crops
//! stretched to the model's input, and JPEGs for best shots and stills.

use super::decode::Picture;
use storeguard_detect::Rect;

/// Width of the small grey frame motion and tamper work on.
pub const SMALL_WIDTH: usize = 160;
/// Widest full-frame JPEG sent with a shot.
pub const THUMB_WIDTH: u32 = 640;

/// The small grey frame: area-averaged luma, `SMALL_WIDTH` wide, the picture's aspect.
pub fn small_luma(p: &Picture) -> (Vec<u8>, usize, usize) {
    let (w, h) = (p.width as usize, p.height as usize);
    let sw = SMALL_WIDTH.min(w.max(1));
    let sh = (h * sw / w.max(1)).max(1);
    let mut sum = vec![0u32; sw * sh];
    let mut count = vec![0u32; sw * sh];
    // Every second pixel each way: a quarter of the work, and still far finer than 160 px.
    for y in (0..h).step_by(2) {
        let oy = y * sh / h;
        let row = &p.y[y * w..(y + 1) * w];
        for x in (0..w).step_by(2) {
            let o = oy * sw + x * sw / w;
            sum[o] += row[x] as u32;
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
pub fn region_luma(p: &Picture, r: &Rect, max_w: usize) -> Option<(Vec<u8>, usize, usize)> {
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
            out.push(p.luma(x, y));
        }
    }
    Some((out, w, h))
}

/// The region `r` (frame pixels) stretched to `size`×`size` packed RGB: bilinear on luma,
/// nearest on chroma (it has half the resolution anyway), converted per output pixel.
pub fn stretch(p: &Picture, r: &Rect, size: usize, out: &mut Vec<u8>) {
    stretch_to(p, r, size, size, out)
}

fn stretch_to(p: &Picture, r: &Rect, ow: usize, oh: usize, out: &mut Vec<u8>) {
    out.clear();
    out.resize(ow * oh * 3, 0);
    let r = r.clamp(p.width as f32, p.height as f32);
    let (pw, ph) = (p.width as usize, p.height as usize);
    if pw == 0 || ph == 0 {
        return;
    }
    let (cw, ch) = (p.cw(), p.ch());
    let sx = r.width() / ow as f32;
    let sy = r.height() / oh as f32;
    // Horizontal taps are the same for every row.
    let xs: Vec<(usize, usize, i32, usize)> = (0..ow)
        .map(|x| {
            let fx = (r.x0 + (x as f32 + 0.5) * sx - 0.5).clamp(0.0, (pw - 1) as f32);
            let x0 = fx as usize;
            let cx = ((fx + 0.5) as usize / 2).min(cw - 1);
            (
                x0,
                (x0 + 1).min(pw - 1),
                ((fx - x0 as f32) * 256.0) as i32,
                cx,
            )
        })
        .collect();
    let k = |v: i32| ((v + 128) >> 8).clamp(0, 255) as u8;
    for y in 0..oh {
        let fy = (r.y0 + (y as f32 + 0.5) * sy - 0.5).clamp(0.0, (ph - 1) as f32);
        let y0 = fy as usize;
        let y1 = (y0 + 1).min(ph - 1);
        let wy = ((fy - y0 as f32) * 256.0) as i32;
        let cy = ((fy + 0.5) as usize / 2).min(ch - 1);
        let (r0, r1) = (&p.y[y0 * pw..], &p.y[y1 * pw..]);
        let (ur, vr) = (&p.u[cy * cw..], &p.v[cy * cw..]);
        let o = &mut out[y * ow * 3..(y + 1) * ow * 3];
        for (x, &(x0, x1, wx, cx)) in xs.iter().enumerate() {
            let a = r0[x0] as i32 * (256 - wx) + r0[x1] as i32 * wx;
            let b = r1[x0] as i32 * (256 - wx) + r1[x1] as i32 * wx;
            let luma = (a * (256 - wy) + b * wy) >> 16;
            let c = (luma - 16).max(0) * 298;
            let (d, e) = (ur[cx] as i32 - 128, vr[cx] as i32 - 128);
            o[x * 3] = k(c + 409 * e);
            o[x * 3 + 1] = k(c - 100 * d - 208 * e);
            o[x * 3 + 2] = k(c + 516 * d);
        }
    }
}

/// JPEG of the region `r` (frame pixels) at native resolution.
pub fn crop_jpeg(p: &Picture, r: &Rect) -> Option<Vec<u8>> {
    let r = r.clamp(p.width as f32, p.height as f32);
    let (x0, y0) = (r.x0.max(0.0) as u32, r.y0.max(0.0) as u32);
    let (x1, y1) = ((r.x1 as u32).min(p.width), (r.y1 as u32).min(p.height));
    if x1 <= x0 || y1 <= y0 {
        return None;
    }
    let (w, h) = (x1 - x0, y1 - y0);
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in y0..y1 {
        for x in x0..x1 {
            data.extend_from_slice(&p.rgb(x as usize, y as usize));
        }
    }
    jpeg(&data, w, h, 90)
}

/// JPEG of the whole picture, at most `THUMB_WIDTH` wide.
pub fn thumbnail_jpeg(p: &Picture) -> Option<Vec<u8>> {
    let tw = (THUMB_WIDTH.min(p.width) as usize).max(1);
    let th = (p.height as usize * tw / p.width.max(1) as usize).max(1);
    let mut out = Vec::new();
    stretch_to(
        p,
        &Rect::frame(p.width as f32, p.height as f32),
        tw,
        th,
        &mut out,
    );
    jpeg(&out, tw as u32, th as u32, 80)
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

    fn gradient(w: u32, h: u32) -> Picture {
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                data.extend_from_slice(&[(x % 256) as u8, (y % 256) as u8, 128]);
            }
        }
        Picture::from_rgb(w, h, &data)
    }

    #[test]
    fn the_small_frame_keeps_the_aspect_and_the_level() {
        let p = Picture::from_rgb(1920, 1080, &vec![100; 1920 * 1080 * 3]);
        let (l, w, h) = small_luma(&p);
        assert_eq!((w, h), (160, 90));
        // Grey 100 is luma 102 in limited range.
        assert!(l.iter().all(|&v| (101..=103).contains(&v)), "{:?}", &l[..4]);
    }

    #[test]
    fn a_stretched_crop_samples_its_region() {
        let p = gradient(800, 600);
        let mut out = Vec::new();
        stretch(&p, &Rect::new(100.0, 50.0, 300.0, 250.0), 100, &mut out);
        assert_eq!(out.len(), 100 * 100 * 3);
        // Top-left of the output is near (100, 50) of the input; bottom-right near (300, 250),
        // through YUV and back (a few levels of rounding).
        assert!((out[0] as i32 - 100).abs() <= 6, "{}", out[0]);
        assert!((out[1] as i32 - 50).abs() <= 6, "{}", out[1]);
        let last = (100 * 100 - 1) * 3;
        assert!((out[last] as i32 - (299 % 256)).abs() <= 8, "{}", out[last]);
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
