//! storeguard: the device, the in-store half of a retail security service.
//!
//! One binary, daemon and technician CLI. The daemon records every camera into a
//! crash-safe ring (`camera`, `recording`, `store`), turns panic-button presses into
//! alerts and sealed evidence (`button`, `evidence`) and forwards both upstream through a
//! durable outbox (`uplink`). Every operation on the running daemon is a command (`cmd`)
//! applied to its `state`; the control socket (`control`) is one transport over them.
//! ARCHITECTURE.md maps the modules, the layers they may use, and the invariants they keep.

pub mod button;
pub mod camera;
pub mod cmd;
pub mod config;
pub mod control;
pub mod daemon;
pub mod detect;
pub mod evidence;
pub mod exit;
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
pub mod recording;
pub mod remote;
pub mod state;
pub mod store;
pub mod timekeep;
pub mod uplink;

pub use storeguard_base::VERSION;
