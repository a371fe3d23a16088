//! The clock seam: code that needs "now" takes a [`Clock`], so tests can drive time.

/// Wall-clock (UTC) and monotonic time.
pub trait Clock: Send + Sync + 'static {
    /// UTC nanoseconds since the Unix epoch (`CLOCK_REALTIME`).
    fn now_ns(&self) -> i64;
    /// Nanoseconds of `CLOCK_MONOTONIC`: never steps, stops during suspend.
    fn monotonic_ns(&self) -> u64;
}

/// The machine's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> i64 {
        crate::time::now_ns()
    }

    fn monotonic_ns(&self) -> u64 {
        monotonic_ns()
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock the kernel stamps GPIO edges with.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
