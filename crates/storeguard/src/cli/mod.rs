//! Command-line surface. Subcommands other than `run`, `config validate` and
//! `config show` go through the daemon's control socket; they never open the database.

mod output;

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde_json::Value;
use std::path::{Path, PathBuf};
use storeguard::config::{self, Config};
use storeguard::control::client::{Client, percent_encode};
use storeguard::exit;

#[derive(Parser, Debug)]
#[command(
    name = "storeguard",
    version,
    about = "In-store recorder, panic button and evidence agent"
)]
pub struct Args {
    /// Config file.
    #[arg(long, global = true, env = "STOREGUARD_CONFIG", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Control socket (default: control.socket from the config, else /run/storeguard/control.sock).
    #[arg(long, global = true, env = "STOREGUARD_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the daemon in the foreground (systemd: Type=notify).
    Run,
    /// Daemon uptime, version, config version and camera states.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Per-camera state, stream format, bitrate, retention and recent gaps.
    Cameras {
        #[arg(long)]
        json: bool,
    },
    /// Check, show or reload configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Panic buttons: watch presses and faults live, or test one.
    #[command(subcommand)]
    Button(ButtonCmd),
    /// Button events (presses and faults) with their evidence clips.
    Events {
        /// Only events at or after this time (RFC 3339 or local "YYYY-MM-DD HH:MM:SS").
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Export footage still in the ring as a signed evidence clip (MP4 + manifest).
    Clip {
        #[arg(long)]
        camera: String,
        /// Start (RFC 3339, or local "YYYY-MM-DD HH:MM:SS").
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// Directory to write the clip and its manifest to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Outbox depth per priority class, oldest message, uplink connection and last error.
    Outbox {
        #[arg(long)]
        json: bool,
    },
    /// Check the box end to end: config, GStreamer, clock, daemon, database, disk,
    /// cameras, buttons, outbox. Exit 1 when any check fails.
    Doctor,
    /// Evidence: verify clips and packages offline, fetch a sealed clip, package an incident.
    #[command(subcommand)]
    Evidence(EvidenceCmd),
    /// A JPEG of a camera now: its latest recorded keyframe, from the daemon.
    Snapshot {
        #[arg(long)]
        camera: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Test hooks, refused unless the config enables them.
    #[command(subcommand, hide = true)]
    Debug(DebugCmd),
    /// Run the configured person detector on image files (no daemon needed) and print
    /// the boxes with their scores.
    Detect {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Override detect.model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Override detect.onnxruntime.
        #[arg(long)]
        onnxruntime: Option<PathBuf>,
        /// Override detect.min_score.
        #[arg(long)]
        min_score: Option<f32>,
        /// Time N inferences of the first image: ONNX Runtime alone, then storeguard's
        /// whole path (preprocess, run, decode, NMS), per image.
        #[arg(long, value_name = "N")]
        bench: Option<u32>,
        /// Images per inference batch for --bench.
        #[arg(long, default_value_t = 1, requires = "bench")]
        batch: usize,
    },
}

#[derive(Subcommand, Debug)]
enum ButtonCmd {
    /// Print presses and faults as they happen (Ctrl-C to stop).
    Watch {
        #[arg(long)]
        json: bool,
    },
    /// Inject a press through the daemon; it takes the same path as a real press.
    Press {
        name: String,
        /// Mark the event as a test (required: a real alarm goes upstream otherwise).
        #[arg(long, required = true)]
        test: bool,
        #[arg(long, default_value_t = 200)]
        hold_ms: u64,
    },
}

#[derive(Subcommand, Debug)]
enum EvidenceCmd {
    /// Check a clip's SHA-256 and its manifest's Ed25519 signature, or a whole package
    /// (folder or .zip: every file's hash, every signature); exit 65 naming the file on
    /// mismatch.
    Verify {
        /// A clip (.mp4), or an evidence package (its folder or .zip).
        clip: PathBuf,
        /// Manifest (default: CLIP.manifest.json next to the clip).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Expected device public key (base64), e.g. from the control centre's records.
        #[arg(long)]
        pubkey: Option<String>,
        /// Expected control-centre public key (base64) for the clip's receipt
        /// (CLIP.receipt.json, if present); default: the key the receipt names.
        #[arg(long)]
        centre_key: Option<String>,
    },
    /// Package every camera of an event (or of a time range) for the police: per camera the
    /// MP4 with a UTC subtitle track, its signed manifest and receipt; a signed package
    /// manifest; a continuity log; an offline viewer (index.html). The daemon writes it to
    /// a new folder or .zip, fsyncs it and verifies the copy; every attempt is audited.
    Package {
        /// Every camera with a clip of this event, over the event's window.
        #[arg(long, conflicts_with_all = ["cameras", "from", "to"], required_unless_present = "cameras")]
        event: Option<String>,
        /// Cameras (comma-separated) over --from..--to instead of an event.
        #[arg(long, value_delimiter = ',', requires_all = ["from", "to"])]
        cameras: Vec<String>,
        /// Start (RFC 3339, or local "YYYY-MM-DD HH:MM:SS").
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// New folder, or a file ending in .zip, e.g. on a USB stick. Must not exist (an
        /// empty folder is fine) and must be writable by the daemon.
        #[arg(long)]
        out: PathBuf,
        /// Print the signed package manifest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy a sealed clip from the daemon with its manifest and, once the control centre
    /// confirmed it, its signed receipt; then verify the copy.
    Get {
        /// The clip id (from `storeguard events`).
        clip: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum DebugCmd {
    /// Hang or crash the running detector (needs detect.fault_injection).
    DetectorFault {
        #[arg(value_parser = ["hang", "panic"])]
        fault: String,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Validate config files without starting anything; exit 78 when any is invalid.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print the effective config (defaults filled in, secrets masked).
    Show,
    /// Ask the running daemon to re-read its config file (same as SIGHUP).
    Reload,
    /// What remote configuration did: applied, pending, last rejected and rolled back
    /// versions, with reasons.
    Status {
        #[arg(long)]
        json: bool,
    },
}

impl Args {
    pub fn is_daemon(&self) -> bool {
        matches!(self.cmd, Cmd::Run)
    }

    fn client(&self) -> Client {
        let socket = self.socket.clone().unwrap_or_else(|| {
            // The config may be unreadable to a technician; the default path still works.
            // It may also be invalid (that is when `config reload` is run to find out), so
            // only control.socket is read, not the whole file validated.
            let base = self.config.parent().unwrap_or(Path::new("."));
            std::fs::read_to_string(&self.config)
                .ok()
                .and_then(|t| t.parse::<toml::Table>().ok())
                .and_then(|t| Some(PathBuf::from(t.get("control")?.get("socket")?.as_str()?)))
                .map(|p| base.join(p))
                .unwrap_or_else(|| PathBuf::from(config::DEFAULT_SOCKET))
        });
        Client::new(&socket)
    }
}

pub fn dispatch(args: Args) -> Result<u8> {
    match &args.cmd {
        Cmd::Run => storeguard::daemon::run(&args.config).map(|_| exit::OK),
        Cmd::Status { json } => {
            let v = args.client().call("GET", "/v1/status", None)?;
            print(*json, &v, output::status);
            Ok(exit::OK)
        }
        Cmd::Cameras { json } => {
            let v = args.client().call("GET", "/v1/cameras", None)?;
            print(*json, &v, output::cameras);
            Ok(exit::OK)
        }
        Cmd::Config(ConfigCmd::Validate { paths }) => Ok(validate(paths)),
        Cmd::Button(ButtonCmd::Watch { json }) => {
            let json = *json;
            args.client().stream("/v1/buttons/watch", |v| {
                if json {
                    println!("{v}");
                } else {
                    println!("{}", output::watch_line(&v));
                }
                true
            })?;
            Ok(exit::OK)
        }
        Cmd::Button(ButtonCmd::Press {
            name,
            test,
            hold_ms,
        }) => {
            let path = format!(
                "/v1/buttons/{}/press?test={test}&hold_ms={hold_ms}",
                percent_encode(name)
            );
            let v = args.client().call("POST", &path, None)?;
            println!(
                "test press on {name} recorded as event {}; see `storeguard events` for its clips",
                v["event_id"].as_str().unwrap_or("-")
            );
            Ok(exit::OK)
        }
        Cmd::Events { since, limit, json } => {
            let mut path = format!("/v1/events?limit={limit}");
            if let Some(s) = since {
                path.push_str(&format!("&since={}", percent_encode(s)));
            }
            let v = args.client().call("GET", &path, None)?;
            print(*json, &v, output::events);
            Ok(exit::OK)
        }
        Cmd::Clip {
            camera,
            from,
            to,
            out,
        } => export(&args, camera, from, to, out),
        Cmd::Doctor => Ok(doctor(&args)),
        Cmd::Outbox { json } => {
            let v = args.client().call("GET", "/v1/outbox", None)?;
            print(*json, &v, output::outbox);
            Ok(exit::OK)
        }
        Cmd::Evidence(EvidenceCmd::Verify {
            clip,
            manifest,
            pubkey,
            centre_key,
        }) => {
            print!(
                "{}",
                verify_evidence(
                    clip,
                    manifest.as_deref(),
                    pubkey.as_deref(),
                    centre_key.as_deref()
                )?
            );
            Ok(exit::OK)
        }
        Cmd::Evidence(EvidenceCmd::Get { clip, out }) => evidence_get(&args, clip, out),
        Cmd::Debug(DebugCmd::DetectorFault { fault }) => {
            let v = args.client().call(
                "POST",
                "/v1/debug/detector-fault",
                Some(&serde_json::json!({ "fault": fault })),
            )?;
            println!("{v}");
            Ok(exit::OK)
        }
        Cmd::Snapshot { camera, out } => {
            let n = args
                .client()
                .download(&format!("/v1/cameras/{camera}/snapshot"), out)?;
            println!("{}: camera {camera}, {n} bytes (JPEG)", out.display());
            Ok(exit::OK)
        }
        Cmd::Evidence(EvidenceCmd::Package {
            event,
            cameras,
            from,
            to,
            out,
            json,
        }) => package(&args, event.as_deref(), cameras, (from, to), out, *json),
        Cmd::Detect {
            images,
            json,
            model,
            onnxruntime,
            min_score,
            bench,
            batch,
        } => match bench {
            Some(n) => detect_bench(&args, &images[0], *n, *batch, model, onnxruntime),
            None => detect(&args, images, *json, model, onnxruntime, *min_score),
        },
        Cmd::Config(ConfigCmd::Show) => {
            let loaded = Config::load(&args.config)?;
            println!("# {} (version {})", loaded.path.display(), loaded.version);
            print!("{}", loaded.config.to_toml_masked());
            Ok(exit::OK)
        }
        Cmd::Config(ConfigCmd::Status { json }) => {
            let v = args.client().call("GET", "/v1/config/status", None)?;
            print(*json, &v, output::config_status);
            Ok(exit::OK)
        }
        Cmd::Config(ConfigCmd::Reload) => {
            // The daemon answers 422 when it refuses the file: that is a config error (78).
            let v = args
                .client()
                .call("POST", "/v1/config/reload", None)
                .map_err(|e| match exit::code_of(&e) {
                    exit::DATAERR => exit::coded(exit::CONFIG, e.to_string()),
                    _ => e,
                })?;
            let changed = v["changed"].as_bool().unwrap_or(false);
            println!(
                "config {} (version {}, was {})",
                if changed { "reloaded" } else { "unchanged" },
                v["version"].as_str().unwrap_or("?"),
                v["previous"].as_str().unwrap_or("?")
            );
            Ok(exit::OK)
        }
    }
}

/// The manifest check, then the receipt beside the clip if there is one; or, for a
/// package, the whole package. Any failure is exit 65 with what did not match.
fn verify_evidence(
    clip: &Path,
    manifest: Option<&Path>,
    pubkey: Option<&str>,
    centre_key: Option<&str>,
) -> Result<String> {
    if manifest.is_none() && storeguard::evidence::package::is_package(clip) {
        let r = storeguard::evidence::package::verify(clip, pubkey, centre_key).map_err(|e| {
            exit::coded(
                exit::DATAERR,
                format!("verification FAILED for package {}: {e}", clip.display()),
            )
        })?;
        let mut text = format!(
            "OK  package {} ({}): {} files, every hash and signature checked\n",
            clip.display(),
            r.manifest.package_id,
            r.manifest.files.len() + 1
        );
        for l in &r.lines {
            text.push_str(&format!("    {l}\n"));
        }
        // An uploaded package's receipt lies beside its zip (the box's upload spool).
        let receipt = storeguard_proto::receipt::receipt_path(clip);
        if clip.is_file() && receipt.is_file() {
            let bad = |e: String| {
                exit::coded(
                    exit::DATAERR,
                    format!("verification FAILED for {}: {e}", receipt.display()),
                )
            };
            let bytes = std::fs::read(&receipt).map_err(|e| bad(e.to_string()))?;
            let (size, sha) =
                storeguard::evidence::sha256_file(clip).map_err(|e| bad(e.to_string()))?;
            let m = &r.manifest;
            let sealed = storeguard_proto::receipt::Sealed {
                site: &m.site_id,
                device: &m.device_id,
                clip: &m.package_id,
                bytes: size,
                sha256: &sha,
                manifest_signature: m.signature.as_ref().map_or("", |s| s.value.as_str()),
            };
            let rep = storeguard_proto::receipt::check_kept_sealed(&bytes, &sealed, centre_key)
                .map_err(|e| bad(e.to_string()))?;
            text.push_str(&output::receipt(&receipt, &rep));
        }
        return Ok(text);
    }
    let failed = |e: &dyn std::error::Error| {
        exit::coded(
            exit::DATAERR,
            format!(
                "verification FAILED for {}: {}",
                clip.display(),
                storeguard_base::error::chain(e)
            ),
        )
    };
    let r = storeguard::evidence::verify(clip, manifest, pubkey).map_err(|e| failed(&e))?;
    let mut text = output::verified(clip, &r);
    let receipt = storeguard_proto::receipt::receipt_path(clip);
    match std::fs::read(&receipt) {
        Ok(bytes) => {
            let rep = storeguard_proto::receipt::check_kept(&bytes, &r.manifest, centre_key)
                .map_err(|e| failed(&e))?;
            text.push_str(&output::receipt(&receipt, &rep));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            text.push_str("    receipt    none beside the clip (the box keeps one once the control centre confirms the clip; `storeguard evidence get` copies it)\n");
        }
        Err(e) => {
            return Err(exit::coded(
                exit::DATAERR,
                format!("read {}: {e}", receipt.display()),
            ));
        }
    }
    Ok(text)
}

/// `[detect]` from the config if it loads, else the defaults (a technician may run this on
/// a box whose config is broken), with the command line's overrides.
fn detect_settings(
    args: &Args,
    model: &Option<PathBuf>,
    onnxruntime: &Option<PathBuf>,
    min_score: Option<f32>,
) -> storeguard::config::detect::Detect {
    let mut d = Config::load(&args.config)
        .map(|l| l.config.detect)
        .unwrap_or_default();
    if let Some(m) = model {
        d.model = m.clone();
    }
    if let Some(l) = onnxruntime {
        d.onnxruntime = Some(l.clone());
    }
    if let Some(s) = min_score {
        d.min_score = s;
    }
    d
}

fn detect(
    args: &Args,
    images: &[PathBuf],
    json: bool,
    model: &Option<PathBuf>,
    onnxruntime: &Option<PathBuf>,
    min_score: Option<f32>,
) -> Result<u8> {
    use storeguard::detect::detector::{Detector, OrtDetector};
    let cfg = detect_settings(args, model, onnxruntime, min_score);
    let mut det = OrtDetector::open(&cfg)
        .map_err(|e| exit::coded(exit::CONFIG, storeguard_base::error::chain(&e)))?;
    let mut out = Vec::new();
    for path in images {
        let img = storeguard::detect::image_file::load(path)
            .map_err(|e| exit::coded(exit::DATAERR, e.to_string()))?;
        let t = std::time::Instant::now();
        let dets = det
            .detect(&[img.item()])
            .map_err(|e| exit::coded(exit::SOFTWARE, format!("{}: {e}", path.display())))?
            .remove(0);
        out.push(output::Detected {
            path: path.clone(),
            width: img.width,
            height: img.height,
            ms: t.elapsed().as_secs_f64() * 1e3,
            detections: dets,
        });
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&output::detected_json(&out))?
        );
    } else {
        print!("{}", output::detected(&out));
    }
    Ok(exit::OK)
}

/// `detect --bench`: ms per image, ONNX Runtime alone against storeguard's path, on the
/// same session, threads and batch; one JSON line.
fn detect_bench(
    args: &Args,
    image: &Path,
    n: u32,
    batch: usize,
    model: &Option<PathBuf>,
    onnxruntime: &Option<PathBuf>,
) -> Result<u8> {
    use storeguard::detect::detector::{Detector, OrtDetector};
    let cfg = detect_settings(args, model, onnxruntime, None);
    let mut det = OrtDetector::open(&cfg)
        .map_err(|e| exit::coded(exit::CONFIG, storeguard_base::error::chain(&e)))?;
    let img = storeguard::detect::image_file::load(image)
        .map_err(|e| exit::coded(exit::DATAERR, e.to_string()))?;
    let batch = batch.clamp(1, 32);
    let items = vec![img.item(); batch];
    let fail =
        |e: storeguard::detect::detector::DetectError| exit::coded(exit::SOFTWARE, e.to_string());
    for _ in 0..3 {
        det.detect(&items).map_err(fail)?;
    }
    let per_image =
        |t: std::time::Instant| t.elapsed().as_secs_f64() * 1e3 / (n.max(1) as f64 * batch as f64);
    // Interleaved rounds, so a change of machine load hits both alike.
    let (mut raw, mut path) = (0.0, 0.0);
    for _ in 0..n.max(1) {
        let t = std::time::Instant::now();
        det.run_raw(batch).map_err(fail)?;
        raw += per_image(t);
        let t = std::time::Instant::now();
        det.detect(&items).map_err(fail)?;
        path += per_image(t);
    }
    println!(
        "{}",
        serde_json::json!({
            "image": image.display().to_string(),
            "iterations": n.max(1),
            "batch": batch,
            "threads": cfg.threads,
            "raw_ms_per_image": (raw * 100.0).round() / 100.0,
            "storeguard_ms_per_image": (path * 100.0).round() / 100.0,
            "ratio": (path / raw * 1000.0).round() / 1000.0,
        })
    );
    Ok(exit::OK)
}

fn evidence_get(args: &Args, uid: &str, out: &Path) -> Result<u8> {
    std::fs::create_dir_all(out)
        .map_err(|e| exit::coded(exit::CANTCREAT, format!("{}: {e}", out.display())))?;
    let client = args.client();
    let clip_path = out.join(format!("{uid}.mp4"));
    client.download(&format!("/v1/evidence/{uid}/clip"), &clip_path)?;
    client.download(
        &format!("/v1/evidence/{uid}/manifest"),
        &storeguard::evidence::sidecar_path(&clip_path),
    )?;
    let receipt = storeguard_proto::receipt::receipt_path(&clip_path);
    match client.download(&format!("/v1/evidence/{uid}/receipt"), &receipt) {
        Ok(_) => {}
        Err(e) if exit::code_of(&e) == exit::DATAERR => {}
        Err(e) => return Err(e),
    }
    print!("{}", verify_evidence(&clip_path, None, None, None)?);
    Ok(exit::OK)
}

/// Asks the daemon for a package and shows its progress; the daemon writes and verifies it.
fn package(
    args: &Args,
    event: Option<&str>,
    cameras: &[String],
    (from, to): (&Option<String>, &Option<String>),
    out: &Path,
    json: bool,
) -> Result<u8> {
    use std::io::{IsTerminal, Write};
    // The daemon resolves paths from its own working directory: send an absolute one.
    let out_abs = if out.is_absolute() {
        out.to_path_buf()
    } else {
        std::env::current_dir()?.join(out)
    };
    let body = serde_json::json!({
        "event": event, "cameras": cameras, "from": from, "to": to, "out": out_abs,
    });
    let tty = std::io::stderr().is_terminal();
    let mut last_step = String::new();
    let mut result = None;
    args.client()
        .stream_request("POST", "/v1/packages", Some(&body), |v| {
            if let Some(p) = v.get("progress") {
                let step = p["step"].as_str().unwrap_or("");
                let (done, total) = (
                    p["done"].as_u64().unwrap_or(0),
                    p["total"].as_u64().unwrap_or(0),
                );
                if tty {
                    let frac = if total > 0 {
                        done as f64 / total as f64
                    } else {
                        0.0
                    };
                    let bar = (frac * 30.0) as usize;
                    eprint!(
                        "\r\x1b[K[{}{}] {:>3.0}% {:>6.1}/{:.1} MB  {step}",
                        "#".repeat(bar),
                        ".".repeat(30 - bar),
                        frac * 100.0,
                        done as f64 / 1e6,
                        total as f64 / 1e6
                    );
                    let _ = std::io::stderr().flush();
                } else if step != last_step && !step.starts_with("copying") {
                    eprintln!("{step}");
                }
                last_step = step.to_string();
                return true;
            }
            result = Some(v);
            false
        })?;
    if tty {
        eprintln!();
    }
    let v = result.ok_or_else(|| {
        exit::coded(
            exit::FAILURE,
            "the daemon ended the package stream without a result",
        )
    })?;
    if let Some(f) = v.get("failed") {
        let msg = f["error"].as_str().unwrap_or("package failed").to_string();
        let code = match f["kind"].as_str() {
            Some("destination") => exit::CANTCREAT,
            Some("invalid" | "not_found" | "refused") => exit::DATAERR,
            Some("unavailable") => exit::UNAVAILABLE,
            _ => exit::SOFTWARE,
        };
        return Err(exit::coded(code, msg));
    }
    let d = &v["done"];
    let m = &d["manifest"];
    if json {
        println!("{}", serde_json::to_string_pretty(m).unwrap_or_default());
        return Ok(exit::OK);
    }
    println!("{}", d["path"].as_str().unwrap_or(""));
    println!(
        "package {}: {} files, written, synced and verified",
        m["package_id"].as_str().unwrap_or(""),
        m["files"].as_array().map_or(0, |f| f.len()) + 1
    );
    for c in m["cameras"].as_array().into_iter().flatten() {
        let span = match c["actual"].as_object() {
            Some(a) => format!(
                "{} .. {}",
                output::local_time(a["from"].as_str().unwrap_or("")),
                output::local_time(a["to"].as_str().unwrap_or(""))
            ),
            None => "no footage".into(),
        };
        println!(
            "camera {}  {span}  {}",
            c["id"].as_str().unwrap_or(""),
            c["clip"].as_str().unwrap_or("-")
        );
        for g in c["gaps"].as_array().into_iter().flatten() {
            println!("  gap {} .. {}: {}", g["from"], g["to"], g["reason"]);
        }
    }
    println!(
        "open index.html in a browser to replay; check with `storeguard evidence verify PACKAGE`"
    );
    Ok(exit::OK)
}

fn export(args: &Args, camera: &str, from: &str, to: &str, out: &Path) -> Result<u8> {
    std::fs::create_dir_all(out)
        .map_err(|e| exit::coded(exit::CANTCREAT, format!("{}: {e}", out.display())))?;
    let out_abs = std::fs::canonicalize(out).unwrap_or_else(|_| out.to_path_buf());
    let client = args.client();
    let body =
        serde_json::json!({ "camera": camera, "from": from, "to": to, "destination": out_abs });
    let v = client.call("POST", "/v1/clips", Some(&body))?;
    let uid = v["clip"].as_str().unwrap_or_default().to_string();
    let name = v["file"]["name"].as_str().unwrap_or("clip.mp4").to_string();
    let clip_path = out.join(&name);
    let manifest_path = storeguard::evidence::sidecar_path(&clip_path);
    client.download(&format!("/v1/evidence/{uid}/clip"), &clip_path)?;
    client.download(&format!("/v1/evidence/{uid}/manifest"), &manifest_path)?;
    // Check the copy we just wrote, not only the daemon's original.
    storeguard::evidence::verify(&clip_path, Some(&manifest_path), None).map_err(|e| {
        exit::coded(
            exit::DATAERR,
            format!(
                "exported copy failed verification: {}",
                storeguard_base::error::chain(&e)
            ),
        )
    })?;
    let m = &v["manifest"];
    println!("{}", clip_path.display());
    println!("{}", manifest_path.display());
    println!(
        "camera {}  first frame {}  last frame {}  {} bytes  sha256 {}",
        camera,
        output::local_time(m["actual"]["first_frame"].as_str().unwrap_or("")),
        output::local_time(m["actual"]["last_frame"].as_str().unwrap_or("")),
        m["file"]["size"],
        m["file"]["sha256"].as_str().unwrap_or("")
    );
    for g in m["gaps"].as_array().into_iter().flatten() {
        println!("gap {} .. {}: {}", g["from"], g["to"], g["reason"]);
    }
    Ok(exit::OK)
}

fn doctor(args: &Args) -> u8 {
    let mut failed = false;
    let mut line = |status: &str, check: &str, detail: &str| {
        failed |= status == "fail";
        println!("{:<5} {:<11} {detail}", status.to_uppercase(), check);
    };
    match Config::load(&args.config) {
        Ok(l) => line(
            "ok",
            "config",
            &format!("{} valid (version {})", args.config.display(), l.version),
        ),
        Err(e) => line("fail", "config", &e.to_string()),
    }
    match storeguard::camera::init_gstreamer() {
        Ok(()) => line(
            "ok",
            "gstreamer",
            &format!(
                "{} with the elements recording needs",
                gstreamer::version_string()
            ),
        ),
        Err(e) => line("fail", "gstreamer", &format!("{e:#}")),
    }
    let detect = Config::load(&args.config)
        .map(|l| l.config.detect)
        .unwrap_or_default();
    match storeguard::detect::detector::OrtDetector::open(&detect) {
        Ok(d) => {
            let i = d.info();
            let known = i.sha256 == storeguard::config::detect::MODEL_SHA256;
            line(
                if known || detect.model_sha256.is_some() {
                    "ok"
                } else {
                    "warn"
                },
                "detector",
                &format!(
                    "{} sha256 {}{}; inputs {}; outputs {}; ONNX Runtime {}",
                    i.path.display(),
                    i.sha256,
                    if known {
                        ""
                    } else {
                        " (not the model this storeguard was tested with)"
                    },
                    i.inputs.join(", "),
                    i.outputs.join(", "),
                    i.library.display()
                ),
            )
        }
        Err(e) => line(
            "fail",
            "detector",
            &storeguard_base::error::chain(&e).to_string(),
        ),
    }
    let now = chrono::Utc::now();
    // The kernel's own word on the clock, without the daemon (adjtimex, read only).
    let kernel = storeguard_base::clock::kernel_ntp();
    if now.timestamp() < 1_700_000_000 {
        line(
            "fail",
            "clock",
            &format!("system time {now} is before 2023: evidence times would be wrong; fix NTP"),
        );
    } else {
        match kernel {
            Ok(n) if n.synced => line(
                "ok",
                "clock",
                &format!(
                    "{} UTC, synchronised by NTP (kernel maxerror {} ms, esterror {} ms)",
                    now.format("%Y-%m-%d %H:%M:%S"),
                    n.maxerror_us / 1000,
                    n.esterror_us / 1000
                ),
            ),
            Ok(n) => line(
                "warn",
                "clock",
                &format!(
                    "{} UTC, but the kernel says the clock is NOT synchronised (adjtimex: STA_UNSYNC, maxerror {} ms): no time daemon disciplines it, so evidence times cannot be vouched for; set up NTP (chrony or systemd-timesyncd)",
                    now.format("%Y-%m-%d %H:%M:%S"),
                    n.maxerror_us / 1000
                ),
            ),
            Err(e) => line(
                "fail",
                "clock",
                &format!("reading the kernel clock state (adjtimex): {e}"),
            ),
        }
    }
    match args.client().call("GET", "/v1/doctor", None) {
        Ok(v) => {
            line("ok", "daemon", "answering on the control socket");
            for c in v["checks"].as_array().into_iter().flatten() {
                line(
                    c["status"].as_str().unwrap_or("?"),
                    c["check"].as_str().unwrap_or("?"),
                    c["detail"].as_str().unwrap_or(""),
                );
            }
        }
        Err(e) => line("fail", "daemon", &format!("{e:#}")),
    }
    if failed { exit::FAILURE } else { exit::OK }
}

fn validate(paths: &[PathBuf]) -> u8 {
    let mut code = exit::OK;
    for p in paths {
        match Config::load(p) {
            Ok(l) => println!(
                "{}: ok ({} cameras, {} buttons, version {})",
                p.display(),
                l.config.cameras.len(),
                l.config.buttons.len(),
                l.version
            ),
            Err(e) => {
                eprintln!("{e}");
                code = exit::CONFIG;
            }
        }
    }
    code
}

fn print(json: bool, v: &Value, human: fn(&Value) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        print!("{}", human(v));
    }
}
