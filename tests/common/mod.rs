//! Shared helpers for the integration tests: every test gets its own temporary directory
//! with a generated config, and drives the real `storeguard` binary (daemon and CLI).

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use serde_json::Value;
use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_storeguard");

/// Failure guard for anything that waits on the daemon: exceeding it fails the test.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The camera password in generated configs; it must never appear in any output.
pub const SECRET: &str = "pw-Zq81xK-never-shown";

/// A config with `cameras` cameras (cam1..camN, the first with a password), one button
/// on the first two, and relative `data_dir`/`socket` (resolved against the config's dir).
pub fn config(cameras: usize) -> String {
    config_with("data", "control.sock", cameras)
}

pub fn config_with(data_dir: &str, socket: &str, cameras: usize) -> String {
    let mut s = format!(
        r#"[site]
site_id = "test-store"
device_id = "test-box"

[storage]
data_dir = "{data_dir}"

[control]
socket = "{socket}"
"#
    );
    for i in 1..=cameras {
        s.push_str(&format!(
            "\n[[cameras]]\nid = \"cam{i}\"\nname = \"Camera {i}\"\nurl = \"rtsp://127.0.0.1:8554/cam{i}\"\n"
        ));
        if i == 1 {
            s.push_str(&format!("username = \"admin\"\npassword = \"{SECRET}\"\n"));
        }
    }
    if cameras >= 1 {
        let cams: Vec<String> = (1..=cameras.min(2))
            .map(|i| format!("\"cam{i}\""))
            .collect();
        s.push_str(&format!(
            "\n[[buttons]]\nname = \"till\"\nchip = \"sim\"\nline = 0\nwiring = \"normally-open\"\ncameras = [{}]\n",
            cams.join(", ")
        ));
    }
    s
}

/// What a finished command left behind.
#[derive(Debug)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts the exit code, showing everything the command printed when it differs.
    #[track_caller]
    pub fn expect(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit {code}, got {:?}\n--- stdout\n{}--- stderr\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// The binary with a clean environment, run from `/` so that nothing resolves against
/// the test's working directory by accident.
pub fn command() -> Command {
    let mut c = Command::new(BIN);
    for v in [
        "STOREGUARD_CONFIG",
        "STOREGUARD_SOCKET",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
    ] {
        c.env_remove(v);
    }
    c.env("STOREGUARD_LOG", "info")
        .env("NO_COLOR", "1")
        .current_dir("/")
        .stdin(Stdio::null());
    c
}

/// Runs the binary to completion (it must finish within DEADLINE).
pub fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Out {
    run_as(None, args)
}

/// Like `run`, as another user (uid and gid) when given; needs root.
pub fn run_as<S: AsRef<std::ffi::OsStr>>(user: Option<(u32, u32)>, args: &[S]) -> Out {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut cmd = command();
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd
        .args(args)
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawn storeguard");
    let status = wait_deadline(&mut child, DEADLINE).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "storeguard {:?} did not finish within {DEADLINE:?}\n--- stderr\n{}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
            fs::read_to_string(&err).unwrap_or_default()
        )
    });
    Out {
        status,
        stdout: fs::read_to_string(&out).unwrap(),
        stderr: fs::read_to_string(&err).unwrap(),
    }
}

pub fn wait_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `cond` until it holds; panics with `what` after DEADLINE.
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "timed out after {DEADLINE:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn send_signal(pid: u32, sig: libc::c_int) {
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// The config version the binary computes for a file, from `config validate`.
pub fn version_of(config: &Path) -> String {
    let out = run(&["config".as_ref(), "validate".as_ref(), config.as_os_str()]);
    out.expect(0);
    let v = out
        .stdout
        .rsplit_once("version ")
        .map(|(_, v)| v.trim().trim_end_matches(')').to_string())
        .unwrap_or_else(|| panic!("no version in {:?}", out.stdout));
    assert_eq!(v.len(), 12, "{v:?}");
    v
}

/// One parsed `file:line:column: field.path: message` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

/// Parses every stderr line as a located problem for `file`; panics on any line that
/// is not exactly of that form.
#[track_caller]
pub fn problems(stderr: &str, file: &Path) -> Vec<Problem> {
    let prefix = format!("{}:", file.display());
    stderr
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let parse = || {
                let rest = l.strip_prefix(&prefix)?;
                let (line, rest) = rest.split_once(':')?;
                let (col, rest) = rest.split_once(": ")?;
                let (field, message) = rest.split_once(": ")?;
                if field.contains(' ') || message.is_empty() {
                    return None;
                }
                Some(Problem {
                    line: line.parse().ok()?,
                    column: col.parse().ok()?,
                    field: field.to_string(),
                    message: message.to_string(),
                })
            };
            parse().unwrap_or_else(|| {
                panic!("stderr line is not `{prefix}LINE:COL: field: message`: {l:?}\n{stderr}")
            })
        })
        .collect()
}

/// 1-based (line, column) of the `nth` (0-based) occurrence of `needle` in `text`, plus
/// `plus` bytes: an expected error position computed from the config text itself.
#[track_caller]
pub fn position(text: &str, needle: &str, nth: usize, plus: usize) -> (usize, usize) {
    let offset = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} (#{nth}) not in config"))
        .0
        + plus;
    let line_start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    (
        text[..offset].matches('\n').count() + 1,
        offset - line_start + 1,
    )
}

/// A temporary install: a directory holding the config, the data dir and the socket.
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Default for Site {
    fn default() -> Self {
        Self::new()
    }
}

impl Site {
    pub fn new() -> Self {
        Site {
            dir: tempfile::Builder::new().prefix("sg-").tempdir().unwrap(),
        }
    }

    /// A site with `config(cameras)` written to `storeguard.toml`.
    pub fn with_cameras(cameras: usize) -> Self {
        let s = Site::new();
        s.write_config(&config(cameras));
        s
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("storeguard.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.path("control.sock")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path("data")
    }

    /// Writes the config atomically (rename), as an editor or config management would,
    /// so a concurrent reload never sees half a file.
    pub fn write_config(&self, text: &str) -> PathBuf {
        self.write_file("storeguard.toml", text)
    }

    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        let mut f = fs::File::create(&tmp).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.sync_all().unwrap();
        fs::rename(&tmp, &p).unwrap();
        p
    }

    /// Runs a CLI command against this site's config.
    pub fn cli(&self, args: &[&str]) -> Out {
        self.cli_with(&self.config_path(), args)
    }

    pub fn cli_with(&self, config: &Path, args: &[&str]) -> Out {
        let mut all: Vec<&std::ffi::OsStr> = vec!["--config".as_ref(), config.as_os_str()];
        all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
        run(&all)
    }

    /// `status --json`, which must succeed.
    #[track_caller]
    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        out.expect(0);
        serde_json::from_str(&out.stdout).expect("status --json is JSON")
    }

    /// Starts the daemon on this site's config and waits until it answers.
    pub fn start(&self) -> Daemon {
        let mut d = self.spawn(&self.config_path(), "daemon");
        d.wait_ready(&self.socket());
        d
    }

    /// Spawns `storeguard --config <config> run`, logging to `<name>.log` in the site.
    pub fn spawn(&self, config: &Path, name: &str) -> Daemon {
        let log = self.path(&format!("{name}.log"));
        let f = fs::File::create(&log).unwrap();
        let child = command()
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("spawn storeguard run");
        Daemon { child, log }
    }

    /// Runs a daemon that is expected to refuse to start; returns how it exited.
    pub fn run_daemon_expecting_exit(&self, config: &Path, name: &str) -> Out {
        let mut d = self.spawn(config, name);
        let status = d.wait_exit(DEADLINE).unwrap_or_else(|| {
            panic!(
                "daemon {name} was expected to exit but is still running\n{}",
                d.log()
            )
        });
        Out {
            status,
            stdout: String::new(),
            stderr: d.log(),
        }
    }
}

/// A running `storeguard run`. Killed (SIGKILL) on drop; its log is printed if the test
/// is failing, which is usually the first thing one wants to see.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: libc::c_int) {
        send_signal(self.pid(), sig);
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits until `socket` accepts connections, failing early if the daemon exits.
    #[track_caller]
    pub fn wait_ready(&mut self, socket: &Path) {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                panic!("daemon exited during start-up ({s})\n{}", self.log());
            }
            if UnixStream::connect(socket).is_ok() {
                return;
            }
            assert!(
                Instant::now() < end,
                "daemon not answering on {} after {DEADLINE:?}\n{}",
                socket.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_deadline(&mut self.child, limit)
    }

    /// Waits until the daemon's log contains `text`.
    #[track_caller]
    pub fn wait_log(&self, text: &str) {
        wait_until(&format!("daemon log to contain {text:?}"), || {
            self.log().contains(text)
        });
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- daemon log {}\n{}", self.log.display(), self.log());
        }
    }
}

pub fn have_curl() -> bool {
    Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `curl --unix-socket <socket> [extra] http://storeguard<path>`; returns (HTTP status, body).
pub fn curl(socket: &Path, extra: &[&str], path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "10", "--unix-socket"])
        .arg(socket)
        .args(extra)
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://storeguard{path}"))
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl failed: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

/// Polls `cond` until it holds; panics with `what` after `limit` (for waits longer than
/// DEADLINE, such as a clip's post-roll).
#[track_caller]
pub fn wait_until_within(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Site {
    /// A connection to the daemon's database, for reading what it committed (WAL mode:
    /// readers don't block the daemon).
    pub fn db(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(self.data_dir().join("storeguard.db")).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c
    }
}
