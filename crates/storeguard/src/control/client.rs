//! Blocking client for the control socket, used by the CLI subcommands.

use crate::exit::{self, coded};
use anyhow::{Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use super::http::percent_encode;

pub struct Client {
    socket: PathBuf,
    timeout: Option<Duration>,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_path_buf(),
            timeout: Some(Duration::from_secs(30)),
        }
    }

    fn connect(&self) -> Result<UnixStream> {
        let s = UnixStream::connect(&self.socket).map_err(|e| {
            use std::io::ErrorKind::*;
            match e.kind() {
                NotFound | ConnectionRefused => coded(
                    exit::UNAVAILABLE,
                    format!(
                        "the storeguard daemon is not running (nothing listening on {})",
                        self.socket.display()
                    ),
                ),
                PermissionDenied => coded(
                    exit::NOPERM,
                    format!(
                        "permission denied on {}: run as root or as a member of the control group",
                        self.socket.display()
                    ),
                ),
                _ => anyhow::Error::new(e)
                    .context(format!("connecting to {}", self.socket.display())),
            }
        })?;
        s.set_read_timeout(self.timeout)?;
        Ok(s)
    }

    fn send(
        &self,
        s: &mut UnixStream,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<()> {
        let body = body
            .map(|b| serde_json::to_vec(b).unwrap_or_default())
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: storeguard\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(&body)?;
        Ok(())
    }

    /// One request; a non-2xx reply becomes an error carrying the daemon's message.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut s = self.connect()?;
        self.send(&mut s, method, path, body)
            .with_context(|| format!("sending {method} {path}"))?;
        let mut rd = BufReader::new(s);
        let (status, chunked) = read_head(&mut rd)?;
        let mut raw = Vec::new();
        if chunked {
            read_chunks(&mut rd, |c| raw.extend_from_slice(c))?;
        } else {
            rd.read_to_end(&mut raw)?;
        }
        let v: Value = serde_json::from_slice(&raw)
            .with_context(|| format!("daemon replied with invalid JSON to {path}"))?;
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let msg = v
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("request failed")
            .to_string();
        Err(coded(status_code(status), msg))
    }

    /// Downloads a file response to `dest` (written to a temp name, fsynced, renamed).
    pub fn download(&self, path: &str, dest: &Path) -> Result<u64> {
        let mut s = self.connect()?;
        self.send(&mut s, "GET", path, None)?;
        let mut rd = BufReader::new(s);
        let (status, _) = read_head(&mut rd)?;
        if !(200..300).contains(&status) {
            return Err(refused(&mut rd, status, "download refused"));
        }
        let tmp = dest.with_extension("partial");
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let n =
            std::io::copy(&mut rd, &mut f).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest).with_context(|| format!("renaming to {}", dest.display()))?;
        Ok(n)
    }

    /// A streaming request: calls `each` for every NDJSON value until the daemon ends
    /// the stream or `each` returns false.
    pub fn stream(&self, path: &str, each: impl FnMut(Value) -> bool) -> Result<()> {
        self.stream_request("GET", path, None, each)
    }

    /// [`Client::stream`] for any method and body. A refusal before the stream starts is
    /// an error with the daemon's message and status, as for [`Client::call`].
    pub fn stream_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        mut each: impl FnMut(Value) -> bool,
    ) -> Result<()> {
        let mut s = self.connect()?;
        s.set_read_timeout(None)?;
        self.send(&mut s, method, path, body)?;
        let mut rd = BufReader::new(s);
        let (status, chunked) = read_head(&mut rd)?;
        if !(200..300).contains(&status) || !chunked {
            return Err(refused(&mut rd, status, "stream refused"));
        }
        let mut buf = Vec::new();
        let mut go = true;
        read_chunks(&mut rd, |c| {
            buf.extend_from_slice(c);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if go && let Ok(v) = serde_json::from_slice(&line) {
                    go = each(v);
                }
            }
        })
    }
}

/// The exit code for a refusal with this HTTP status.
fn status_code(status: u16) -> u8 {
    match status {
        403 => exit::NOPERM,
        400 | 422 => exit::DATAERR,
        404 => exit::DATAERR,
        503 => exit::UNAVAILABLE,
        _ => exit::FAILURE,
    }
}

/// The daemon's `{"error": ...}` from a refused download or stream.
/// A refused download or stream: the daemon's message, with the exit code its status
/// means (as for `call`), so "no such clip" is 65 whichever way it was asked.
fn refused(rd: &mut impl Read, status: u16, fallback: &str) -> anyhow::Error {
    let mut raw = Vec::new();
    let _ = rd.read_to_end(&mut raw);
    let v: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let msg = v.get("error").and_then(|e| e.as_str()).unwrap_or(fallback);
    coded(status_code(status), msg.to_string())
}

fn read_head(rd: &mut impl BufRead) -> Result<(u16, bool)> {
    let mut line = String::new();
    rd.read_line(&mut line)
        .context("reading reply from the daemon")?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("malformed reply status line {:?}", line.trim_end()))?;
    let mut chunked = false;
    loop {
        line.clear();
        if rd.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            break;
        }
        let l = line.to_ascii_lowercase();
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        }
    }
    Ok((status, chunked))
}

fn read_chunks(rd: &mut impl BufRead, mut each: impl FnMut(&[u8])) -> Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if rd.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let n = usize::from_str_radix(line.trim(), 16)
            .with_context(|| format!("bad chunk size {:?}", line.trim()))?;
        if n == 0 {
            return Ok(());
        }
        let mut chunk = vec![0; n + 2];
        rd.read_exact(&mut chunk)?;
        each(&chunk[..n]);
    }
}
