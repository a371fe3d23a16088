//! storeguard's integration tests, one binary so they link once (as ripgrep does). They
//! run the real binaries (`storeguard`, `fakecam`, `sg-receiver`: build them first with
//! `cargo build --workspace --bins`, as `./dev.sh test` does) against real RTSP servers,
//! a real mosquitto and real SQLite files, through `storeguard_fixtures::harness`.

mod campaign;
mod cli;
mod daemon;
mod detect;
mod detection;
mod disk;
mod evidence_mp4;
mod fakecam;
mod fuzz_corpus;
mod ingest;
mod isb;
mod package;
mod recording;
mod remote;
mod security;
mod soak;
mod systemd_notify;
mod time;
mod ts_writer;
mod uplink;
