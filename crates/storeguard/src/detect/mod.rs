//! Person detection on the box (docs/detect.md).
//!
//! The pure logic (model contract, motion gating, tracking, zones, rules, tamper) lives in
//! the `storeguard-detect` crate; this module holds the I/O edges: ONNX Runtime behind the
//! [`detector::Detector`] trait, GStreamer decoding ([`decode`]), image files for
//! `storeguard detect`, and the daemon's detection threads ([`service`]).

pub mod decode;
pub mod detector;
pub mod image_file;
pub mod picture;
pub mod service;

pub use service::{Detection, Output, Shot};
pub use storeguard_detect as core;
