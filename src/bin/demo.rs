//! sg-demo: the main job end to end on one machine. Fake cameras, a local mosquitto, the
//! control-centre receiver and the daemon with edge-config/demo.toml; then a simulated
//! panic-button press, ending when the alert and the verified clips have arrived upstream.
//! Run it through `./dev.sh demo` (which sets the machine up first).

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use storeguard::fixtures::broker::{BrokerOpts, MosquittoBroker};
use storeguard::fixtures::{FakeCamFleet, FleetOptions, FleetSource, fixture_bin};

const CONFIG: &str = "edge-config/demo.toml";
/// Fixed by edge-config/demo.toml.
const RTSP_PORT: u16 = 8554;
const MQTT_PORT: u16 = 18830;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(6);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn step(msg: &str) {
    println!("\n==> {msg}");
}

fn sg(args: &[&str]) -> Result<String> {
    let out = Command::new(fixture_bin("storeguard"))
        .arg("--config")
        .arg(CONFIG)
        .args(args)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "storeguard {} failed: {}{}",
            args.join(" "),
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn main() -> Result<()> {
    let root = std::env::current_dir()?;
    anyhow::ensure!(
        root.join(CONFIG).exists(),
        "run sg-demo from the repository root (./dev.sh demo)"
    );
    let work = root.join("local/demo");
    // A fresh ring each run, so what you see is this run's.
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    step("fake-camera fleet: 4 cameras on rtsp://127.0.0.1:8554/cam1..cam4");
    let people = root.join("../shared/media/vtest.avi");
    let source = if people.exists() {
        FleetSource::File(people.clone())
    } else {
        FleetSource::TestPattern
    };
    println!(
        "    source: {}",
        if people.exists() {
            "vtest.avi (people walking), looped"
        } else {
            "test pattern with a UTC clock"
        }
    );
    let _fleet = FakeCamFleet::spawn(
        &fixture_bin("fakecam"),
        &FleetOptions {
            port: RTSP_PORT,
            cameras: 4,
            width: 768,
            height: 576,
            fps: 10,
            gop: 10,
            bitrate_kbps: 1500,
            source,
            ..Default::default()
        },
    )
    .context("starting the fake cameras (is port 8554 free?)")?;

    step(&format!("local mosquitto on 127.0.0.1:{MQTT_PORT}"));
    let _broker = MosquittoBroker::start(BrokerOpts {
        port: Some(MQTT_PORT),
        ..Default::default()
    })
    .context("starting mosquitto (is port 18830 free?)")?;

    step("control-centre receiver (sg-receiver) subscribed to storeguard/v1/+/+/#");
    let mut receiver = Command::new(fixture_bin("sg-receiver"))
        .args([
            "--broker",
            &format!("mqtt://127.0.0.1:{MQTT_PORT}"),
            "--out",
        ])
        .arg(work.join("receiver"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(work.join("receiver.log"))?)
        .spawn()
        .context("starting sg-receiver")?;
    let (lines_tx, lines) = mpsc::channel::<String>();
    let out = receiver.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            println!("    [receiver] {l}");
            let _ = lines_tx.send(l);
        }
    });
    let _receiver = Killed(receiver);

    step(&format!(
        "storeguard daemon with {CONFIG} (log: local/demo/storeguard.log)"
    ));
    let daemon = Command::new(fixture_bin("storeguard"))
        .args(["run", "--config", CONFIG])
        .stderr(std::fs::File::create(work.join("storeguard.log"))?)
        .spawn()?;
    let _daemon = Killed(daemon);
    wait_for(
        "the daemon's control socket",
        Duration::from_secs(30),
        || sg(&["status"]).ok(),
    )?;
    wait_for("all 4 cameras recording", Duration::from_secs(60), || {
        let v: Value = serde_json::from_str(&sg(&["cameras", "--json"]).ok()?).ok()?;
        let cams = v["cameras"].as_array()?;
        (cams.len() == 4 && cams.iter().all(|c| c["state"] == "recording")).then_some(())
    })?;
    print!("{}", sg(&["status"])?);
    print!("{}", sg(&["cameras"])?);

    step("recording 12 s of pre-roll, then pressing the simulated panic button 'till' (test)");
    std::thread::sleep(Duration::from_secs(12));
    let pressed = Instant::now();
    println!("{}", sg(&["button", "press", "till", "--test"])?.trim());

    let alert = wait_for("the alert at the receiver", Duration::from_secs(30), || {
        lines.try_iter().find(|l| l.starts_with("ALERT"))
    })?;
    println!(
        "    alert arrived upstream {:.0} ms after the press: {alert}",
        pressed.elapsed().as_secs_f64() * 1000.0
    );

    step("waiting for the post-roll (10 s), the sealed clips and their upload");
    let mut clips: Vec<String> = Vec::new();
    wait_for(
        "both verified clips at the receiver",
        Duration::from_secs(120),
        || {
            clips.extend(
                lines
                    .try_iter()
                    .filter(|l| l.starts_with("CLIP") && l.contains("verified")),
            );
            (clips.len() >= 2).then_some(())
        },
    )?;
    print!("{}", sg(&["events"])?);

    step("checking a received clip offline, as a police officer would");
    let status: Value = serde_json::from_str(&sg(&["status", "--json"])?)?;
    let key = status["public_key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let received =
        find_mp4(&work.join("receiver")).context("no clip file in local/demo/receiver")?;
    let out = Command::new(fixture_bin("storeguard"))
        .args(["evidence", "verify"])
        .arg(&received)
        .args(["--pubkey", &key])
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    anyhow::ensure!(
        out.status.success(),
        "verification failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", sg(&["outbox"])?);

    step(&format!(
        "DEMO OK: alert and {} verified clips upstream; files under local/demo/",
        clips.len()
    ));
    Ok(())
}

fn find_mp4(dir: &Path) -> Option<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "mp4") {
                return Some(p);
            }
        }
    }
    None
}
