//! The local control socket: JSON over HTTP/1.1 on a Unix socket, so the technician CLI
//! and `curl --unix-socket` speak the same protocol. It is a thin transport over the
//! command layer (`cmd`): `routes` maps each request to a command. This module owns
//! framing, peer credentials and the socket file. Protocol: docs/control.md.

pub mod client;
mod http;
pub mod routes;

use serde_json::Value;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use storeguard_base::Shutdown;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

pub use http::MAX_BODY;

#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: Peer,
}

impl Request {
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Response> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Response::error(400, format!("request body: {e}")))
    }
}

pub enum Response {
    Json(u16, Value),
    /// Newline-delimited JSON, sent as chunks until the sender is dropped.
    Stream(mpsc::Receiver<Value>),
    /// A file's bytes (evidence download).
    File(PathBuf, &'static str),
    /// Bytes made for this request (a snapshot).
    Bytes(Vec<u8>, &'static str),
}

impl Response {
    pub fn ok(v: impl serde::Serialize) -> Response {
        Response::Json(200, serde_json::to_value(v).unwrap_or(Value::Null))
    }
    pub fn error(status: u16, msg: impl Into<String>) -> Response {
        Response::Json(status, serde_json::json!({ "error": msg.into() }))
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Service: Send + Sync + 'static {
    fn handle(&self, req: Request) -> BoxFuture<'_, Response>;
}

/// Who may use the socket besides the file mode: root, the daemon's own user, listed
/// uids and members of the socket's group.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The group's name and the gid it had at bind time (looked up once, then).
    pub group: Option<(String, u32)>,
    pub allowed_uids: Vec<u32>,
}

impl Access {
    pub fn allows(&self, peer: &Peer) -> bool {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if peer.uid == 0 || peer.uid == me || self.allowed_uids.contains(&peer.uid) {
            return true;
        }
        match &self.group {
            Some((_, gid)) => peer.gid == *gid || user_in_group(peer.uid, *gid),
            None => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("control socket {0} is in use by a running process (another storeguard?)")]
    InUse(PathBuf),
    #[error("control socket {0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("control socket {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("group {0:?} does not exist on this system")]
    NoSuchGroup(String),
}

pub struct Listener {
    inner: UnixListener,
    path: PathBuf,
}

impl Listener {
    /// Binds the socket with mode 0660 (and the group, if given). A leftover socket file
    /// from a crash is replaced; a live one is an error, never stolen.
    pub async fn bind(
        path: &Path,
        group: Option<&str>,
    ) -> Result<(Listener, Option<u32>), BindError> {
        let io = |source| BindError::Io {
            path: path.to_path_buf(),
            source,
        };
        let gid = match group {
            Some(g) => Some(group_id(g).ok_or_else(|| BindError::NoSuchGroup(g.to_string()))?),
            None => None,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            // Only a dead socket is ours to replace; any other file is a config mistake.
            if !meta.file_type().is_socket() {
                return Err(BindError::NotASocket(path.to_path_buf()));
            }
            if UnixStream::connect(path).await.is_ok() {
                return Err(BindError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        let inner = UnixListener::bind(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(io)?;
        }
        Ok((
            Listener {
                inner,
                path: path.to_path_buf(),
            },
            gid,
        ))
    }

    /// Serves until `shutdown` turns true; in-flight requests finish on their own tasks.
    pub async fn serve(self, service: Arc<dyn Service>, access: Access, mut shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.stopped() => break,
                r = self.inner.accept() => match r {
                    Ok((stream, _)) => {
                        let svc = service.clone();
                        let access = access.clone();
                        tokio::spawn(async move {
                            if let Err(e) = http::serve_conn(stream, svc, &access).await {
                                tracing::debug!(error = %e, "control connection ended with an error");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // getgrnam is not thread-safe, but it only runs at bind time, before serving.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    (!g.is_null()).then(|| unsafe { (*g).gr_gid })
}

/// Whether `uid` is a (supplementary) member of `gid`. Runs per connection, so it takes
/// the gid resolved at bind time rather than calling the non-thread-safe getgrnam.
fn user_in_group(uid: u32, gid: u32) -> bool {
    let Some((user, primary)) = user_entry(uid) else {
        return false;
    };
    let Ok(cuser) = std::ffi::CString::new(user) else {
        return false;
    };
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut n = groups.len() as libc::c_int;
    let r = unsafe { libc::getgrouplist(cuser.as_ptr(), primary, groups.as_mut_ptr(), &mut n) };
    r >= 0 && groups[..n as usize].contains(&gid)
}

/// (name, primary gid) of a uid.
fn user_entry(uid: u32) -> Option<(String, u32)> {
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    let r = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r != 0 || out.is_null() {
        return None;
    }
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some((name.to_string_lossy().into_owned(), pwd.pw_gid))
}

/// For the fuzz entry points (`fuzzing.rs`): one request's bytes through the framing
/// and the routes, as a connection would bring them (no socket, no state).
pub(crate) fn fuzz_request(data: &[u8]) {
    use futures_util::FutureExt;
    let peer = Peer {
        uid: 0,
        gid: 0,
        pid: None,
    };
    let mut rd = data;
    // A byte slice never waits, so the future finishes on its first poll.
    let req = http::read_request(&mut rd, peer)
        .now_or_never()
        .expect("reading from memory never waits");
    if let Ok(req) = req {
        let _ = req.query("from");
        let _ = routes::parse(&req);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_membership_uses_the_gid_resolved_at_bind_time() {
        // "nobody" is a member of its own primary group (65534 on Debian). The group's
        // name is gone from the database (renamed, say); the gid from bind time still
        // decides, and no getgrnam runs per connection.
        let Some((_, primary)) = user_entry(65534) else {
            return;
        };
        let access = Access {
            group: Some(("no-such-group-any-more".into(), primary)),
            allowed_uids: vec![],
        };
        let peer = Peer {
            uid: 65534,
            gid: primary.wrapping_add(1),
            pid: None,
        };
        assert!(access.allows(&peer));
        let stranger = Access {
            group: Some(("no-such-group-any-more".into(), primary.wrapping_add(7))),
            allowed_uids: vec![],
        };
        assert!(!stranger.allows(&peer));
    }
}
