//! storeguard: the in-store half of a retail security service.
//! See ARCHITECTURE.md for the map.

#[cfg(feature = "fixtures")]
pub mod fixtures;
