//! Replays every committed fuzz input (`fuzz/corpus/<target>/*`, `fuzz/regressions/<target>/*`)
//! through the same entry points the cargo-fuzz targets call, so the normal suite guards
//! every fix without nightly. A panic on any input fails the test, naming the file.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut out = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        out.extend(dir.flatten().map(|e| e.path()).filter(|p| p.is_file()));
    }
    out.sort();
    out
}

#[test]
fn every_committed_fuzz_input_is_handled_without_a_panic() {
    let mut failed = Vec::new();
    let mut total = 0;
    for (target, entry) in storeguard::fuzzing::TARGETS {
        let files = inputs(target);
        assert!(!files.is_empty(), "fuzz/corpus/{target} has no inputs");
        for f in files {
            let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            total += 1;
            if std::panic::catch_unwind(|| entry(&data)).is_err() {
                failed.push(f.display().to_string());
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {total} fuzz inputs panicked:\n{}",
        failed.len(),
        failed.join("\n")
    );
    eprintln!("fuzz corpus replay: {total} inputs");
}
