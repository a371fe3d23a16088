//! Replays every committed fuzz input (`fuzz/corpus/<target>/*`, `fuzz/regressions/<target>/*`)
//! through the same entry points the cargo-fuzz targets call, so the normal suite guards
//! every fix without nightly. A panic on any input fails the test, naming the file.
//!
//! Then each target runs briefly on mutations of its corpus (the CI part of fuzzing: a
//! cargo-fuzz build takes 20 minutes, longer than the suite's budget allows). Seeded and a
//! fixed number of runs, so a failure repeats: `SG_FUZZ_SEED` picks another seed,
//! `SG_FUZZ_RUNS` scales the runs. A failing input is written to
//! `target/fuzz-mutations/<target>/`, ready for `fuzz/regressions/`.

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

/// Runs per target: the slow ones start GStreamer or SQLite on every input.
fn runs(target: &str) -> usize {
    let base = match target {
        "segment_scan" | "mp4_cut" => 120,
        "config" | "inbound_mqtt" => 1200,
        _ => 6000,
    };
    let scale: f64 = std::env::var("SG_FUZZ_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((base as f64 * scale) as usize).max(1)
}

/// xorshift64*: small, seeded, the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four of libFuzzer's cheap mutations: flip a bit, set an interesting byte, insert,
/// delete, duplicate a range, truncate, or splice in part of another input.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, b'\n', b'"', b'='];
    let mut d = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(d.len() + 1);
        match rng.below(7) {
            0 if !d.is_empty() => {
                let i = at.min(d.len() - 1);
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = at.min(d.len() - 1);
                d[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(at..at, bytes);
            }
            3 if at < d.len() => {
                let end = (at + 1 + rng.below(64)).min(d.len());
                d.drain(at..end);
            }
            4 if at < d.len() => {
                let end = (at + 1 + rng.below(256)).min(d.len());
                let copy = d[at..end].to_vec();
                let to = rng.below(d.len() + 1);
                d.splice(to..to, copy);
            }
            5 => d.truncate(at),
            _ if !other.is_empty() => {
                let from = rng.below(other.len());
                let end = (from + 1 + rng.below(512)).min(other.len());
                d.splice(at..at, other[from..end].iter().copied());
            }
            _ => {}
        }
    }
    d
}

#[test]
fn every_fuzz_target_survives_a_brief_mutation_run() {
    let seed: u64 = std::env::var("SG_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f022);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-mutations");
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    for (target, entry) in storeguard::fuzzing::TARGETS {
        let corpus: Vec<Vec<u8>> = inputs(target)
            .iter()
            .map(|f| std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())))
            .collect();
        assert!(!corpus.is_empty(), "fuzz/corpus/{target} has no inputs");
        let name = target.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        let mut rng = Rng((seed ^ name) | 1);
        let n = runs(target);
        for run in 0..n {
            let input = &corpus[rng.below(corpus.len())];
            let other = &corpus[rng.below(corpus.len())];
            let data = mutate(&mut rng, input, other);
            if std::panic::catch_unwind(|| entry(&data)).is_err() {
                let dir = out.join(target);
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!("seed-{seed}-run-{run}"));
                let _ = std::fs::write(&file, &data);
                failed.push(format!(
                    "{target}: run {run} panicked; input in {}",
                    file.display()
                ));
            }
        }
        summary.push(format!("{target} {n}"));
    }
    assert!(
        failed.is_empty(),
        "mutation runs (seed {seed}) panicked:\n{}",
        failed.join("\n")
    );
    eprintln!("fuzz mutation runs, seed {seed}: {}", summary.join(", "));
}
