//! The real edge source: one input line on a GPIO character device, via `gpiocdev`.
//!
//! Request: input, edge detection on both edges, bias and active-low from the settings.
//! On uAPI v2 the kernel debounces (`debounce_period`) and stamps events on
//! `CLOCK_MONOTONIC`. Monotonic rather than Realtime because the machine measures debounce
//! and stuck durations between edge timestamps and "now": an NTP step at boot (common on a
//! store box without RTC battery) would otherwise fake or hide a stuck line. Wall time is
//! recovered with [`to_utc`](super::to_utc) when the alarm is raised.
//!
//! uAPI v1 (kernels before 5.10) has neither debounce nor a clock choice: the source then
//! reports `kernel_debounce() == false` so the machine debounces in software, and event
//! timestamps (Realtime before 5.7, Monotonic after) are classified and mapped to monotonic.

use std::fmt;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gpiocdev::line::{self, EdgeDetection, EdgeKind, EventClock, Value};
use gpiocdev::{AbiVersion, Chip, Request};

use super::{Bias, Edge, EdgeClock, EdgeSource, LineId, LineSettings, monotonic_now_ns};

/// Which button, chip and line an error is about: as configured, plus what it resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRef {
    /// Button name from the config.
    pub button: String,
    /// Chip as configured.
    pub chip: String,
    /// Line as configured.
    pub line: LineId,
    /// Chip device, once resolved.
    pub chip_path: Option<PathBuf>,
    /// Line offset, once resolved.
    pub offset: Option<u32>,
}

impl fmt::Display for LineRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "button '{}' (chip '{}'", self.button, self.chip)?;
        if let Some(p) = self
            .chip_path
            .as_ref()
            .filter(|p| **p != Path::new(&self.chip))
        {
            write!(f, " at {}", p.display())?;
        }
        write!(f, ", line {}", self.line)?;
        if let (LineId::Name(_), Some(o)) = (&self.line, self.offset) {
            write!(f, " at offset {o}")?;
        }
        write!(f, ")")
    }
}

/// GPIO failures, each naming the button, chip and line.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    /// The chip does not exist or is not a GPIO chip.
    #[error("{at}: GPIO chip not found: {detail}")]
    ChipNotFound { at: Box<LineRef>, detail: String },
    /// The chip exists but has no such line.
    #[error("{at}: line not found: {detail}")]
    LineNotFound { at: Box<LineRef>, detail: String },
    /// Neither uAPI the kernel offers is compiled into this build.
    #[error("{at}: no usable GPIO uAPI: {detail}")]
    NoUsableAbi { at: Box<LineRef>, detail: String },
    /// The kernel refused the line request (busy, bias unsupported by the hardware, ...).
    #[error("{at}: line request failed{busy}")]
    Request {
        at: Box<LineRef>,
        /// `", in use by 'x'"` when another consumer holds the line, else empty.
        busy: String,
        #[source]
        source: Box<gpiocdev::Error>,
    },
    /// Waiting for or reading edge events failed.
    #[error("{at}: reading edge events")]
    Read {
        at: Box<LineRef>,
        #[source]
        source: std::io::Error,
    },
}

/// The path a chip spec names first: a path as is, `N` as `/dev/gpiochipN`, else `/dev/NAME`.
/// (A spec that matches no device may still be a chip label; see [`GpioCdevSource::open`].)
pub fn chip_path_candidate(spec: &str) -> PathBuf {
    if spec.contains('/') {
        PathBuf::from(spec)
    } else if !spec.is_empty() && spec.bytes().all(|b| b.is_ascii_digit()) {
        PathBuf::from(format!("/dev/gpiochip{spec}"))
    } else {
        PathBuf::from(format!("/dev/{spec}"))
    }
}

/// How the line will be requested, decided from the kernel's uAPI version alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestPlan {
    /// uAPI version in use.
    pub abi: AbiVersion,
    /// Whether the kernel debounces (else the machine does it in software).
    pub kernel_debounce: bool,
    /// Event clock to request; `None` on v1, which cannot select one.
    pub event_clock: Option<EventClock>,
}

/// The ABI fallback decision: v2 gets kernel debounce and a monotonic clock, v1 gets
/// software debounce and the kernel's fixed clock. `None` = no usable ABI detected.
pub fn plan_request(abi: Option<AbiVersion>) -> Option<RequestPlan> {
    match abi? {
        AbiVersion::V2 => Some(RequestPlan {
            abi: AbiVersion::V2,
            kernel_debounce: true,
            event_clock: Some(EventClock::Monotonic),
        }),
        AbiVersion::V1 => Some(RequestPlan {
            abi: AbiVersion::V1,
            kernel_debounce: false,
            event_clock: None,
        }),
    }
}

/// gpiocdev truncates consumer labels at 32 bytes; keep the button name readable in
/// `gpioinfo` by letting the prefix go short.
fn consumer_label(button: &str) -> String {
    let mut s = format!("storeguard:{button}");
    if s.len() > 31 {
        let mut cut = 31;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The gpiocdev request for `offset` on `chip_path`, as `settings` and `plan` want it.
/// Pure: nothing touches the kernel until `.request()` is called on the result.
pub fn request_builder(
    plan: &RequestPlan,
    chip_path: &Path,
    offset: u32,
    settings: &LineSettings,
    button: &str,
) -> gpiocdev::request::Builder {
    let mut b = Request::builder();
    b.on_chip(chip_path)
        .with_consumer(consumer_label(button))
        .with_line(offset)
        .as_input()
        .with_edge_detection(EdgeDetection::BothEdges);
    if settings.active_low {
        b.as_active_low();
    }
    match settings.bias {
        Bias::PullUp => {
            b.with_bias(line::Bias::PullUp);
        }
        Bias::PullDown => {
            b.with_bias(line::Bias::PullDown);
        }
        Bias::None => {
            b.with_bias(line::Bias::Disabled);
        }
        Bias::AsIs => {}
    }
    if plan.kernel_debounce && !settings.debounce.is_zero() {
        b.with_debounce_period(settings.debounce);
    }
    if let Some(clock) = plan.event_clock {
        b.with_event_clock(clock);
    }
    b
}

/// v1 event timestamps are `CLOCK_REALTIME` before Linux 5.7 and `CLOCK_MONOTONIC` after.
/// The two are decades apart, so whichever "now" the stamp is nearer tells them apart.
pub fn classify_v1_clock(ts_ns: u64, mono_now_ns: u64, real_now_ns: u64) -> EdgeClock {
    if ts_ns.abs_diff(real_now_ns) < ts_ns.abs_diff(mono_now_ns) {
        EdgeClock::Realtime
    } else {
        EdgeClock::Monotonic
    }
}

/// Convert a kernel event into an [`Edge`] on the monotonic clock. Event kinds are logical
/// (the kernel applies active-low), so `Rising` is "circuit closed". `v1_seq` numbers
/// events where the v1 ABI has no sequence numbers.
pub fn edge_from_event(
    ev: &line::EdgeEvent,
    abi: AbiVersion,
    mono_now_ns: u64,
    real_now_ns: u64,
    v1_seq: u64,
) -> Edge {
    let active = ev.kind == EdgeKind::Rising;
    match abi {
        AbiVersion::V2 => Edge {
            active,
            kernel_ts_ns: ev.timestamp_ns,
            clock: EdgeClock::Monotonic,
            seq: u64::from(ev.line_seqno),
        },
        AbiVersion::V1 => {
            let ts = match classify_v1_clock(ev.timestamp_ns, mono_now_ns, real_now_ns) {
                EdgeClock::Monotonic => ev.timestamp_ns,
                // Same age, measured back from monotonic now.
                EdgeClock::Realtime => {
                    mono_now_ns.saturating_sub(real_now_ns.saturating_sub(ev.timestamp_ns))
                }
            };
            Edge {
                active,
                kernel_ts_ns: ts,
                clock: EdgeClock::Monotonic,
                seq: v1_seq,
            }
        }
    }
}

fn realtime_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Open the chip named by `spec`: as a device path first, then as a chip label.
fn open_chip(spec: &str) -> Result<Chip, String> {
    let candidate = chip_path_candidate(spec);
    let direct = match Chip::from_path(&candidate) {
        Ok(chip) => return Ok(chip),
        Err(e) => format!("{}: {e}", candidate.display()),
    };
    if spec.contains('/') {
        return Err(direct);
    }
    let paths = gpiocdev::chip::chips().unwrap_or_default();
    for p in &paths {
        if let Ok(chip) = Chip::from_path(p)
            && chip.info().is_ok_and(|i| i.label == spec)
        {
            return Ok(chip);
        }
    }
    let present: Vec<_> = paths.iter().map(|p| p.display().to_string()).collect();
    Err(if present.is_empty() {
        format!("{direct}; this machine has no GPIO chips")
    } else {
        format!(
            "{direct}; no chip labelled '{spec}' among {}",
            present.join(", ")
        )
    })
}

/// Find the offset of `line` on `chip`.
fn resolve_line(chip: &Chip, line: &LineId) -> Result<u32, String> {
    let info = chip.info().map_err(|e| format!("reading chip info: {e}"))?;
    match line {
        LineId::Offset(o) if *o < info.num_lines => Ok(*o),
        LineId::Offset(o) => Err(format!(
            "offset {o} out of range, chip '{}' has {} lines",
            info.label, info.num_lines
        )),
        LineId::Name(name) => chip
            .find_line_info(name)
            .map(|li| li.offset)
            .ok_or_else(|| {
                format!(
                    "no line named '{name}' among the {} lines of chip '{}'",
                    info.num_lines, info.label
                )
            }),
    }
}

/// A button line requested from the GPIO character device.
#[derive(Debug)]
pub struct GpioCdevSource {
    at: LineRef,
    chip_path: PathBuf,
    offset: u32,
    plan: RequestPlan,
    req: Request,
    /// Level snapshot taken at request time, delivered as the first edge (seq 0).
    snapshot: Option<Edge>,
    /// Level of the last edge handed out, to resync after lost events.
    last_level: Option<bool>,
    /// Last kernel sequence number (v2) or our own event count (v1).
    last_seq: u64,
    v1_seq: u64,
}

impl GpioCdevSource {
    /// Resolve and request the line for button `button`. The first edge returned is a
    /// snapshot of the current level (seq 0), so a line already pressed, or an NC loop
    /// already cut, is seen at start-up.
    pub fn open(button: &str, settings: &LineSettings) -> Result<Self, GpioError> {
        let mut at = LineRef {
            button: button.to_owned(),
            chip: settings.chip.clone(),
            line: settings.line.clone(),
            chip_path: None,
            offset: None,
        };
        let chip = open_chip(&settings.chip).map_err(|detail| GpioError::ChipNotFound {
            at: Box::new(at.clone()),
            detail,
        })?;
        let chip_path = chip.path().to_path_buf();
        at.chip_path = Some(chip_path.clone());
        let abi = chip.detect_abi_version();
        let plan =
            plan_request(abi.as_ref().ok().copied()).ok_or_else(|| GpioError::NoUsableAbi {
                at: Box::new(at.clone()),
                detail: match &abi {
                    Err(e) => {
                        format!("{e} (uAPI v1 kernels need gpiocdev built with feature uapi_v1)")
                    }
                    Ok(_) => "unknown".into(),
                },
            })?;
        let offset =
            resolve_line(&chip, &settings.line).map_err(|detail| GpioError::LineNotFound {
                at: Box::new(at.clone()),
                detail,
            })?;
        at.offset = Some(offset);
        let req = request_builder(&plan, &chip_path, offset, settings, button)
            .request()
            .map_err(|source| {
                let busy = match chip.line_info(offset) {
                    Ok(li) if li.used && !li.consumer.is_empty() => {
                        format!(", in use by '{}'", li.consumer)
                    }
                    Ok(li) if li.used => ", in use".to_owned(),
                    _ => String::new(),
                };
                GpioError::Request {
                    at: Box::new(at.clone()),
                    busy,
                    source: Box::new(source),
                }
            })?;
        let level = req.value(offset).map_err(|source| GpioError::Request {
            at: Box::new(at.clone()),
            busy: String::new(),
            source: Box::new(source),
        })?;
        let active = level == Value::Active;
        let snapshot = Some(Edge {
            active,
            kernel_ts_ns: monotonic_now_ns(),
            clock: EdgeClock::Monotonic,
            seq: 0,
        });
        tracing::info!(
            button,
            chip = %chip_path.display(),
            offset,
            abi = %plan.abi,
            kernel_debounce = plan.kernel_debounce,
            active,
            "button line requested"
        );
        Ok(GpioCdevSource {
            at,
            chip_path,
            offset,
            plan,
            req,
            snapshot,
            last_level: None,
            last_seq: 0,
            v1_seq: 0,
        })
    }

    /// The chip device actually opened.
    pub fn chip_path(&self) -> &Path {
        &self.chip_path
    }

    /// The resolved line offset.
    pub fn offset(&self) -> u32 {
        self.offset
    }

    /// The uAPI version in use.
    pub fn abi(&self) -> AbiVersion {
        self.plan.abi
    }

    fn read_error(&self, source: std::io::Error) -> GpioError {
        GpioError::Read {
            at: Box::new(self.at.clone()),
            source,
        }
    }

    /// poll(2) the request fd; our own poll so EINTR reads as a timeout, not an error.
    fn wait_readable(&self, timeout: Duration) -> Result<bool, GpioError> {
        let mut pfd = libc::pollfd {
            fd: self.req.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // Round up so a sub-millisecond wait does not spin.
        let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd, alive for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(self.read_error(e));
        }
        if rc > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return Err(self.read_error(std::io::Error::other(format!(
                "poll revents {:#x}",
                pfd.revents
            ))));
        }
        Ok(rc > 0)
    }
}

impl GpioCdevSource {
    /// On a quiet line, compare the current level with the last one reported. Events can
    /// be lost when the kernel FIFO overflows (v1 drops the newest, which could be the
    /// settled level after a bounce storm); a level read repairs that.
    fn resync(&mut self) -> Result<Option<Edge>, GpioError> {
        let Some(last) = self.last_level else {
            return Ok(None);
        };
        let level = self
            .req
            .value(self.offset)
            .map_err(|e| self.read_error(std::io::Error::other(e)))?;
        let active = level == Value::Active;
        if active == last {
            return Ok(None);
        }
        tracing::warn!(
            button = %self.at.button,
            active,
            "button line level changed without an edge event; resynced"
        );
        Ok(Some(Edge {
            active,
            kernel_ts_ns: monotonic_now_ns(),
            clock: EdgeClock::Monotonic,
            seq: 0,
        }))
    }

    fn read_edge(&mut self) -> Result<Edge, GpioError> {
        let ev = self
            .req
            .read_edge_event()
            .map_err(|e| self.read_error(std::io::Error::other(e)))?;
        if self.plan.abi == AbiVersion::V1 {
            self.v1_seq += 1;
        }
        let edge = edge_from_event(
            &ev,
            self.plan.abi,
            monotonic_now_ns(),
            realtime_now_ns(),
            self.v1_seq,
        );
        if self.plan.abi == AbiVersion::V2 && self.last_seq != 0 && edge.seq > self.last_seq + 1 {
            tracing::warn!(
                button = %self.at.button,
                lost = edge.seq - self.last_seq - 1,
                "button edge events lost (kernel event buffer overflow)"
            );
        }
        self.last_seq = edge.seq;
        Ok(edge)
    }
}

impl EdgeSource for GpioCdevSource {
    fn next_edge(&mut self, timeout: Duration) -> Result<Option<Edge>, GpioError> {
        let edge = if let Some(snap) = self.snapshot.take() {
            Some(snap)
        } else if self.wait_readable(timeout)? {
            Some(self.read_edge()?)
        } else {
            self.resync()?
        };
        if let Some(e) = &edge {
            self.last_level = Some(e.active);
        }
        Ok(edge)
    }

    fn kernel_debounce(&self) -> bool {
        self.plan.kernel_debounce
    }

    fn now_ns(&self) -> u64 {
        monotonic_now_ns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::button::Wiring;

    fn settings(chip: &str, line: LineId) -> LineSettings {
        LineSettings {
            chip: chip.into(),
            line,
            active_low: true,
            bias: Bias::PullUp,
            wiring: Wiring::NormallyOpen,
            debounce: Duration::from_millis(20),
        }
    }

    #[test]
    fn chip_spec_resolves_to_device_path() {
        assert_eq!(
            chip_path_candidate("gpiochip0"),
            PathBuf::from("/dev/gpiochip0")
        );
        assert_eq!(
            chip_path_candidate("/dev/gpiochip4"),
            PathBuf::from("/dev/gpiochip4")
        );
        assert_eq!(chip_path_candidate("2"), PathBuf::from("/dev/gpiochip2"));
        assert_eq!(
            chip_path_candidate("pinctrl-rp1"),
            PathBuf::from("/dev/pinctrl-rp1")
        );
    }

    #[test]
    fn abi_v2_uses_kernel_debounce_and_monotonic_clock() {
        let plan = plan_request(Some(AbiVersion::V2)).unwrap();
        assert!(plan.kernel_debounce);
        assert_eq!(plan.event_clock, Some(EventClock::Monotonic));
    }

    #[test]
    fn abi_v1_falls_back_to_software_debounce() {
        let plan = plan_request(Some(AbiVersion::V1)).unwrap();
        assert!(!plan.kernel_debounce);
        assert_eq!(plan.event_clock, None);
        assert_eq!(plan_request(None), None);
    }

    #[test]
    fn v2_builder_config_carries_all_settings() {
        let plan = plan_request(Some(AbiVersion::V2)).unwrap();
        let s = settings("gpiochip0", LineId::Offset(17));
        let b = request_builder(&plan, Path::new("/dev/gpiochip0"), 17, &s, "front-desk");
        let cfg = b.config();
        assert_eq!(cfg.chip(), Path::new("/dev/gpiochip0"));
        assert_eq!(cfg.num_lines(), 1);
        let lc = cfg.line_config(17).unwrap();
        assert_eq!(lc.direction, Some(line::Direction::Input));
        assert!(lc.active_low);
        assert_eq!(lc.bias, Some(line::Bias::PullUp));
        assert_eq!(lc.edge_detection, Some(EdgeDetection::BothEdges));
        assert_eq!(lc.event_clock, Some(EventClock::Monotonic));
        assert_eq!(lc.debounce_period, Some(Duration::from_millis(20)));
    }

    #[test]
    fn v1_builder_config_has_no_debounce_or_clock() {
        let plan = plan_request(Some(AbiVersion::V1)).unwrap();
        let mut s = settings("gpiochip0", LineId::Offset(3));
        s.active_low = false;
        s.bias = Bias::AsIs;
        let b = request_builder(&plan, Path::new("/dev/gpiochip0"), 3, &s, "b");
        let lc = b.config().line_config(3).cloned().unwrap();
        assert!(!lc.active_low);
        assert_eq!(lc.bias, None);
        assert_eq!(lc.debounce_period, None);
        assert_eq!(lc.event_clock, None);
        assert_eq!(lc.edge_detection, Some(EdgeDetection::BothEdges));
    }

    #[test]
    fn bias_none_disables_bias_and_zero_debounce_is_omitted() {
        let plan = plan_request(Some(AbiVersion::V2)).unwrap();
        let mut s = settings("gpiochip0", LineId::Offset(1));
        s.bias = Bias::None;
        s.debounce = Duration::ZERO;
        let b = request_builder(&plan, Path::new("/dev/gpiochip0"), 1, &s, "b");
        let lc = b.config().line_config(1).cloned().unwrap();
        assert_eq!(lc.bias, Some(line::Bias::Disabled));
        assert_eq!(lc.debounce_period, None);
        let s2 = LineSettings {
            bias: Bias::PullDown,
            ..s
        };
        let b = request_builder(&plan, Path::new("/dev/gpiochip0"), 1, &s2, "b");
        assert_eq!(
            b.config().line_config(1).unwrap().bias,
            Some(line::Bias::PullDown)
        );
    }

    #[test]
    fn consumer_label_fits_the_kernel_limit() {
        assert_eq!(consumer_label("door"), "storeguard:door");
        let long = consumer_label("checkout-lane-number-twelve-east-wing");
        assert_eq!(long.len(), 31);
        assert!(long.starts_with("storeguard:checkout"));
        let multibyte = consumer_label("kassé-kassé-kassé-kassé-ø");
        assert!(multibyte.len() <= 31);
    }

    #[test]
    fn missing_chip_error_names_button_chip_and_line() {
        let s = settings("gpiochip9", LineId::Name("PANIC_BTN".into()));
        let err = GpioCdevSource::open("front-desk", &s).unwrap_err();
        assert!(matches!(err, GpioError::ChipNotFound { .. }), "{err:?}");
        let msg = err.to_string();
        for part in ["front-desk", "gpiochip9", "PANIC_BTN", "/dev/gpiochip9"] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
        assert!(msg.contains("No such file"), "{msg}");
    }

    #[test]
    fn missing_chip_by_path_and_label() {
        let s = settings("/dev/gpiochip42", LineId::Offset(5));
        let msg = GpioCdevSource::open("back-office", &s)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("back-office") && msg.contains("/dev/gpiochip42"),
            "{msg}"
        );
        assert!(msg.contains("line 5"), "{msg}");

        let s = settings("pinctrl-bcm2711", LineId::Offset(5));
        let msg = GpioCdevSource::open("b", &s).unwrap_err().to_string();
        assert!(msg.contains("pinctrl-bcm2711"), "{msg}");
    }

    #[test]
    fn non_gpio_device_is_rejected_as_chip() {
        let s = settings("/dev/null", LineId::Offset(0));
        let err = GpioCdevSource::open("b", &s).unwrap_err();
        assert!(matches!(err, GpioError::ChipNotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("not a GPIO"), "{err}");
    }

    #[test]
    fn line_ref_shows_what_was_resolved() {
        let mut at = LineRef {
            button: "door".into(),
            chip: "gpiochip0".into(),
            line: LineId::Name("PANIC".into()),
            chip_path: None,
            offset: None,
        };
        assert_eq!(
            at.to_string(),
            "button 'door' (chip 'gpiochip0', line 'PANIC')"
        );
        at.chip_path = Some("/dev/gpiochip0".into());
        at.offset = Some(17);
        assert_eq!(
            at.to_string(),
            "button 'door' (chip 'gpiochip0' at /dev/gpiochip0, line 'PANIC' at offset 17)"
        );
        let at = LineRef {
            chip: "/dev/gpiochip0".into(),
            line: LineId::Offset(17),
            ..at
        };
        assert_eq!(
            at.to_string(),
            "button 'door' (chip '/dev/gpiochip0', line 17)"
        );
    }

    #[test]
    fn v2_event_becomes_monotonic_edge() {
        let ev = line::EdgeEvent {
            timestamp_ns: 123_456_789,
            kind: EdgeKind::Rising,
            offset: 17,
            seqno: 9,
            line_seqno: 4,
        };
        let e = edge_from_event(
            &ev,
            AbiVersion::V2,
            200_000_000,
            1_700_000_000_000_000_000,
            0,
        );
        assert_eq!(
            e,
            Edge {
                active: true,
                kernel_ts_ns: 123_456_789,
                clock: EdgeClock::Monotonic,
                seq: 4
            }
        );
        let ev = line::EdgeEvent {
            kind: EdgeKind::Falling,
            ..ev
        };
        assert!(!edge_from_event(&ev, AbiVersion::V2, 0, 0, 0).active);
    }

    #[test]
    fn v1_realtime_stamps_are_mapped_to_monotonic() {
        let mono_now = 86_400_000_000_000; // one day of uptime
        let real_now = 1_750_000_000_000_000_000;
        assert_eq!(
            classify_v1_clock(real_now - 5_000_000, mono_now, real_now),
            EdgeClock::Realtime
        );
        assert_eq!(
            classify_v1_clock(mono_now - 5_000_000, mono_now, real_now),
            EdgeClock::Monotonic
        );
        let ev = line::EdgeEvent {
            timestamp_ns: real_now - 5_000_000,
            kind: EdgeKind::Falling,
            offset: 0,
            seqno: 0,
            line_seqno: 0,
        };
        let e = edge_from_event(&ev, AbiVersion::V1, mono_now, real_now, 7);
        assert_eq!(e.kernel_ts_ns, mono_now - 5_000_000);
        assert_eq!((e.active, e.seq, e.clock), (false, 7, EdgeClock::Monotonic));
        let ev = line::EdgeEvent {
            timestamp_ns: mono_now - 1_000,
            ..ev
        };
        let e = edge_from_event(&ev, AbiVersion::V1, mono_now, real_now, 8);
        assert_eq!(e.kernel_ts_ns, mono_now - 1_000);
    }
}
