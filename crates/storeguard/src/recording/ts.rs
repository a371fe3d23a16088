//! A small MPEG-TS muxer for one H.264 or H.265 video stream per file.
//!
//! We mux ourselves rather than use `mpegtsmux` because it is cheaper and because we need the
//! byte offset of every keyframe: the segment index maps UTC to offsets, so clips can be cut
//! from any keyframe without scanning. MPEG-TS is used because a file cut anywhere (power loss)
//! still plays up to its last complete packet.
//!
//! Layout of every file: one program (PMT PID 0x1000), one video PID 0x100 that also carries
//! the PCR. PAT + PMT precede every keyframe, so every keyframe offset is a valid start for a
//! reader. Each access unit is one PES packet (unbounded length, PTS and DTS when it differs).

use std::io::{self, Write};

/// Size of one transport stream packet.
pub const TS_PACKET_SIZE: usize = 188;
/// PID of the program map table.
pub const PMT_PID: u16 = 0x1000;
/// PID of the video elementary stream (also the PCR PID).
pub const VIDEO_PID: u16 = 0x100;

const PAT_PID: u16 = 0;
const PROGRAM_NUMBER: u16 = 1;
const TRANSPORT_STREAM_ID: u16 = 1;
const PAYLOAD_SIZE: usize = TS_PACKET_SIZE - 4;
const MASK_33: u64 = (1 << 33) - 1;
/// PCR runs this far behind DTS (ffmpeg's default mux delay), so a decoder model has each AU
/// in its buffer before the AU's DTS.
const PCR_DELAY_90K: u64 = 63_000;
/// Longest PCR gap we allow between access units; larger gaps get PCR-only packets.
const PCR_INTERVAL_90K: u64 = 9_000;
/// Gaps beyond this are timestamp jumps, not a slow frame rate: left alone.
const PCR_FILL_LIMIT_90K: u64 = 90_000;

/// H.264 AUD with primary_pic_type 7 (any slice type).
const AUD_H264: &[u8] = &[0, 0, 0, 1, 0x09, 0xF0];
/// H.265 AUD (nal type 35, temporal id 1) with pic_type 2 (any slice type).
const AUD_H265: &[u8] = &[0, 0, 0, 1, 0x46, 0x01, 0x50];

/// Video codec of the elementary stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    H264,
    H265,
}

impl VideoCodec {
    /// MPEG-TS `stream_type` in the PMT.
    pub fn stream_type(self) -> u8 {
        match self {
            VideoCodec::H264 => 0x1B,
            VideoCodec::H265 => 0x24,
        }
    }

    fn nal_type(self, nal: &[u8]) -> Option<u8> {
        let b = *nal.first()?;
        Some(match self {
            VideoCodec::H264 => b & 0x1F,
            VideoCodec::H265 => (b >> 1) & 0x3F,
        })
    }

    fn is_vcl(self, nal_type: u8) -> bool {
        match self {
            VideoCodec::H264 => (1..=5).contains(&nal_type),
            VideoCodec::H265 => nal_type < 32,
        }
    }

    fn is_random_access(self, nal_type: u8) -> bool {
        match self {
            VideoCodec::H264 => nal_type == 5,
            VideoCodec::H265 => (16..=21).contains(&nal_type),
        }
    }

    fn aud(self) -> &'static [u8] {
        match self {
            VideoCodec::H264 => AUD_H264,
            VideoCodec::H265 => AUD_H265,
        }
    }

    fn aud_type(self) -> u8 {
        match self {
            VideoCodec::H264 => 9,
            VideoCodec::H265 => 35,
        }
    }
}

/// Where one access unit landed in the current file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuWritten {
    /// Byte offset of the first packet written for this AU (the PAT, for keyframes).
    pub offset: u64,
    /// Bytes written for this AU, a multiple of 188.
    pub bytes: u64,
}

/// Muxes Annex B access units of one video stream into MPEG-TS.
///
/// Buffers are reused, so after warm-up writing an AU allocates nothing. Each AU goes to the
/// output in one `write_all`. If that fails the file's tail is undefined: start a new file
/// with [`TsWriter::start_file`] (the writer itself stays usable).
///
/// An access unit delimiter is inserted when the AU does not start with one: H.222.0 requires
/// one per AU for H.264 and H.265, ffmpeg's muxer does the same, some hardware players need it,
/// and it costs 6-7 bytes per AU.
#[derive(Debug)]
pub struct TsWriter {
    codec: VideoCodec,
    offset: u64,
    psi_pending: bool,
    last_pcr: Option<u64>,
    cc_pat: u8,
    cc_pmt: u8,
    cc_video: u8,
    pat: [u8; TS_PACKET_SIZE],
    pmt: [u8; TS_PACKET_SIZE],
    buf: Vec<u8>,
}

impl TsWriter {
    /// A writer for `codec`, positioned at offset 0 of a new file.
    pub fn new(codec: VideoCodec) -> Self {
        TsWriter {
            codec,
            offset: 0,
            psi_pending: true,
            last_pcr: None,
            cc_pat: 0,
            cc_pmt: 0,
            cc_video: 0,
            pat: psi_packet(PAT_PID, &pat_section()),
            pmt: psi_packet(PMT_PID, &pmt_section(codec)),
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    /// The codec this writer was built for.
    pub fn codec(&self) -> VideoCodec {
        self.codec
    }

    /// Bytes written to the current file so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Begin a new file: offsets restart at 0 and the next AU is preceded by PAT + PMT.
    /// Continuity counters carry on.
    pub fn start_file(&mut self) {
        self.offset = 0;
        self.psi_pending = true;
        self.last_pcr = None;
    }

    /// Write one Annex B access unit, in decode order.
    ///
    /// `pts_90k`/`dts_90k` are a monotonic 90 kHz clock (masked to 33 bits here; `dts_90k`
    /// defaults to `pts_90k`). Keyframes are preceded by PAT + PMT and flagged with
    /// random_access_indicator; every AU's first packet carries a PCR (DTS - 700 ms, not below
    /// 0, so start the clock at 1 s or later for a fully valid buffer model).
    pub fn write_access_unit<W: Write + ?Sized>(
        &mut self,
        out: &mut W,
        au: &[u8],
        pts_90k: u64,
        dts_90k: Option<u64>,
        keyframe: bool,
    ) -> io::Result<AuWritten> {
        if au.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty access unit",
            ));
        }
        let dts_90k = dts_90k.unwrap_or(pts_90k);
        let pcr = dts_90k.saturating_sub(PCR_DELAY_90K);
        self.buf.clear();
        self.buf
            .reserve((au.len() + 64) / PAYLOAD_SIZE * TS_PACKET_SIZE + 4 * TS_PACKET_SIZE);

        if keyframe || self.psi_pending {
            self.push_psi();
        }
        if let Some(last) = self.last_pcr {
            let gap = pcr.saturating_sub(last);
            if gap > PCR_INTERVAL_90K && gap <= PCR_FILL_LIMIT_90K {
                let mut t = last + PCR_INTERVAL_90K;
                while t < pcr {
                    self.push_pcr_only(t);
                    t += PCR_INTERVAL_90K;
                }
            }
        }

        let mut head = [0u8; 32];
        let head_len = self.pes_header(&mut head, au, pts_90k & MASK_33, dts_90k & MASK_33);
        self.push_pes(&head[..head_len], au, pcr & MASK_33, keyframe);

        if let Err(e) = out.write_all(&self.buf) {
            self.psi_pending = true;
            return Err(e);
        }
        let written = AuWritten {
            offset: self.offset,
            bytes: self.buf.len() as u64,
        };
        self.offset += written.bytes;
        self.psi_pending = false;
        self.last_pcr = Some(pcr);
        Ok(written)
    }

    fn push_psi(&mut self) {
        self.pat[3] = 0x10 | self.cc_pat;
        self.cc_pat = (self.cc_pat + 1) & 0xF;
        self.pmt[3] = 0x10 | self.cc_pmt;
        self.cc_pmt = (self.cc_pmt + 1) & 0xF;
        self.buf.extend_from_slice(&self.pat);
        self.buf.extend_from_slice(&self.pmt);
    }

    /// Adaptation-field-only packet carrying just a PCR (no payload, so CC does not advance).
    fn push_pcr_only(&mut self, pcr: u64) {
        let mut p = [0xFFu8; TS_PACKET_SIZE];
        p[0] = 0x47;
        p[1] = (VIDEO_PID >> 8) as u8;
        p[2] = VIDEO_PID as u8;
        p[3] = 0x20 | self.cc_video;
        p[4] = 183;
        p[5] = 0x10;
        write_pcr(&mut p[6..12], pcr & MASK_33);
        self.buf.extend_from_slice(&p);
    }

    /// PES header (+ AUD when the AU lacks one) into `head`; returns its length.
    fn pes_header(&self, head: &mut [u8; 32], au: &[u8], pts: u64, dts: u64) -> usize {
        head[..7].copy_from_slice(&[0, 0, 1, 0xE0, 0, 0, 0x84]);
        let mut n = if pts != dts {
            head[7] = 0xC0;
            head[8] = 10;
            write_timestamp(&mut head[9..14], 0b0011, pts);
            write_timestamp(&mut head[14..19], 0b0001, dts);
            19
        } else {
            head[7] = 0x80;
            head[8] = 5;
            write_timestamp(&mut head[9..14], 0b0010, pts);
            14
        };
        let first_type = NalUnits::new(au)
            .next()
            .and_then(|nal| self.codec.nal_type(nal));
        if first_type != Some(self.codec.aud_type()) {
            let aud = self.codec.aud();
            head[n..n + aud.len()].copy_from_slice(aud);
            n += aud.len();
        }
        n
    }

    /// Packetize `head` followed by `au` as one PES on the video PID.
    fn push_pes(&mut self, head: &[u8], au: &[u8], pcr: u64, keyframe: bool) {
        let total = head.len() + au.len();
        let mut pos = 0;
        let mut first = true;
        while pos < total {
            let remaining = total - pos;
            // Adaptation field bytes we must carry: length + flags + PCR on the first packet.
            let af_fixed = if first { 8 } else { 0 };
            let room = PAYLOAD_SIZE - af_fixed;
            let (payload, stuffing) = if remaining >= room {
                (room, 0)
            } else {
                (remaining, room - remaining)
            };
            let af_len = af_fixed + stuffing;

            let cc = self.cc_video;
            self.cc_video = (cc + 1) & 0xF;
            let pusi = if first { 0x40 } else { 0 };
            let afc = if af_len > 0 { 0x30 } else { 0x10 };
            self.buf.extend_from_slice(&[
                0x47,
                pusi | (VIDEO_PID >> 8) as u8,
                VIDEO_PID as u8,
                afc | cc,
            ]);
            if af_len > 0 {
                self.push_adaptation_field(af_len, first.then_some((pcr, keyframe)));
            }

            // The header only ever lands in the first packet (it is < 184 bytes).
            let end = pos + payload;
            if pos < head.len() {
                self.buf.extend_from_slice(&head[pos..]);
                self.buf.extend_from_slice(&au[..end - head.len()]);
            } else {
                self.buf
                    .extend_from_slice(&au[pos - head.len()..end - head.len()]);
            }
            pos = end;
            first = false;
        }
    }

    /// Adaptation field of `len` bytes in total (length byte included).
    fn push_adaptation_field(&mut self, len: usize, pcr: Option<(u64, bool)>) {
        self.buf.push((len - 1) as u8);
        if len == 1 {
            return;
        }
        let mut used = 2;
        match pcr {
            Some((pcr, rai)) => {
                self.buf.push(if rai { 0x50 } else { 0x10 });
                let mut b = [0u8; 6];
                write_pcr(&mut b, pcr);
                self.buf.extend_from_slice(&b);
                used += 6;
            }
            None => self.buf.push(0),
        }
        self.buf.resize(self.buf.len() + (len - used), 0xFF);
    }
}

/// 33-bit PTS/DTS with its 4-bit prefix and marker bits.
fn write_timestamp(out: &mut [u8], prefix: u8, ts: u64) {
    out[0] = (prefix << 4) | (((ts >> 30) as u8 & 0x07) << 1) | 1;
    out[1] = (ts >> 22) as u8;
    out[2] = (((ts >> 15) as u8 & 0x7F) << 1) | 1;
    out[3] = (ts >> 7) as u8;
    out[4] = ((ts as u8 & 0x7F) << 1) | 1;
}

/// PCR base (33 bits), 6 reserved bits, extension 0.
fn write_pcr(out: &mut [u8], base: u64) {
    out[0] = (base >> 25) as u8;
    out[1] = (base >> 17) as u8;
    out[2] = (base >> 9) as u8;
    out[3] = (base >> 1) as u8;
    out[4] = ((base as u8 & 1) << 7) | 0x7E;
    out[5] = 0;
}

fn pat_section() -> Vec<u8> {
    let mut s = vec![0x00, 0xB0, 13];
    s.extend_from_slice(&TRANSPORT_STREAM_ID.to_be_bytes());
    s.extend_from_slice(&[0xC1, 0, 0]);
    s.extend_from_slice(&PROGRAM_NUMBER.to_be_bytes());
    s.extend_from_slice(&(0xE000 | PMT_PID).to_be_bytes());
    with_crc(s)
}

fn pmt_section(codec: VideoCodec) -> Vec<u8> {
    let mut s = vec![0x02, 0xB0, 18];
    s.extend_from_slice(&PROGRAM_NUMBER.to_be_bytes());
    s.extend_from_slice(&[0xC1, 0, 0]);
    s.extend_from_slice(&(0xE000 | VIDEO_PID).to_be_bytes());
    s.extend_from_slice(&[0xF0, 0]);
    s.push(codec.stream_type());
    s.extend_from_slice(&(0xE000 | VIDEO_PID).to_be_bytes());
    s.extend_from_slice(&[0xF0, 0]);
    with_crc(s)
}

fn with_crc(mut s: Vec<u8>) -> Vec<u8> {
    let crc = crc32_mpeg2(&s);
    s.extend_from_slice(&crc.to_be_bytes());
    s
}

fn psi_packet(pid: u16, section: &[u8]) -> [u8; TS_PACKET_SIZE] {
    let mut p = [0xFFu8; TS_PACKET_SIZE];
    p[..5].copy_from_slice(&[0x47, 0x40 | (pid >> 8) as u8, pid as u8, 0x10, 0]);
    p[5..5 + section.len()].copy_from_slice(section);
    p
}

/// CRC-32/MPEG-2 (poly 0x04C11DB7, no reflection, no final xor). Only run at construction.
fn crc32_mpeg2(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Iterator over the NAL units of an Annex B buffer (start codes and trailing zeros stripped).
struct NalUnits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> NalUnits<'a> {
    fn new(data: &'a [u8]) -> Self {
        let pos = find_start_code(data, 0).map_or(data.len(), |sc| sc + 3);
        NalUnits { data, pos }
    }
}

impl<'a> Iterator for NalUnits<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while self.pos < self.data.len() {
            let start = self.pos;
            let (mut end, next) = match find_start_code(self.data, start) {
                Some(sc) => (sc, sc + 3),
                None => (self.data.len(), self.data.len()),
            };
            self.pos = next;
            while end > start && self.data[end - 1] == 0 {
                end -= 1;
            }
            if end > start {
                return Some(&self.data[start..end]);
            }
        }
        None
    }
}

/// Index of the next `00 00 01` at or after `from`.
fn find_start_code(data: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 2 < data.len() {
        match data[i + 2] {
            1 if data[i] == 0 && data[i + 1] == 0 => return Some(i),
            0 => i += 1,
            _ => i += 3,
        }
    }
    None
}

/// A 33-bit PTS/DTS from the 5 bytes it takes in a PES header.
pub fn parse_timestamp(b: &[u8; 5]) -> u64 {
    (u64::from(b[0] >> 1) & 0x07) << 30
        | u64::from(b[1]) << 22
        | u64::from(b[2] >> 1) << 15
        | u64::from(b[3]) << 7
        | u64::from(b[4] >> 1)
}

/// Reads until `buf` is full or EOF; returns the number of bytes read. A file cut off
/// by a power cut ends in a partial packet, which callers treat as the end.
pub fn read_full(r: &mut impl io::Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Whether a buffer holds a picture at all. Some streams deliver the parameter sets
/// (SPS/PPS/SEI) as a buffer of their own before the keyframe; those must be joined to
/// the picture that follows, not counted and indexed as a frame.
pub fn has_picture(codec: VideoCodec, au: &[u8]) -> bool {
    NalUnits::new(au).any(|nal| codec.nal_type(nal).is_some_and(|t| codec.is_vcl(t)))
}

/// Whether an Annex B access unit is a random access point (H.264 IDR; H.265 IRAP: BLA, IDR,
/// CRA). Decided by the first slice NAL, so the scan stops early. For callers whose buffer
/// flags are unreliable.
pub fn is_keyframe(codec: VideoCodec, au: &[u8]) -> bool {
    for nal in NalUnits::new(au) {
        let Some(t) = codec.nal_type(nal) else {
            continue;
        };
        if codec.is_random_access(t) {
            return true;
        }
        if codec.is_vcl(t) {
            return false;
        }
    }
    false
}

/// Parameter set NAL units (header included, no start code) found before the first slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterSets<'a> {
    pub codec: VideoCodec,
    /// H.265 only; empty for H.264.
    pub vps: Vec<&'a [u8]>,
    pub sps: Vec<&'a [u8]>,
    pub pps: Vec<&'a [u8]>,
}

impl ParameterSets<'_> {
    /// Coded picture size after cropping, from the first SPS.
    pub fn resolution(&self) -> Option<Resolution> {
        sps_resolution(self.codec, self.sps.first()?)
    }
}

/// The parameter sets of an access unit, or None unless SPS and PPS (and VPS for H.265) are
/// all present.
pub fn parameter_sets(codec: VideoCodec, au: &[u8]) -> Option<ParameterSets<'_>> {
    let mut ps = ParameterSets {
        codec,
        vps: Vec::new(),
        sps: Vec::new(),
        pps: Vec::new(),
    };
    for nal in NalUnits::new(au) {
        let Some(t) = codec.nal_type(nal) else {
            continue;
        };
        match (codec, t) {
            (VideoCodec::H264, 7) | (VideoCodec::H265, 33) => ps.sps.push(nal),
            (VideoCodec::H264, 8) | (VideoCodec::H265, 34) => ps.pps.push(nal),
            (VideoCodec::H265, 32) => ps.vps.push(nal),
            _ if codec.is_vcl(t) => break,
            _ => {}
        }
    }
    let complete = !ps.sps.is_empty()
        && !ps.pps.is_empty()
        && (codec == VideoCodec::H264 || !ps.vps.is_empty());
    complete.then_some(ps)
}

/// Picture size in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Resolution {
    pub width: u32,
    pub height: u32,
}

/// Width and height (after the cropping window) from an SPS NAL unit, header included.
/// None if the SPS is truncated or malformed.
pub fn sps_resolution(codec: VideoCodec, sps: &[u8]) -> Option<Resolution> {
    let rbsp = unescape_rbsp(sps);
    let mut r = BitReader::new(&rbsp);
    match codec {
        VideoCodec::H264 => h264_resolution(&mut r),
        VideoCodec::H265 => h265_resolution(&mut r),
    }
}

/// Strips emulation prevention bytes (`00 00 03` -> `00 00`).
fn unescape_rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// (SubWidthC, SubHeightC) for a ChromaArrayType; 1x1 also covers monochrome's crop units.
fn chroma_subsampling(chroma_array_type: u32) -> (u32, u32) {
    match chroma_array_type {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    }
}

fn h264_resolution(r: &mut BitReader) -> Option<Resolution> {
    r.skip(8)?; // NAL header
    let profile_idc = r.bits(8)?;
    r.skip(16)?; // constraint flags, level_idc
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            separate_colour_plane = r.bit()?;
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.skip(1)?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? {
                    skip_scaling_list(r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.skip(1)?;
            r.se()?;
            r.se()?;
            let cycle = r.ue()?;
            if cycle > 255 {
                return None;
            }
            for _ in 0..cycle {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.skip(1)?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = r.ue()?.checked_add(1)?;
    let height_map_units = r.ue()?.checked_add(1)?;
    let frame_mbs_only = u32::from(r.bit()?);
    if frame_mbs_only == 0 {
        r.skip(1)?; // mb_adaptive_frame_field_flag
    }
    r.skip(1)?; // direct_8x8_inference_flag
    let crop = if r.bit()? {
        [r.ue()?, r.ue()?, r.ue()?, r.ue()?]
    } else {
        [0; 4]
    };
    let chroma_array_type = if separate_colour_plane {
        0
    } else {
        chroma_format_idc
    };
    let (sub_w, sub_h) = chroma_subsampling(chroma_array_type);
    let crop_unit_y = sub_h * (2 - frame_mbs_only);
    let width = width_mbs
        .checked_mul(16)?
        .checked_sub(sub_w.checked_mul(crop[0].checked_add(crop[1])?)?)?;
    let height = ((2 - frame_mbs_only) * 16)
        .checked_mul(height_map_units)?
        .checked_sub(crop_unit_y.checked_mul(crop[2].checked_add(crop[3])?)?)?;
    Some(Resolution { width, height })
}

fn skip_scaling_list(r: &mut BitReader, size: usize) -> Option<()> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            next = (last + i64::from(r.se()?)).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Some(())
}

fn h265_resolution(r: &mut BitReader) -> Option<Resolution> {
    r.skip(16)?; // NAL header
    r.skip(4)?; // sps_video_parameter_set_id
    let max_sub_layers_minus1 = r.bits(3)? as usize;
    r.skip(1)?; // sps_temporal_id_nesting_flag
    // profile_tier_level: general profile (88 bits) + general_level_idc.
    r.skip(96)?;
    let mut sub_layer = [(false, false); 8];
    for s in sub_layer.iter_mut().take(max_sub_layers_minus1) {
        *s = (r.bit()?, r.bit()?);
    }
    if max_sub_layers_minus1 > 0 {
        r.skip(2 * (8 - max_sub_layers_minus1))?;
    }
    for &(profile, level) in sub_layer.iter().take(max_sub_layers_minus1) {
        if profile {
            r.skip(88)?;
        }
        if level {
            r.skip(8)?;
        }
    }
    r.ue()?; // sps_seq_parameter_set_id
    let chroma_format_idc = r.ue()?;
    let separate_colour_plane = chroma_format_idc == 3 && r.bit()?;
    let width = r.ue()?;
    let height = r.ue()?;
    let crop = if r.bit()? {
        [r.ue()?, r.ue()?, r.ue()?, r.ue()?]
    } else {
        [0; 4]
    };
    let chroma_array_type = if separate_colour_plane {
        0
    } else {
        chroma_format_idc
    };
    let (sub_w, sub_h) = chroma_subsampling(chroma_array_type);
    Some(Resolution {
        width: width.checked_sub(sub_w.checked_mul(crop[0].checked_add(crop[1])?)?)?,
        height: height.checked_sub(sub_h.checked_mul(crop[2].checked_add(crop[3])?)?)?,
    })
}

/// MSB-first bit reader over an RBSP.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        BitReader { data, pos: 0 }
    }

    fn bit(&mut self) -> Option<bool> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(b == 1)
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        debug_assert!(n <= 32);
        let mut v = 0u32;
        for _ in 0..n {
            v = (v << 1) | u32::from(self.bit()?);
        }
        Some(v)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        let end = self.pos.checked_add(n)?;
        if end > self.data.len() * 8 {
            return None;
        }
        self.pos = end;
        Some(())
    }

    /// Exp-Golomb unsigned; None above 32 bits (garbage).
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while !self.bit()? {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        ((1u64 << zeros) - 1 + u64::from(rest)).try_into().ok()
    }

    fn se(&mut self) -> Option<i32> {
        let k = i64::from(self.ue()?);
        let v = if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) };
        i32::try_from(v).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed TS packet of our own output.
    struct Packet {
        pid: u16,
        pusi: bool,
        cc: u8,
        has_payload: bool,
        pcr: Option<u64>,
        rai: bool,
        payload: Vec<u8>,
    }

    fn parse_packets(data: &[u8]) -> Vec<Packet> {
        assert_eq!(data.len() % TS_PACKET_SIZE, 0);
        data.chunks(TS_PACKET_SIZE)
            .map(|p| {
                assert_eq!(p[0], 0x47);
                let pid = (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]);
                let afc = (p[3] >> 4) & 3;
                assert_ne!(afc, 0);
                let mut at = 4;
                let (mut pcr, mut rai) = (None, false);
                if afc & 2 != 0 {
                    let len = usize::from(p[4]);
                    assert!(len <= 183);
                    if len > 0 {
                        let flags = p[5];
                        rai = flags & 0x40 != 0;
                        if flags & 0x10 != 0 {
                            let b = &p[6..12];
                            pcr = Some(
                                (u64::from(b[0]) << 25)
                                    | (u64::from(b[1]) << 17)
                                    | (u64::from(b[2]) << 9)
                                    | (u64::from(b[3]) << 1)
                                    | u64::from(b[4] >> 7),
                            );
                        }
                        let fixed = 1 + if pcr.is_some() { 6 } else { 0 };
                        assert!(p[5 + fixed..5 + len].iter().all(|&b| b == 0xFF));
                    }
                    at += 1 + len;
                }
                Packet {
                    pid,
                    pusi: p[1] & 0x40 != 0,
                    cc: p[3] & 0xF,
                    has_payload: afc & 1 != 0,
                    pcr,
                    rai,
                    payload: p[at..].to_vec(),
                }
            })
            .collect()
    }

    fn read_timestamp(b: &[u8]) -> u64 {
        (u64::from(b[0] >> 1 & 7) << 30)
            | (u64::from(b[1]) << 22)
            | (u64::from(b[2] >> 1) << 15)
            | (u64::from(b[3]) << 7)
            | u64::from(b[4] >> 1)
    }

    fn fake_au(len: usize, idr: bool) -> Vec<u8> {
        let mut au = vec![0, 0, 0, 1, if idr { 0x65 } else { 0x41 }];
        au.extend((0..len.saturating_sub(5)).map(|i| (i % 251) as u8 | 0x80));
        au.truncate(len.max(5));
        au
    }

    #[test]
    fn pat_matches_reference_bytes() {
        // The PAT every ffmpeg-made TS starts with (TSID 1, program 1 -> PMT 0x1000).
        assert_eq!(
            pat_section(),
            [
                0x00, 0xB0, 0x0D, 0x00, 0x01, 0xC1, 0x00, 0x00, 0x00, 0x01, 0xF0, 0x00, 0x2A, 0xB1,
                0x04, 0xB2
            ]
        );
    }

    #[test]
    fn packetizes_every_size_losslessly() {
        let mut w = TsWriter::new(VideoCodec::H264);
        let mut file = Vec::new();
        let mut expected_cc: Option<u8> = None;
        for (i, len) in (5..=1200)
            .step_by(7)
            .chain([183, 184, 185, 368, 369])
            .enumerate()
        {
            let key = i % 10 == 0;
            let au = fake_au(len, key);
            let pts = 90_000 + i as u64 * 3000;
            let r = w.write_access_unit(&mut file, &au, pts, None, key).unwrap();
            assert_eq!(r.offset as usize % TS_PACKET_SIZE, 0);
            let chunk = &file[r.offset as usize..];
            assert_eq!(chunk.len() as u64, r.bytes);
            let packets = parse_packets(chunk);
            let video: Vec<_> = packets.iter().filter(|p| p.pid == VIDEO_PID).collect();
            if key || i == 0 {
                assert_eq!(packets[0].pid, PAT_PID);
                assert_eq!(packets[1].pid, PMT_PID);
            } else {
                assert_eq!(packets[0].pid, VIDEO_PID);
            }
            assert!(video[0].pusi && video[0].pcr.is_some());
            assert_eq!(video[0].rai, key);
            assert!(video[1..].iter().all(|p| !p.pusi && p.pcr.is_none()));
            for p in &video {
                if let Some(prev) = expected_cc {
                    assert_eq!(p.cc, prev, "continuity counter");
                }
                expected_cc = Some((p.cc + 1) & 0xF);
            }
            let pes: Vec<u8> = video.iter().flat_map(|p| p.payload.clone()).collect();
            assert_eq!(&pes[..4], &[0, 0, 1, 0xE0]);
            assert_eq!(&pes[4..6], &[0, 0], "unbounded PES length");
            assert_eq!(pes[7], 0x80, "PTS only when DTS == PTS");
            assert_eq!(read_timestamp(&pes[9..14]), pts);
            assert_eq!(&pes[14..20], AUD_H264);
            assert_eq!(&pes[20..], &au[..]);
        }
    }

    #[test]
    fn masks_timestamps_to_33_bits_and_writes_dts() {
        let mut w = TsWriter::new(VideoCodec::H265);
        let mut out = Vec::new();
        let pts = (1u64 << 33) * 3 + 12_345;
        let dts = pts - 6000;
        let mut au = AUD_H265.to_vec();
        au.extend_from_slice(&[0, 0, 1, 0x26, 0x01, 0xAA, 0xBB]);
        w.write_access_unit(&mut out, &au, pts, Some(dts), true)
            .unwrap();
        let packets = parse_packets(&out);
        let p = &packets[2].payload;
        assert_eq!(p[7], 0xC0);
        assert_eq!(p[9] >> 4, 0b0011);
        assert_eq!(read_timestamp(&p[9..14]), 12_345);
        assert_eq!(p[14] >> 4, 0b0001);
        assert_eq!(read_timestamp(&p[14..19]), 6345);
        assert_eq!(&p[19..], &au[..], "no second AUD");
        assert_eq!(packets[2].pcr, Some((dts - PCR_DELAY_90K) & MASK_33));
    }

    #[test]
    fn low_frame_rates_still_get_a_pcr_every_100ms() {
        let mut w = TsWriter::new(VideoCodec::H264);
        let mut out = Vec::new();
        for i in 0..5u64 {
            let au = fake_au(300, i == 0);
            w.write_access_unit(&mut out, &au, 900_000 + i * 45_000, None, i == 0)
                .unwrap();
        }
        // A 10 s jump is a discontinuity, not a slow stream: no filler.
        let before = out.len();
        w.write_access_unit(&mut out, &fake_au(300, false), 2_000_000, None, false)
            .unwrap();
        assert_eq!(out.len() - before, 2 * TS_PACKET_SIZE);

        let pcrs: Vec<u64> = parse_packets(&out[..before])
            .iter()
            .filter_map(|p| p.pcr)
            .collect();
        assert!(pcrs.windows(2).all(|w| w[1] > w[0] && w[1] - w[0] <= 9000));
        assert_eq!(*pcrs.last().unwrap(), 900_000 + 4 * 45_000 - PCR_DELAY_90K);
        let fillers = parse_packets(&out)
            .iter()
            .filter(|p| !p.has_payload)
            .count();
        assert_eq!(fillers, 4 * 4);
    }

    #[test]
    fn start_file_resets_offset_and_repeats_psi() {
        let mut w = TsWriter::new(VideoCodec::H264);
        let mut out = Vec::new();
        w.write_access_unit(&mut out, &fake_au(50, true), 0, None, true)
            .unwrap();
        w.write_access_unit(&mut out, &fake_au(50, false), 3000, None, false)
            .unwrap();
        assert_eq!(w.offset(), 4 * TS_PACKET_SIZE as u64);
        w.start_file();
        let mut second = Vec::new();
        let r = w
            .write_access_unit(&mut second, &fake_au(50, false), 6000, None, false)
            .unwrap();
        assert_eq!(
            r,
            AuWritten {
                offset: 0,
                bytes: 3 * 188
            }
        );
        let pids: Vec<u16> = parse_packets(&second).iter().map(|p| p.pid).collect();
        assert_eq!(pids, [PAT_PID, PMT_PID, VIDEO_PID]);
    }

    #[test]
    fn failed_write_keeps_offset_and_resends_psi() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = TsWriter::new(VideoCodec::H264);
        let mut out = Vec::new();
        w.write_access_unit(&mut out, &fake_au(50, true), 0, None, true)
            .unwrap();
        assert!(
            w.write_access_unit(&mut Full, &fake_au(50, false), 3000, None, false)
                .is_err()
        );
        assert_eq!(w.offset(), 3 * 188);
        let r = w
            .write_access_unit(&mut out, &fake_au(50, false), 6000, None, false)
            .unwrap();
        assert_eq!(r.bytes, 3 * 188, "PSI again after an error");
    }

    #[test]
    fn nal_scanning() {
        let au = [
            0, 0, 0, 1, 0x09, 0xF0, // AUD
            0, 0, 1, 0x67, 1, 2, 3, 0, // SPS + trailing zero
            0, 0, 0, 1, 0x68, 4, // PPS
            0, 0, 1, 0x06, 5, // SEI
            0, 0, 1, 0x65, 0x88, 0, 0, 3, 1, // IDR with emulation prevention
        ];
        let nals: Vec<&[u8]> = NalUnits::new(&au).collect();
        assert_eq!(nals.len(), 5);
        assert_eq!(nals[1], &[0x67, 1, 2, 3]);
        assert!(is_keyframe(VideoCodec::H264, &au));
        let ps = parameter_sets(VideoCodec::H264, &au).unwrap();
        assert_eq!(ps.sps, [&[0x67, 1, 2, 3][..]]);
        assert_eq!(ps.pps, [&[0x68, 4][..]]);
        assert!(!is_keyframe(
            VideoCodec::H264,
            &[0, 0, 1, 0x09, 0xF0, 0, 0, 1, 0x41, 9]
        ));
        assert!(parameter_sets(VideoCodec::H264, &[0, 0, 1, 0x41, 9]).is_none());
        // H.265 CRA (21) is a keyframe, TRAIL_R (1) is not; VPS is required.
        assert!(is_keyframe(VideoCodec::H265, &[0, 0, 1, 42, 1, 7]));
        assert!(!is_keyframe(VideoCodec::H265, &[0, 0, 1, 2, 1, 7]));
        let hevc = [
            0, 0, 1, 0x40, 1, 0, 0, 1, 0x42, 1, 0, 0, 1, 0x44, 1, 0, 0, 1, 0x26, 1,
        ];
        let ps = parameter_sets(VideoCodec::H265, &hevc).unwrap();
        assert_eq!((ps.vps.len(), ps.sps.len(), ps.pps.len()), (1, 1, 1));
        assert!(parameter_sets(VideoCodec::H265, &hevc[5..]).is_none());
    }

    /// MSB-first writer to build SPSs by hand.
    #[derive(Default)]
    struct BitWriter {
        bytes: Vec<u8>,
        bits: usize,
    }

    impl BitWriter {
        fn put(&mut self, n: u32, v: u32) {
            for i in (0..n).rev() {
                if self.bits.is_multiple_of(8) {
                    self.bytes.push(0);
                }
                let b = ((v >> i) & 1) as u8;
                *self.bytes.last_mut().unwrap() |= b << (7 - self.bits % 8);
                self.bits += 1;
            }
        }
        fn ue(&mut self, v: u32) {
            let x = v + 1;
            let len = 32 - x.leading_zeros();
            self.put(len - 1, 0);
            self.put(len, x);
        }
        /// Escapes emulation prevention like an encoder would.
        fn finish(mut self) -> Vec<u8> {
            self.put(1, 1);
            let mut out = Vec::new();
            let mut zeros = 0;
            for b in self.bytes {
                if zeros >= 2 && b <= 3 {
                    out.push(3);
                    zeros = 0;
                }
                zeros = if b == 0 { zeros + 1 } else { 0 };
                out.push(b);
            }
            out
        }
    }

    #[test]
    fn h264_baseline_sps_with_cropping() {
        let mut w = BitWriter::default();
        w.put(8, 0x67);
        w.put(8, 66); // baseline
        w.put(16, 0x0028);
        w.ue(0); // sps id
        w.ue(0); // log2_max_frame_num_minus4
        w.ue(2); // poc type 2
        w.ue(1); // refs
        w.put(1, 0);
        w.ue(119); // 120 MBs
        w.ue(67); // 68 MBs
        w.put(1, 1); // frame_mbs_only
        w.put(1, 1); // direct_8x8
        w.put(1, 1); // cropping
        w.ue(0);
        w.ue(0);
        w.ue(0);
        w.ue(4);
        w.put(1, 0); // no VUI
        let sps = w.finish();
        assert_eq!(
            sps_resolution(VideoCodec::H264, &sps),
            Some(Resolution {
                width: 1920,
                height: 1080
            })
        );
        assert_eq!(sps_resolution(VideoCodec::H264, &sps[..6]), None);
    }

    #[test]
    fn h265_sps_with_sub_layers() {
        let mut w = BitWriter::default();
        w.put(16, 0x4201);
        w.put(4, 0);
        w.put(3, 1); // max_sub_layers_minus1
        w.put(1, 1);
        w.put(32, 0x0160_0000);
        w.put(32, 0x9000_0000);
        w.put(32, 0x0000_005D); // rest of general PTL + level
        w.put(1, 1); // sub_layer_profile_present
        w.put(1, 1); // sub_layer_level_present
        w.put(14, 0); // reserved 2 bits x 7
        for _ in 0..(88 / 8) {
            w.put(8, 0xA5);
        }
        w.put(8, 90);
        w.ue(0); // sps id
        w.ue(1); // 4:2:0
        w.ue(1920);
        w.ue(1088);
        w.put(1, 1);
        w.ue(0);
        w.ue(0);
        w.ue(0);
        w.ue(4);
        w.ue(0); // bit depth, just trailing content
        let sps = w.finish();
        assert_eq!(
            sps_resolution(VideoCodec::H265, &sps),
            Some(Resolution {
                width: 1920,
                height: 1080
            })
        );
    }
}
