//! Evidence packages end to end: a press on two cameras (one of them down for a while) →
//! `storeguard evidence package` → clips that decode with ffmpeg and carry a UTC subtitle
//! track, a package that `evidence verify` accepts and that fails, naming the file, on any
//! changed byte; the offline viewer in headless Chromium; destinations that are full or
//! read-only fail cleanly and are audited. Real daemon, real fake cameras over RTSP.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;
use storeguard_base::now_ns;
use storeguard_fixtures::browser::{self, Browser};
use storeguard_fixtures::harness::*;

use crate::isb::{
    CLIP_WAIT, SEC, button, isb_config, parse_ns, pattern_fleet, press, rfc3339, wait_event,
    wait_recorded, wait_sealed,
};

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The audit rows for package exports, oldest first, detail parsed.
fn package_audits(db: &rusqlite::Connection) -> Vec<(String, Value)> {
    db.prepare("SELECT target, detail FROM audit WHERE action = 'package_export' ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(|r| {
            let (t, d) = r.unwrap();
            (t, serde_json::from_str(&d).unwrap())
        })
        .collect()
}

/// ffmpeg on `clip` with `args` after the input; any complaint fails. Returns stdout.
#[track_caller]
fn ffmpeg(clip: &Path, args: &[&str]) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(clip)
        .args(args)
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffmpeg {args:?} on {}: {}",
        clip.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// (start, end, text) of every cue of the clip's first subtitle track, via ffmpeg's SRT.
fn subtitle_cues(clip: &Path) -> Vec<(f64, f64, String)> {
    let t = |s: &str| {
        let (hms, ms) = s.trim().split_once(',').unwrap();
        let p: Vec<f64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
        p[0] * 3600.0 + p[1] * 60.0 + p[2] + ms.parse::<f64>().unwrap() / 1000.0
    };
    ffmpeg(clip, &["-map", "0:s:0", "-f", "srt", "-"])
        .replace('\r', "")
        .split("\n\n")
        .filter(|b| b.contains("-->"))
        .map(|b| {
            let mut lines = b.lines().skip_while(|l| !l.contains("-->"));
            let (a, z) = lines.next().unwrap().split_once("-->").unwrap();
            (t(a), t(z), lines.collect::<Vec<_>>().join("\n"))
        })
        .collect()
}

fn utc_second(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string()
}

/// The clip plays, and its text track shows the UTC second of the first frame at the
/// start and that of the last frame at the end.
#[track_caller]
fn check_clip_times(clip: &Path, manifest: &Value) {
    // Every frame decodes, with no two frames at one time. (ffprobe, not ffmpeg's null
    // muxer: that one rounds timestamps to its own frame-rate time base, and frames a
    // reconnecting camera delivers closer together than 1/fps then look like duplicates.)
    let probe = storeguard_fixtures::harness::ffprobe_clean(clip);
    assert!(probe.frames > 0, "{}: {probe:?}", clip.display());
    assert!(
        probe.pts.windows(2).all(|w| w[1] > w[0]),
        "{}: repeated timestamps {:?}",
        clip.display(),
        probe.pts
    );
    let cues = subtitle_cues(clip);
    assert!(cues.len() >= 2, "{}: cues {cues:?}", clip.display());
    let first = parse_ns(&manifest["actual"]["first_frame"]);
    let last = parse_ns(&manifest["actual"]["last_frame"]);
    assert!(cues[0].0 < 0.01, "text starts with the video: {cues:?}");
    assert!(
        cues[0].2.contains(&utc_second(first)),
        "first cue {:?}, first frame {}",
        cues[0],
        manifest["actual"]["first_frame"]
    );
    assert!(cues[0].2.contains("local (UTC"), "{:?}", cues[0]);
    // The cue on screen at the last frame.
    let at = (last - first) as f64 / 1e9;
    let cue = cues
        .iter()
        .find(|c| c.0 <= at + 0.001 && at < c.1)
        .unwrap_or_else(|| panic!("no cue at {at} s: {cues:?}"));
    assert!(
        cue.2.contains(&utc_second(last)),
        "cue at the last frame {cue:?}, last frame {}",
        manifest["actual"]["last_frame"]
    );
    // One a second: consecutive cues are whole seconds apart in wall-clock time.
    for w in cues.windows(2) {
        assert!((w[1].0 - w[0].1).abs() < 0.002, "contiguous: {w:?}");
    }
}

/// `n` test-pattern cameras recording into 4 s segments, with `buttons`.
fn recording_site(n: u32, buttons: &str) -> (storeguard_fixtures::FakeCamFleet, Site) {
    let cams = pattern_fleet(n);
    let urls: Vec<String> = (1..=n).map(|i| cams.url(i)).collect();
    let site = Site::new();
    let storage = "budget = \"1GiB\"\nsegment_length = \"4s\"";
    site.write_config(&isb_config(&urls, storage, buttons));
    (cams, site)
}

/// `evidence package --cameras CAMERAS --from --to --out OUT`.
fn package_range(site: &Site, cameras: &str, (from, to): (&str, &str), out: &Path) -> Out {
    let what = ["evidence", "package", "--cameras", cameras];
    site.cli(
        &[
            &what[..],
            &["--from", from, "--to", to, "--out", out.to_str().unwrap()],
        ]
        .concat(),
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn files_of(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn flip_byte(p: &Path) {
    let mut b = std::fs::read(p).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x01;
    std::fs::write(p, &b).unwrap();
}

#[test]
fn press_on_two_cameras_makes_a_verifiable_package_with_utc_subtitles() {
    let roll = "pre_roll = \"3s\"\npost_roll = \"9s\"";
    let (cams, site) = recording_site(2, &button("till", "normally-open", &["cam1", "cam2"], roll));
    let _d = site.start();
    let db = site.db();
    wait_recorded(&site, &db, "cam1", Duration::from_secs(4));
    wait_recorded(&site, &db, "cam2", Duration::from_secs(4));

    press(&site, "till", 200);
    let ev = wait_event(&db, "till", "isb_press");
    // cam2 goes down for ~3 s inside the window: the package must show that gap.
    std::thread::sleep(Duration::from_millis(500));
    cams.stop(2).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    cams.start(2).unwrap();
    let clips = wait_sealed(&db, &ev.uid, 2, CLIP_WAIT);

    let work = tempfile::tempdir().unwrap();
    let pkg = work.path().join("pkg");
    let out = site.cli(&[
        "evidence",
        "package",
        "--event",
        &ev.uid,
        "--out",
        pkg.to_str().unwrap(),
    ]);
    out.expect(0);
    assert!(out.stdout.contains("verified"), "{}", out.all());

    let m = read_json(&pkg.join("manifest.json"));
    eprintln!("{m:#}");
    assert_eq!(m["schema"], "storeguard.package/v1");
    assert_eq!(m["event"]["id"], Value::from(ev.uid.clone()));
    assert_eq!(m["cameras"].as_array().unwrap().len(), 2);
    let status = site.status();
    let pubkey = status["public_key"].as_str().unwrap().to_string();
    assert_eq!(m["signature"]["public_key"], Value::from(pubkey.clone()));
    // Every file but the manifest is listed with the hash sha256sum finds.
    let names: Vec<String> = files_of(&pkg)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for n in &names {
        if n == "manifest.json" {
            continue;
        }
        let f = m["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == n.as_str())
            .unwrap_or_else(|| panic!("{n} not listed: {m}"));
        assert_eq!(f["sha256"], Value::from(sha256sum(&pkg.join(n))), "{n}");
    }
    for want in ["index.html", "continuity.txt"] {
        assert!(names.iter().any(|n| n == want), "{names:?}");
    }
    // The sealed press clips, unchanged, with their manifests; each clip plays and
    // shows the right UTC second at its start and end.
    for clip in &clips {
        let name = format!("{}.mp4", clip.uid);
        let c = pkg.join(&name);
        assert_eq!(
            sha256sum(&c),
            clip.sha256.clone().unwrap(),
            "{name} is the sealed clip"
        );
        let cm = read_json(&storeguard::evidence::sidecar_path(&c));
        check_clip_times(&c, &cm);
        let cam = m["cameras"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == clip.camera.as_str())
            .unwrap();
        assert_eq!(cam["clip"], Value::from(name.clone()));
        assert_eq!(
            cam["name"],
            Value::from(format!("Camera {}", &clip.camera[3..]))
        );
    }
    let cam2 = m["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "cam2")
        .unwrap();
    assert!(
        !cam2["gaps"].as_array().unwrap().is_empty(),
        "cam2's outage is a gap: {cam2}"
    );
    let log = std::fs::read_to_string(pkg.join("continuity.txt")).unwrap();
    for clip in &clips {
        assert!(log.contains(clip.sha256.as_deref().unwrap()), "{log}");
    }
    assert!(log.contains(&ev.uid) && log.contains("uid "), "{log}");

    // Offline verification: passes; any changed byte in any file fails naming it.
    let verify = |p: &Path, key: Option<&str>| {
        let mut args = vec!["evidence", "verify", p.to_str().unwrap()];
        args.extend(key.map(|k| ["--pubkey", k]).into_iter().flatten());
        site.cli(&args)
    };
    let ok = verify(&pkg, Some(&pubkey));
    ok.expect(0);
    assert!(ok.stdout.contains("OK  package"), "{}", ok.stdout);
    for f in files_of(&pkg) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let copy = work.path().join("tampered");
        let _ = std::fs::remove_dir_all(&copy);
        copy_dir(&pkg, &copy);
        flip_byte(&copy.join(&name));
        let bad = verify(&copy, None);
        bad.expect(65);
        assert!(
            bad.all().contains(&format!("{name}:")),
            "names {name}: {}",
            bad.all()
        );
    }
    // The clip verifier still takes a single clip.
    verify(&pkg.join(format!("{}.mp4", clips[0].uid)), None).expect(0);

    // The same cameras over a range, as a zip: cut from the ring, verifiable, unzip-clean.
    let zip = work.path().join("range.zip");
    let window = (rfc3339(ev.at_ns - 2 * SEC), rfc3339(ev.at_ns + 2 * SEC));
    package_range(&site, "cam1,cam2", (&window.0, &window.1), &zip).expect(0);
    verify(&zip, Some(&pubkey)).expect(0);
    let unzip = Command::new("unzip").arg("-tq").arg(&zip).output();
    if let Ok(u) = unzip {
        assert!(u.status.success(), "{}", String::from_utf8_lossy(&u.stdout));
    }
    let mut zbytes = std::fs::read(&zip).unwrap();
    let at = zbytes.len() / 3;
    zbytes[at] ^= 0x01;
    let zbad = work.path().join("bad.zip");
    std::fs::write(&zbad, &zbytes).unwrap();
    let bad = verify(&zbad, None);
    bad.expect(65);
    assert!(bad.all().contains(".mp4:"), "{}", bad.all());

    // Both exports are audited with the caller, destination and hashes.
    let audits = package_audits(&db);
    assert_eq!(audits.len(), 2, "{audits:?}");
    assert_eq!(audits[0].0, ev.uid);
    assert_eq!(audits[0].1["outcome"], "exported");
    assert_eq!(
        audits[0].1["destination"],
        Value::from(pkg.display().to_string())
    );
    assert_eq!(audits[0].1["files"], m["files"]);
    assert_eq!(audits[1].0, "cam1,cam2");

    viewer_in_chromium(&pkg, work.path());
}

/// The viewer from file://: both videos play on one timeline, cam2's gap is drawn, the
/// in-browser SHA-256 check matches every file, and a tampered copy shows a mismatch.
fn viewer_in_chromium(pkg: &Path, work: &Path) {
    let Some(exe) = browser::chromium() else {
        skip(
            "package viewer in headless Chromium",
            "no chromium on PATH (Debian package chromium; scripts/setup.sh installs it)",
        );
        return;
    };
    let mut b = Browser::launch(&exe).expect("chromium starts");
    let url = format!("file://{}", pkg.join("index.html").display());
    let mut page = b.open(&url);
    let show = "JSON.stringify(window.viewerState || null)";
    let limit = Duration::from_secs(30);
    page.wait_for(
        "viewer ready",
        "!!(window.viewerState && viewerState.ready)",
        show,
        limit,
    );
    assert_eq!(page.eval("viewerState.gaps.cam2 >= 1"), Value::Bool(true));
    assert_eq!(
        page.eval("document.querySelectorAll('.gap[data-camera=cam2]').length >= 1"),
        Value::Bool(true)
    );
    assert_eq!(
        page.eval("window.isSecureContext && !!crypto.subtle"),
        Value::Bool(true)
    );
    page.eval("document.getElementById('event').click()");
    page.eval("viewer.play(true)");
    page.wait_for(
        "both videos playing",
        "Object.values(viewerState.videos).every(v => v.played > 0.5 && !v.error && v.width > 0)",
        show,
        limit,
    );
    page.eval("viewer.play(false)");
    let files = files_of(pkg);
    let st = pick_and_hash(&mut page, &files);
    eprintln!("viewer: {st}");
    for (name, v) in st["hashes"].as_object().unwrap() {
        assert_eq!(v, "match", "{name}: {st}");
    }
    assert!(
        st["signature"].as_str().unwrap().starts_with("valid"),
        "{st}"
    );
    page.eval("viewer.seek(Date.parse(JSON.parse(document.getElementById('package-data').textContent).event.at))");
    let png = B64.decode(page.screenshot_b64()).unwrap();
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package-viewer.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot: {}", shot.display());

    // A tampered copy: the changed clip is a mismatch, the rest still match.
    let copy = work.join("viewer-tampered");
    copy_dir(pkg, &copy);
    let victim = files_of(&copy)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "mp4"))
        .unwrap();
    flip_byte(&victim);
    let url = format!("file://{}", copy.join("index.html").display());
    let mut page = b.open(&url);
    page.wait_for(
        "viewer ready",
        "!!(window.viewerState && viewerState.ready)",
        show,
        limit,
    );
    let st = pick_and_hash(&mut page, &files_of(&copy));
    let vname = victim.file_name().unwrap().to_string_lossy().into_owned();
    for (name, v) in st["hashes"].as_object().unwrap() {
        let want = if *name == vname { "mismatch" } else { "match" };
        assert_eq!(v, want, "{name}: {st}");
    }
}

/// Picks `files` in the viewer's file input and returns the viewer state once hashed.
fn pick_and_hash(page: &mut browser::Page<'_>, files: &[PathBuf]) -> Value {
    // DevTools sets files, not a folder: the folder picker takes them as plain files.
    page.eval("document.getElementById('pick').removeAttribute('webkitdirectory')");
    page.set_files("#pick", files);
    let (show, limit) = ("JSON.stringify(viewerState)", Duration::from_secs(60));
    page.wait_for("hashes checked", "viewerState.hashed", show, limit);
    page.eval("viewerState")
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, opts: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn package_to_a_full_or_read_only_destination_fails_and_is_audited() {
    let (_cams, site) = recording_site(1, "");
    let _d = site.start();
    let db = site.db();
    wait_recorded(&site, &db, "cam1", Duration::from_secs(8));
    let to = now_ns() - SEC;
    let (from, to) = (rfc3339(to - 6 * SEC), rfc3339(to));
    let work = tempfile::tempdir().unwrap();
    let package = |out: &Path| package_range(&site, "cam1", (&from, &to), out);
    let good = work.path().join("good");
    package(&good).expect(0);
    let size: u64 = files_of(&good)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();

    // Refused before anything is written: an existing, non-empty destination.
    let bad = package(&good);
    bad.expect(65);
    assert!(bad.all().contains("not empty"), "{}", bad.all());

    let Some(full) = Mount::tmpfs(
        &work.path().join("full"),
        &format!("size={}", (size / 2).max(4096)),
    ) else {
        skip(
            "full and read-only destinations",
            "cannot mount a tmpfs (needs root)",
        );
        return;
    };
    let ro = Mount::tmpfs(&work.path().join("ro"), "ro,size=1m").expect("read-only tmpfs");
    for (dest, what) in [
        (full.0.join("pkg"), "No space left"),
        (full.0.join("pkg.zip"), "No space left"),
        (ro.0.join("pkg"), "Read-only file system"),
    ] {
        let bad = package(&dest);
        bad.expect(73);
        assert!(bad.all().contains(what), "{what}: {}", bad.all());
        assert!(
            bad.all().contains(dest.to_str().unwrap()),
            "names the destination: {}",
            bad.all()
        );
        // Nothing half-written is left behind.
        assert_eq!(
            std::fs::read_dir(dest.parent().unwrap()).unwrap().count(),
            0
        );
    }
    let audits = package_audits(&db);
    let outcomes: Vec<&str> = audits
        .iter()
        .map(|a| a.1["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["exported", "refused", "failed", "failed", "failed"],
        "{audits:?}"
    );
    for (_, d) in &audits[2..] {
        assert!(
            d["error"].as_str().unwrap().contains("writing the package"),
            "{d}"
        );
    }
}
