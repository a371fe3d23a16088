//! Reads back a segment file written by `TsWriter`: frame count, time extent and
//! keyframe offsets. Used at start-up to recover segments a crash left open and to
//! index orphan files, so neither the index nor the files are trusted blindly.

use super::ts::{parse_timestamp, read_full};
use std::io::{self, BufReader, Read};
use std::path::Path;

const PKT: usize = 188;
const PAT_PID: u16 = 0;

#[derive(Debug, Default, Clone)]
pub struct ScanResult {
    pub frames: u64,
    pub first_pts: Option<u64>,
    pub last_pts: Option<u64>,
    /// (pts_90k, byte offset where a reader may start: the PAT before the keyframe)
    pub keyframes: Vec<(u64, u64)>,
    /// Bytes up to the end of the last whole packet.
    pub valid_bytes: u64,
    /// The video stream_type from the PMT (0x1B H.264, 0x24 H.265).
    pub stream_type: Option<u8>,
}

impl ScanResult {
    /// UTC of a PTS, given the UTC and PTS of a known point, handling the 33-bit wrap.
    /// None when it falls outside the time range (a reference time from a garbage name).
    pub fn utc_of(pts: u64, ref_pts: u64, ref_utc_ns: i64) -> Option<i64> {
        let d = (pts.wrapping_sub(ref_pts)) & ((1 << 33) - 1);
        // Deltas over half the range are backwards steps (B-frames before the reference).
        let d = if d > (1 << 32) {
            d as i64 - (1 << 33)
        } else {
            d as i64
        };
        ref_utc_ns.checked_add(d * 100_000 / 9)
    }
}

pub fn scan_file(path: &Path) -> io::Result<ScanResult> {
    scan(BufReader::with_capacity(
        256 * 1024,
        std::fs::File::open(path)?,
    ))
}

pub fn scan(mut r: impl Read) -> io::Result<ScanResult> {
    let mut res = ScanResult::default();
    let mut pkt = [0u8; PKT];
    let mut offset = 0u64;
    let mut last_pat: Option<u64> = None;
    let mut video_pid: Option<u16> = None;
    while read_full(&mut r, &mut pkt)? == PKT {
        if pkt[0] != 0x47 {
            break; // torn write: stop at the last whole packet
        }
        let pid = u16::from_be_bytes([pkt[1] & 0x1F, pkt[2]]);
        let pusi = pkt[1] & 0x40 != 0;
        let afc = (pkt[3] >> 4) & 3;
        if pid == PAT_PID {
            last_pat = Some(offset);
        } else if pusi && afc == 1 && res.stream_type.is_none() && pkt[4] == 0 && pkt[5] == 0x02 {
            // PMT: pointer 0, table_id 2; skip to the first elementary stream entry.
            let info_len = (u16::from_be_bytes([pkt[15] & 0x0F, pkt[16]])) as usize;
            res.stream_type = pkt.get(17 + info_len).copied();
        } else if pusi && afc & 1 == 1 {
            let (rai, payload_at) = if afc == 3 {
                let len = pkt[4] as usize;
                (len > 0 && pkt[5] & 0x40 != 0, 5 + len)
            } else {
                (false, 4)
            };
            let p = &pkt[payload_at.min(PKT)..];
            if p.len() >= 14 && p[0] == 0 && p[1] == 0 && p[2] == 1 && (0xE0..=0xEF).contains(&p[3])
            {
                video_pid.get_or_insert(pid);
                if Some(pid) == video_pid && p[7] & 0x80 != 0 {
                    let pts = parse_timestamp(p[9..14].try_into().expect("5 bytes"));
                    res.frames += 1;
                    res.first_pts.get_or_insert(pts);
                    res.last_pts = Some(pts);
                    if rai {
                        // The writer puts PAT+PMT right before each keyframe.
                        let start = last_pat
                            .filter(|&o| offset - o <= 2 * PKT as u64)
                            .unwrap_or(offset);
                        res.keyframes.push((pts, start));
                    }
                }
            }
        }
        offset += PKT as u64;
        res.valid_bytes = offset;
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_of_handles_wrap() {
        let wrap = 1u64 << 33;
        assert_eq!(ScanResult::utc_of(90_000, 0, 0), Some(1_000_000_000));
        assert_eq!(
            ScanResult::utc_of(10, wrap - 90_000 + 10, 0),
            Some(1_000_000_000)
        );
        assert_eq!(
            ScanResult::utc_of(0, 90_000, 5_000_000_000),
            Some(4_000_000_000)
        );
        assert_eq!(ScanResult::utc_of(90_000, 0, i64::MAX - 10), None);
    }
}
