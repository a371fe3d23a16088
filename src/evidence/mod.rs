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
pub mod key;
pub mod manifest;
pub mod mp4;

pub use key::{DeviceKey, KeyError, parse_public_key};
pub use manifest::{Manifest, VerifyError, VerifyReport, sha256_file, sidecar_path, verify};
pub use mp4::{Mp4Error, Mp4Info, TsSlice, VideoCodec, remux_ts_to_mp4};

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Prefixes an I/O error with what was being done and to which path, keeping its kind.
pub(crate) fn io_context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// fsyncs a directory so that a rename or create inside it survives power loss.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_context(e, "fsync directory", dir))
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `bytes` to `path` atomically: a temp file created with `mode`, fsync, rename, fsync
/// of the directory. A reader sees either the old file or the complete new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    // A leftover from a crash would make create_new fail; it never holds anything we need.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_context(e, "remove stale", &tmp)),
    }
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| io_context(e, "create", &tmp))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| io_context(e, "write", &tmp))?;
        std::fs::rename(&tmp, path).map_err(|e| io_context(e, "rename into", path))?;
        fsync_dir(&parent_dir(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
