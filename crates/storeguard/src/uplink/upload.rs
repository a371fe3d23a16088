//! Evidence upload: one clip at a time, read from its file in chunks addressed by byte
//! offset, paced by a token bucket. Progress (the first byte the broker has not
//! acknowledged) is persisted in the `upload` table, so a restart resumes there.

use crate::store::upload::UploadRow;
use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use storeguard_proto::topics::{ChunkHeader, SCHEMA_CHUNK, encode_chunk};

/// Chunks of one clip in flight at once: enough to keep a link busy, few enough that an
/// alert never waits behind more than two chunks on the wire.
pub const CHUNK_WINDOW: usize = 2;

/// Token bucket (GCRA form) over payload bytes; burst of one chunk.
pub struct Bucket {
    rate: Option<f64>,
    burst: Duration,
    /// Theoretical arrival time: when the bucket is full again.
    tat: Instant,
}

impl Bucket {
    pub fn new(rate_bytes_per_s: Option<u64>, burst_bytes: u64) -> Bucket {
        let rate = rate_bytes_per_s.map(|r| r as f64);
        let burst = rate.map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(burst_bytes as f64 / r)
        });
        Bucket {
            rate,
            burst,
            tat: Instant::now(),
        }
    }

    /// Takes `bytes` now, or says when to try again.
    pub fn take(&mut self, bytes: usize, now: Instant) -> Result<(), Instant> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let cost = Duration::from_secs_f64(bytes as f64 / rate);
        let tat = self.tat.max(now);
        // Send while the debt stays within one burst, then pay the full cost.
        if tat > now + self.burst {
            return Err(tat - self.burst);
        }
        self.tat = tat + cost;
        Ok(())
    }
}

/// The clip being uploaded.
pub struct Active {
    pub clip: String,
    pub path: PathBuf,
    pub total: u64,
    pub sha256: String,
    /// Persisted progress: every byte before this was acknowledged by the broker.
    pub acked: u64,
    /// Next byte to publish.
    pub next_send: u64,
    /// Offsets of chunks published and not yet acknowledged.
    pub in_flight: BTreeSet<u64>,
    file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("clip {clip}: cannot open {path}")]
    Open {
        clip: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("clip {clip}: {path} is {found} bytes, the store says {expected}")]
    Size {
        clip: String,
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("clip {clip}: read {path} at offset {offset}")]
    Read {
        clip: String,
        path: PathBuf,
        offset: u64,
        source: std::io::Error,
    },
}

impl Active {
    pub fn open(data_dir: &Path, row: &UploadRow) -> Result<Active, UploadError> {
        let path = data_dir.join(&row.path);
        let file = File::open(&path).map_err(|source| UploadError::Open {
            clip: row.clip.clone(),
            path: path.clone(),
            source,
        })?;
        let found = file
            .metadata()
            .map_err(|source| UploadError::Open {
                clip: row.clip.clone(),
                path: path.clone(),
                source,
            })?
            .len();
        if found != row.total {
            return Err(UploadError::Size {
                clip: row.clip.clone(),
                path,
                expected: row.total,
                found,
            });
        }
        let start = row.next_offset.min(row.total);
        Ok(Active {
            clip: row.clip.clone(),
            path,
            total: row.total,
            sha256: row.sha256.clone(),
            acked: start,
            next_send: start,
            in_flight: BTreeSet::new(),
            file,
        })
    }

    /// The first byte not yet acknowledged, given what is in flight.
    pub fn ack_point(&self) -> u64 {
        self.in_flight
            .first()
            .copied()
            .unwrap_or(u64::MAX)
            .min(self.next_send)
    }

    pub fn done(&self) -> bool {
        self.in_flight.is_empty() && self.acked >= self.total
    }

    /// Forgets what was in flight on a lost connection: resend from the persisted point.
    pub fn rewind(&mut self) {
        self.in_flight.clear();
        self.next_send = self.acked;
    }

    /// Builds the chunk at `offset` (at most `chunk_size` bytes).
    pub fn chunk(
        &self,
        device: &str,
        offset: u64,
        chunk_size: u64,
    ) -> Result<(u64, Vec<u8>), UploadError> {
        chunk_at(
            &self.file,
            &self.path,
            device,
            &self.clip,
            &self.sha256,
            self.total,
            offset,
            chunk_size,
        )
    }
}

/// Reads and frames one chunk of a clip file.
#[allow(clippy::too_many_arguments)]
pub fn chunk_at(
    file: &File,
    path: &Path,
    device: &str,
    clip: &str,
    sha256: &str,
    total: u64,
    offset: u64,
    chunk_size: u64,
) -> Result<(u64, Vec<u8>), UploadError> {
    let len = chunk_size.min(total.saturating_sub(offset));
    let mut data = vec![0u8; len as usize];
    file.read_exact_at(&mut data, offset)
        .map_err(|source| UploadError::Read {
            clip: clip.to_string(),
            path: path.to_path_buf(),
            offset,
            source,
        })?;
    let h = ChunkHeader {
        schema: SCHEMA_CHUNK.into(),
        msg_id: format!("{device}:{clip}@{offset}"),
        clip: clip.to_string(),
        offset,
        len,
        total,
        sha256: sha256.to_string(),
        last: offset + len >= total,
    };
    Ok((len, encode_chunk(&h, &data)))
}

/// The offset of the final chunk of a `total`-byte clip.
pub fn final_offset(total: u64, chunk_size: u64) -> u64 {
    if total == 0 {
        0
    } else {
        (total - 1) / chunk_size * chunk_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_paces_to_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(1000), 500);
        let mut now = t0;
        let mut sent = 0u64;
        // Simulate 10 s of trying to send 100-byte messages as fast as allowed.
        while now < t0 + Duration::from_secs(10) {
            match b.take(100, now) {
                Ok(()) => sent += 100,
                Err(at) => {
                    assert!(at > now);
                    now = at;
                }
            }
        }
        assert!((9_500..=11_100).contains(&sent), "{sent}");
        let mut free = Bucket::new(None, 0);
        assert!(free.take(1 << 30, t0).is_ok());
    }

    #[test]
    fn final_chunk_offset() {
        assert_eq!(final_offset(10, 4), 8);
        assert_eq!(final_offset(8, 4), 4);
        assert_eq!(final_offset(1, 4), 0);
    }
}
