//! The person detector with the real model and ONNX Runtime on real media: `storeguard
//! detect` and `doctor`. The model comes from models/ and the library from
//! local/onnxruntime/ (both put there by scripts/setup.sh).

use serde_json::Value;
use std::path::PathBuf;
use storeguard_fixtures::harness::{Site, repo_root};
use storeguard_fixtures::media;

pub(crate) fn model() -> PathBuf {
    repo_root().join("models/nanodet-m-416-fp16w.onnx")
}

pub(crate) fn onnxruntime() -> PathBuf {
    repo_root().join("local/onnxruntime/libonnxruntime.so.1.31.1")
}

/// `[detect]` pointing at the repository's model and library.
fn detect_toml() -> String {
    format!(
        "\n[detect]\nmodel = \"{}\"\nonnxruntime = \"{}\"\n",
        model().display(),
        onnxruntime().display()
    )
}

/// A site whose config points `[detect]` at the repository's model and library.
fn site() -> Site {
    let site = Site::new();
    site.write_config(&format!(
        "{}{}",
        storeguard_fixtures::harness::config(0),
        detect_toml()
    ));
    site
}

fn detect(site: &Site, images: &[PathBuf]) -> Value {
    let mut args = vec!["detect".to_string(), "--json".into()];
    args.extend(images.iter().map(|p| p.display().to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = site.cli(&a);
    out.expect(0);
    serde_json::from_str(&out.stdout).unwrap()
}

fn people(v: &Value, i: usize) -> Vec<f64> {
    v["images"][i]["detections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["class"] == "person")
        .map(|d| d["score"].as_f64().unwrap())
        .collect()
}

/// Frame `n` of vtest.avi as a PNG (ffmpeg).
fn vtest_frame(dir: &std::path::Path, n: u32) -> PathBuf {
    let out = dir.join(format!("vtest-{n}.png"));
    let st = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(media::vtest())
        .args(["-vf", &format!("select=eq(n\\,{n})"), "-frames:v", "1"])
        .arg(&out)
        .status()
        .expect("run ffmpeg");
    assert!(st.success());
    out
}

#[test]
fn detect_finds_the_people_in_the_test_media() {
    let site = site();
    let tmp = tempfile::tempdir().unwrap();
    let images = vec![
        vtest_frame(tmp.path(), 0),
        vtest_frame(tmp.path(), 397),
        media::path("astronaut.png"),
        media::path("messi5.jpg"),
    ];
    let v = detect(&site, &images);
    // The model's reference results (models/README.md): all 3 walkers in both frames at
    // 0.72–0.80; one person in each photo, ≈ 0.73 and ≈ 0.83. (Our resize differs a
    // little from the reference's, so messi5's two half-visible bystanders at the left
    // edge may appear, well below the subject.)
    for i in [0, 1] {
        let p = people(&v, i);
        assert_eq!(p.len(), 3, "{}: {p:?}\n{v}", images[i].display());
        assert!(p.iter().all(|s| (0.65..0.9).contains(s)), "{p:?}");
    }
    for (i, reference) in [(2, 0.73), (3, 0.83)] {
        let p = people(&v, i);
        let confident: Vec<_> = p.iter().filter(|s| **s >= 0.5).collect();
        assert_eq!(confident.len(), 1, "{}: {p:?}", images[i].display());
        assert!(
            (confident[0] - reference).abs() < 0.05,
            "{p:?} vs {reference}"
        );
    }
    let text = site.cli(&["detect", images[3].to_str().unwrap()]);
    text.expect(0);
    assert!(
        text.stdout.contains("messi5.jpg (548x342):"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("person  0.8"), "{}", text.stdout);
}

#[test]
fn detect_says_what_is_wrong() {
    let site = site();
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.jpg");
    std::fs::write(&junk, b"not an image").unwrap();
    let out = site.cli(&["detect", junk.to_str().unwrap()]);
    assert_eq!(out.code(), Some(65), "{}", out.all());
    assert!(
        out.stderr.contains("junk.jpg") && out.stderr.contains("not a readable"),
        "{}",
        out.all()
    );
    let out = site.cli(&[
        "detect",
        "--model",
        "/nonexistent/m.onnx",
        junk.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), Some(78), "{}", out.all());
    assert!(out.stderr.contains("/nonexistent/m.onnx"), "{}", out.all());
    // A file that is not the model's contract: the media image renamed.
    let fake = tmp.path().join("fake.onnx");
    std::fs::copy(media::path("messi5.jpg"), &fake).unwrap();
    let out = site.cli(&[
        "detect",
        "--model",
        fake.to_str().unwrap(),
        junk.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), Some(78), "{}", out.all());
    assert!(out.stderr.contains("fake.onnx"), "{}", out.all());
}

#[test]
fn doctor_checks_the_onnx_runtime_library_and_the_model() {
    let site = site();
    let _d = site.start();
    let out = site.cli(&["doctor"]);
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("detector"))
        .unwrap_or_else(|| panic!("no detector check:\n{}", out.all()))
        .to_string();
    assert!(line.starts_with("OK"), "{line}");
    assert!(
        line.contains(storeguard::config::detect::MODEL_SHA256),
        "{line}"
    );
    assert!(line.contains("inputs image "), "{line}");
    assert!(line.contains("cls_8") && line.contains("reg_32"), "{line}");
}
