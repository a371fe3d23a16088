//! Image files in, the model's input out: for `storeguard detect` and tests.

use super::detector::Item;
use image::imageops::FilterType;
use std::path::{Path, PathBuf};
use storeguard_detect::geom::Rect;
use storeguard_detect::model::INPUT_SIZE;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ImageError {
    pub path: PathBuf,
    pub reason: String,
}

/// An image stretched to the model's input (no letterbox, as the model was trained), with
/// the size it came from.
pub struct Prepared {
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl Prepared {
    pub fn item(&self) -> Item<'_> {
        Item {
            rgb: &self.rgb,
            crop: Rect::new(0.0, 0.0, self.width as f32, self.height as f32),
        }
    }
}

pub fn load(path: &Path) -> Result<Prepared, ImageError> {
    let err = |reason: String| ImageError {
        path: path.to_path_buf(),
        reason,
    };
    let img = image::ImageReader::open(path)
        .map_err(|e| err(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?
        .decode()
        .map_err(|e| err(format!("not a readable JPEG or PNG: {e}")))?
        .to_rgb8();
    let (width, height) = img.dimensions();
    let s = INPUT_SIZE as u32;
    let scaled = image::imageops::resize(&img, s, s, FilterType::Triangle);
    Ok(Prepared {
        path: path.to_path_buf(),
        width,
        height,
        rgb: scaled.into_raw(),
    })
}
