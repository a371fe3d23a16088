//! Evidence on the device: triggers in ([`incident`]), sealed clips out ([`clip`], [`mp4`]),
//! and evidence packages of several cameras for the police ([`package`]).
//!
//! Flow for one incident: a [`incident::Trigger`] is committed with its clip jobs; each job
//! cuts from the keyframe index, [`mp4::remux_ts_to_mp4`] writes the clip, the manifest
//! (wire format and signature rules in `storeguard_proto::manifest`) is filled, signed with
//! the device key and written next to the clip. Anyone holding the clip, its sidecar and
//! (ideally) the device public key from the control centre can check it with [`verify`].
//!
//! The cutting is blocking (file I/O, hashing, a GStreamer pipeline driven to EOS): call it
//! from `spawn_blocking` or a dedicated thread.

pub mod clip;
pub mod incident;
pub mod mp4;
pub mod package;
pub mod still;

pub use mp4::{
    Mp4Error, Mp4Info, TimeText, TsSlice, VideoCodec, remux_ts_to_mp4, remux_ts_to_mp4_timed,
};
pub use storeguard_proto::keys::{DeviceKey, KeyError, parse_public_key};
pub use storeguard_proto::manifest::{
    self as manifest, Manifest, VerifyError, VerifyReport, sha256_file, sidecar_path, verify,
};

pub(crate) use storeguard_base::fs::{fsync_dir, io_context, parent_dir};
