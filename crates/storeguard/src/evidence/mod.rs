//! Evidence building blocks: the device signing key, the signed clip manifest and the
//! MPEG-TS -> MP4 remux that cuts a clip out of the recorder's segments.
//!
//! Flow for one incident: [`mp4::remux_ts_to_mp4`] writes the clip, [`manifest::FileRef::from_path`]
//! hashes it, the caller fills a [`manifest::Manifest`], signs it with [`key::DeviceKey`] and
//! writes it next to the clip with [`manifest::Manifest::write_sidecar`]. Anyone holding the
//! clip, its sidecar and (ideally) the device public key from the control centre can check it
//! with [`manifest::verify`].
//!
//! Everything here is blocking (file I/O, hashing, a GStreamer pipeline driven to EOS): call it
//! from `spawn_blocking` or a dedicated thread.

pub mod clip;
pub mod incident;
pub mod mp4;

pub use mp4::{Mp4Error, Mp4Info, TsSlice, VideoCodec, remux_ts_to_mp4};
pub use storeguard_proto::keys::{DeviceKey, KeyError, parse_public_key};
pub use storeguard_proto::manifest::{
    self as manifest, Manifest, VerifyError, VerifyReport, sha256_file, sidecar_path, verify,
};

pub(crate) use storeguard_base::fs::{fsync_dir, io_context, parent_dir};
