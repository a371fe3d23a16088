//! storeguard: the in-store half of a retail security service.
//! See ARCHITECTURE.md for the map.

pub mod recording;
