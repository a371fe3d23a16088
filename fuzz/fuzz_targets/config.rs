#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| storeguard::fuzzing::config(data));
