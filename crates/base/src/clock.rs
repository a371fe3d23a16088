//! The clock seam: code that needs "now" takes a [`Clock`], so tests can drive time.
//!
//! Besides the time itself a clock says how far it can be believed: the kernel's NTP
//! state ([`NtpState`], from `adjtimex`), and steps, seen as a change in the offset
//! between `CLOCK_REALTIME` and `CLOCK_MONOTONIC` ([`StepDetector`]). See docs/time.md.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

/// What the kernel's NTP discipline says about the wall clock (`adjtimex(2)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NtpState {
    /// `STA_UNSYNC` is clear: a time daemon (chrony, ntpd, timesyncd) disciplines it.
    pub synced: bool,
    /// `maxerror`: the kernel's bound on the clock's error, in microseconds. Only
    /// meaningful while synced: an unsynchronised clock may be off by anything.
    pub maxerror_us: i64,
    /// `esterror`: the estimated error, in microseconds.
    pub esterror_us: i64,
}

impl NtpState {
    /// A clock nobody has set: what a box without a battery-backed clock boots with.
    pub const UNSYNCED: NtpState = NtpState {
        synced: false,
        maxerror_us: 16_000_000,
        esterror_us: 16_000_000,
    };

    /// The bound on the clock's error in ns, or None when nothing bounds it.
    pub fn error_bound_ns(&self) -> Option<i64> {
        self.synced.then_some(self.maxerror_us.max(0) * 1000)
    }
}

/// One reading of all the clocks at (nearly) the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSample {
    pub realtime_ns: i64,
    pub monotonic_ns: u64,
    pub ntp: NtpState,
}

impl ClockSample {
    /// `CLOCK_REALTIME − CLOCK_MONOTONIC`: constant while the clock runs freely (NTP
    /// slews it by at most 500 ppm), changed by a step.
    pub fn offset_ns(&self) -> i64 {
        self.realtime_ns.wrapping_sub(self.monotonic_ns as i64)
    }
}

/// Wall-clock (UTC) and monotonic time, and the wall clock's quality.
pub trait Clock: Send + Sync + 'static {
    /// UTC nanoseconds since the Unix epoch (`CLOCK_REALTIME`).
    fn now_ns(&self) -> i64;
    /// Nanoseconds of `CLOCK_MONOTONIC`: never steps, stops during suspend.
    fn monotonic_ns(&self) -> u64;
    /// The kernel's NTP state of the wall clock.
    fn ntp(&self) -> std::io::Result<NtpState>;
    /// All of it at once.
    fn sample(&self) -> std::io::Result<ClockSample> {
        let ntp = self.ntp()?;
        Ok(ClockSample {
            realtime_ns: self.now_ns(),
            monotonic_ns: self.monotonic_ns(),
            ntp,
        })
    }
}

/// The machine's clocks (with the daemon's test clock applied, when one is set).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> i64 {
        crate::time::now_ns()
    }

    fn monotonic_ns(&self) -> u64 {
        monotonic_ns()
    }

    fn ntp(&self) -> std::io::Result<NtpState> {
        if OVERRIDE_ON.load(Ordering::Relaxed)
            && let Some(n) = *lock(&OVERRIDE_NTP)
        {
            return Ok(n);
        }
        kernel_ntp()
    }
}

/// Reads the kernel's NTP state (`adjtimex` with no modes: changes nothing).
pub fn kernel_ntp() -> std::io::Result<NtpState> {
    // SAFETY: an all-zero timex is valid input (modes = 0: read only), and adjtimex only
    // writes the struct we pass.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::adjtimex(&mut tx) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(NtpState {
        // TIME_ERROR is what the kernel answers while STA_UNSYNC is set.
        synced: tx.status & libc::STA_UNSYNC == 0 && r != libc::TIME_ERROR,
        maxerror_us: tx.maxerror as i64,
        esterror_us: tx.esterror as i64,
    })
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock the kernel stamps GPIO edges with.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

// time_t and c_long are 32 bits on 32-bit ARM: the casts are not no-ops everywhere.
#[allow(clippy::unnecessary_cast)]
fn clock_ns(id: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// The daemon's test clock: an offset added to the wall clock and an NTP state in place
// of the kernel's. Only the daemon's debug-build test hook (`STOREGUARD_TEST_CLOCK`,
// docs/time.md) sets it; nothing else does, so in production both are off.
static OVERRIDE_ON: AtomicBool = AtomicBool::new(false);
static OVERRIDE_NTP: Mutex<Option<NtpState>> = Mutex::new(None);

/// Makes this process's wall clock read `offset_ns` away from the system's and report
/// `ntp` as its NTP state. For the daemon's test clock only (see the module docs).
pub fn set_test_override(offset_ns: i64, ntp: NtpState) {
    *lock(&OVERRIDE_NTP) = Some(ntp);
    crate::time::set_test_offset(offset_ns);
    OVERRIDE_ON.store(true, Ordering::SeqCst);
}

pub use crate::time::from_system_ns;

/// A clock that tests drive: wall time, monotonic time and NTP state are whatever the
/// test set, and steps are explicit.
#[derive(Debug)]
pub struct FakeClock {
    inner: Mutex<ClockSample>,
}

impl FakeClock {
    /// Starts at `realtime_ns`, monotonic time 1 s, unsynchronised.
    pub fn new(realtime_ns: i64) -> Self {
        FakeClock {
            inner: Mutex::new(ClockSample {
                realtime_ns,
                monotonic_ns: 1_000_000_000,
                ntp: NtpState::UNSYNCED,
            }),
        }
    }

    /// Time passes: both clocks advance.
    pub fn advance(&self, ns: u64) {
        let mut s = lock(&self.inner);
        s.realtime_ns += ns as i64;
        s.monotonic_ns += ns;
    }

    /// The wall clock is stepped (settimeofday, NTP's first fix); monotonic time is not.
    pub fn step(&self, ns: i64) {
        lock(&self.inner).realtime_ns += ns;
    }

    pub fn set_ntp(&self, ntp: NtpState) {
        lock(&self.inner).ntp = ntp;
    }
}

impl Clock for FakeClock {
    fn now_ns(&self) -> i64 {
        lock(&self.inner).realtime_ns
    }

    fn monotonic_ns(&self) -> u64 {
        lock(&self.inner).monotonic_ns
    }

    fn ntp(&self) -> std::io::Result<NtpState> {
        Ok(lock(&self.inner).ntp)
    }

    fn sample(&self) -> std::io::Result<ClockSample> {
        Ok(*lock(&self.inner))
    }
}

/// A step of the wall clock, seen between two samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// What the wall clock would have read now without the step.
    pub before_ns: i64,
    /// What it reads now.
    pub after_ns: i64,
    /// `after − before`: positive when the clock jumped forward.
    pub size_ns: i64,
    /// The NTP state before and after.
    pub ntp_before: NtpState,
    pub ntp_after: NtpState,
}

/// Smallest change of the realtime−monotonic offset taken for a step. NTP slews at most
/// 500 ppm (0.5 ms per second), and time daemons step only beyond 128 ms (ntpd) or a
/// configured threshold (chrony's makestep).
pub const STEP_THRESHOLD_NS: i64 = 50_000_000;

/// Watches a clock's samples for steps: a change of `CLOCK_REALTIME − CLOCK_MONOTONIC`
/// beyond a threshold. Feed it samples at any rate; slewing never adds up to a step
/// because each sample is compared with the one before.
#[derive(Debug, Clone)]
pub struct StepDetector {
    last: Option<ClockSample>,
    threshold_ns: i64,
}

impl Default for StepDetector {
    fn default() -> Self {
        StepDetector::new(STEP_THRESHOLD_NS)
    }
}

impl StepDetector {
    pub fn new(threshold_ns: i64) -> Self {
        StepDetector {
            last: None,
            threshold_ns,
        }
    }

    /// Starts from a known earlier sample (e.g. the last one a previous run saw).
    pub fn with_last(mut self, last: ClockSample) -> Self {
        self.last = Some(last);
        self
    }

    pub fn last(&self) -> Option<ClockSample> {
        self.last
    }

    pub fn observe(&mut self, s: ClockSample) -> Option<Step> {
        let prev = self.last.replace(s)?;
        let size = s.offset_ns().wrapping_sub(prev.offset_ns());
        (size.abs() >= self.threshold_ns).then(|| Step {
            before_ns: s.realtime_ns - size,
            after_ns: s.realtime_ns,
            size_ns: size,
            ntp_before: prev.ntp,
            ntp_after: s.ntp,
        })
    }
}

/// The box clock as the recording path sees it, published by the daemon's time keeper
/// and read per frame: which epoch (time base between two steps) it is in, and its
/// quality. A lock-free reader would gain nothing measurable at camera frame rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoxClock {
    /// The epoch's id (its row in the database), 0 before the time keeper started.
    pub epoch: i64,
    /// `CLOCK_REALTIME − CLOCK_MONOTONIC` when the epoch began.
    pub base_ns: i64,
    pub synced: bool,
    /// Error bound in ns while synced; None when unsynchronised.
    pub error_ns: Option<i64>,
    /// `CLOCK_REALTIME − CLOCK_MONOTONIC` at the time keeper's last poll.
    pub offset_ns: i64,
}

static BOX_CLOCK: RwLock<BoxClock> = RwLock::new(BoxClock {
    epoch: 0,
    base_ns: 0,
    synced: false,
    error_ns: None,
    offset_ns: 0,
});

/// Publishes the box clock's state (the time keeper only).
pub fn publish(c: BoxClock) {
    *BOX_CLOCK.write().unwrap_or_else(|p| p.into_inner()) = c;
}

/// The box clock's last published state.
pub fn box_clock() -> BoxClock {
    *BOX_CLOCK.read().unwrap_or_else(|p| p.into_inner())
}

/// The box clock to stamp a time read just now with: the published state, unless the
/// clock has stepped since the time keeper's last poll (at most 100 ms ago). Then the
/// time is on a clock no epoch describes yet, and is stamped with none (0), so the
/// step's correction does not move it a second time.
pub fn box_clock_for_stamp() -> BoxClock {
    let c = box_clock();
    let live = crate::time::now_ns().wrapping_sub(monotonic_ns() as i64);
    if c.epoch != 0 && live.wrapping_sub(c.offset_ns).abs() >= STEP_THRESHOLD_NS {
        return BoxClock { epoch: 0, ..c };
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    const S: i64 = 1_000_000_000;

    fn synced() -> NtpState {
        NtpState {
            synced: true,
            maxerror_us: 20_000,
            esterror_us: 1_000,
        }
    }

    #[test]
    fn the_kernel_state_reads() {
        let n = kernel_ntp().expect("adjtimex");
        assert!(n.maxerror_us >= 0, "{n:?}");
        assert_eq!(n.error_bound_ns().is_some(), n.synced);
    }

    #[test]
    fn a_cold_boot_step_is_seen_with_its_size_and_states() {
        let c = FakeClock::new(10 * S); // 1970-01-01T00:00:10Z
        let mut d = StepDetector::default();
        assert_eq!(d.observe(c.sample().unwrap()), None);
        c.advance(S as u64);
        assert_eq!(
            d.observe(c.sample().unwrap()),
            None,
            "time passing is no step"
        );
        let right = 1_764_600_000 * S;
        c.step(right - 11 * S);
        c.set_ntp(synced());
        let st = d.observe(c.sample().unwrap()).expect("step");
        assert_eq!(st.before_ns, 11 * S);
        assert_eq!(st.after_ns, right);
        assert_eq!(st.size_ns, right - 11 * S);
        assert!(!st.ntp_before.synced && st.ntp_after.synced);
    }

    #[test]
    fn slewing_and_small_corrections_are_no_step_backward_ones_are() {
        let c = FakeClock::new(1_764_600_000 * S);
        c.set_ntp(synced());
        let mut d = StepDetector::default();
        d.observe(c.sample().unwrap());
        for _ in 0..100 {
            c.advance(S as u64);
            c.step(500_000); // 500 ppm, the most NTP slews
            assert_eq!(d.observe(c.sample().unwrap()), None);
        }
        c.step(-2 * S);
        let st = d.observe(c.sample().unwrap()).expect("backward step");
        assert_eq!(st.size_ns, -2 * S);
        assert_eq!(st.after_ns - st.before_ns, -2 * S);
    }

    #[test]
    fn ntp_loss_and_return_change_the_error_bound_not_the_offset() {
        let c = FakeClock::new(1_764_600_000 * S);
        c.set_ntp(synced());
        assert_eq!(c.ntp().unwrap().error_bound_ns(), Some(20_000_000));
        let mut d = StepDetector::default();
        d.observe(c.sample().unwrap());
        c.set_ntp(NtpState::UNSYNCED);
        c.advance(S as u64);
        assert_eq!(d.observe(c.sample().unwrap()), None);
        assert_eq!(c.ntp().unwrap().error_bound_ns(), None);
        c.set_ntp(synced());
        c.advance(S as u64);
        assert_eq!(d.observe(c.sample().unwrap()), None);
    }

    #[test]
    fn a_time_read_after_an_unseen_step_is_stamped_with_no_epoch() {
        let live = crate::time::now_ns() - monotonic_ns() as i64;
        let c = BoxClock {
            epoch: 7,
            base_ns: live,
            synced: true,
            error_ns: Some(1),
            offset_ns: live,
        };
        publish(c);
        assert_eq!(box_clock_for_stamp().epoch, 7);
        publish(BoxClock {
            offset_ns: live - 2 * S,
            ..c
        });
        assert_eq!(
            box_clock_for_stamp().epoch,
            0,
            "stepped since the last poll"
        );
        publish(BoxClock {
            epoch: 0,
            base_ns: 0,
            synced: false,
            error_ns: None,
            offset_ns: 0,
        });
    }

    #[test]
    fn the_test_override_moves_only_this_process_wall_clock() {
        // Off by default: system readings pass through.
        assert_eq!(from_system_ns(5), 5);
    }
}
