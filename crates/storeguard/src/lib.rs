//! storeguard: the in-store half of a retail security service.
//! See ARCHITECTURE.md for the map of modules and the invariants they keep.

pub mod button;
pub mod camera;
pub mod cmd;
pub mod config;
pub mod control;
pub mod daemon;
pub mod evidence;
pub mod exit;
pub mod logging;
pub mod recording;
pub mod state;
pub mod store;
pub mod uplink;

pub use storeguard_base::VERSION;
