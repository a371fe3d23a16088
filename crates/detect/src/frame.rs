//! A borrowed greyscale (luma) frame: what motion, quality and tamper read.

use thiserror::Error;

/// A frame's size or buffer does not make a frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame is {width}x{height}: both sides must be at least 1")]
    Empty { width: usize, height: usize },
    #[error("frame buffer has {got} bytes, {width}x{height} needs {expected}")]
    Length {
        width: usize,
        height: usize,
        expected: usize,
        got: usize,
    },
    #[error("frame is {got_width}x{got_height}, this detector was set up for {width}x{height}")]
    Size {
        width: usize,
        height: usize,
        got_width: usize,
        got_height: usize,
    },
}

/// One byte per pixel, rows packed without padding.
#[derive(Debug, Clone, Copy)]
pub struct Luma<'a> {
    data: &'a [u8],
    width: usize,
    height: usize,
}

impl<'a> Luma<'a> {
    /// Checks the size once here so that every reader may index without checks failing.
    pub fn new(data: &'a [u8], width: usize, height: usize) -> Result<Self, FrameError> {
        if width == 0 || height == 0 {
            return Err(FrameError::Empty { width, height });
        }
        let expected = width
            .checked_mul(height)
            .ok_or(FrameError::Empty { width, height })?;
        if data.len() != expected {
            return Err(FrameError::Length {
                width,
                height,
                expected,
                got: data.len(),
            });
        }
        Ok(Luma {
            data,
            width,
            height,
        })
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    pub fn get(&self, x: usize, y: usize) -> u8 {
        self.data[y * self.width + x]
    }

    /// An error unless the frame is `width`x`height` (detectors keep per-pixel state).
    pub fn expect_size(&self, width: usize, height: usize) -> Result<(), FrameError> {
        if self.width == width && self.height == height {
            Ok(())
        } else {
            Err(FrameError::Size {
                width,
                height,
                got_width: self.width,
                got_height: self.height,
            })
        }
    }
}

/// Area-average downscale to `w`x`h` (each output pixel the mean of the source pixels whose
/// centres fall in it), so small signatures do not alias on fine texture.
pub fn downscale(f: &Luma, w: usize, h: usize) -> Vec<f32> {
    if w == 0 || h == 0 {
        return Vec::new();
    }
    let mut sum = vec![0f32; w * h];
    let mut count = vec![0u32; w * h];
    for y in 0..f.height {
        let oy = y * h / f.height;
        for x in 0..f.width {
            let o = oy * w + x * w / f.width;
            sum[o] += f32::from(f.get(x, y));
            count[o] += 1;
        }
    }
    // A source smaller than the output leaves gaps; they take the nearest source pixel.
    for oy in 0..h {
        for ox in 0..w {
            let o = oy * w + ox;
            sum[o] = if count[o] > 0 {
                sum[o] / count[o] as f32
            } else {
                f32::from(f.get(ox * f.width / w, oy * f.height / h))
            };
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_sizes_are_errors_not_panics() {
        assert!(matches!(
            Luma::new(&[], 0, 0),
            Err(FrameError::Empty { .. })
        ));
        assert!(matches!(
            Luma::new(&[0; 5], 2, 3),
            Err(FrameError::Length { expected: 6, .. })
        ));
        assert!(Luma::new(&[0; 1], usize::MAX, 2).is_err());
        let f = Luma::new(&[0; 6], 2, 3).unwrap();
        assert!(f.expect_size(3, 2).is_err());
    }

    #[test]
    fn downscale_averages_and_fills_upscale_gaps() {
        let data = [0, 100, 200, 50];
        let f = Luma::new(&data, 2, 2).unwrap();
        assert_eq!(downscale(&f, 1, 1), vec![87.5]);
        assert_eq!(downscale(&f, 4, 4)[0..4], [0.0, 0.0, 100.0, 100.0]);
    }
}
