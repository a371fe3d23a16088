//! storeguard-detect: the person-detection core, pure and free of I/O.
//!
//! Everything between the decoder's frames and the events the device stores: the NanoDet
//! model's input and output contract ([`model`]), motion gating and the crops it plans
//! ([`motion`]), a tracker with zones and best shots ([`track`]), the rules that turn tracks
//! into events ([`rules`]) and the opening hours they consult ([`schedule`]), image quality
//! ([`quality`]) and camera tamper rules ([`tamper`]), and fair batching of inference across
//! cameras ([`sched`]). It takes plain slices and UTC nanoseconds and returns plain values:
//! no threads, no clocks, no files (except the system's time-zone database), so every rule is
//! tested with synthetic frames and tensors. It depends on no other crate of the project.

pub mod frame;
pub mod geom;
pub mod model;
pub mod motion;
pub mod quality;
pub mod rules;
pub mod sched;
pub mod schedule;
pub mod tamper;
pub mod track;

#[cfg(test)]
mod testutil;

pub use frame::{FrameError, Luma};
pub use geom::{Polygon, Rect};
pub use model::Detection;
