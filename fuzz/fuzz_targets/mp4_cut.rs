#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| storeguard::fuzzing::mp4_cut(data));
