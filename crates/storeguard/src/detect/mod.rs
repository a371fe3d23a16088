//! Person detection on the box (docs/detect.md).
//!
//! The pure logic (model contract, motion gating, tracking, zones, rules, tamper) lives in
//! the `storeguard-detect` crate; this module holds the I/O edges: ONNX Runtime behind the
//! [`detector::Detector`] trait, and image files for `storeguard detect`.

pub mod detector;
pub mod image_file;

pub use storeguard_detect as core;
