//! storeguard-base: the vocabulary every other storeguard crate shares, and nothing else.
//!
//! UTC time and the one format every interface prints it in ([`time`]), the clock seam
//! that tests drive ([`clock`]), the shutdown signal every task holds ([`shutdown`]),
//! crash-safe file writes ([`fs`]) and host:port parsing ([`net`]). It depends on no other
//! crate of the project, so anything may depend on it.

pub mod clock;
pub mod error;
pub mod fs;
pub mod net;
pub mod runtime;
pub mod shutdown;
pub mod time;

pub use clock::{Clock, FakeClock, NtpState, SystemClock};
pub use shutdown::Shutdown;
pub use time::{now_ns, parse_time, utc_ms};

/// The version every storeguard crate and binary reports (one workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
