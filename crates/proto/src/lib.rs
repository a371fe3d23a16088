//! storeguard-proto: the wire between a store box and the control centre.
//!
//! The MQTT topic tree and every payload ([`topics`]; JSON Schemas in `docs/schemas/`),
//! the chunk framing of evidence uploads, the signed evidence manifest and its offline
//! verification ([`manifest`]), Ed25519 key files ([`keys`]), the control-centre keys a box
//! trusts and signed JSON ([`trust`]) and the broker session both
//! sides open ([`broker`], [`session`]). The device daemon and the control-centre tools
//! both depend on it; it knows nothing about the device's database or config.

pub mod broker;
pub mod keys;
pub mod manifest;
pub mod package;
pub mod receipt;
pub mod remote;
pub mod session;
pub mod topics;
pub mod trust;

pub use keys::{DeviceKey, KeyError, parse_public_key};
pub use manifest::{Manifest, VerifyError, VerifyReport, sha256_file, sidecar_path, verify};
