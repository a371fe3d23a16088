//! Just enough HTTP/1.1 for a local JSON API: one request per connection, a body sized
//! by Content-Length, replies with Content-Length or chunked NDJSON. A full HTTP stack
//! would cost more build time than this whole file.

use super::{Access, Peer, Request, Response, Service};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

pub const MAX_BODY: usize = 1 << 20;
const MAX_HEADER_LINES: usize = 64;
/// Longest request line or header line.
const MAX_LINE: usize = 8 << 10;

pub(super) async fn serve_conn(
    stream: UnixStream,
    svc: Arc<dyn Service>,
    access: &Access,
) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let peer = Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
    };
    let (rd, mut wr) = stream.into_split();
    // Before reading a byte of the request: a caller who may not use the socket gets
    // nothing read on its behalf, least of all a 1 MiB body.
    if !access.allows(&peer) {
        tracing::warn!(uid = peer.uid, pid = ?peer.pid, "control request refused: caller not allowed");
        let msg = format!(
            "uid {} is not allowed to use the storeguard control socket",
            peer.uid
        );
        write_json(&mut wr, 403, &serde_json::json!({ "error": msg })).await?;
        // Closing with the request unread would reset the connection before the caller
        // reads the 403; discard (never keep) what it sends, within bounds.
        wr.shutdown().await?;
        let mut sink = [0u8; 8192];
        let mut rd = rd;
        let drain = async {
            let mut left = MAX_BODY + 64 * 1024;
            while left > 0 {
                match rd.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
        return Ok(());
    }
    let mut rd = BufReader::new(rd);
    let req = match read_request(&mut rd, peer).await {
        Ok(r) => r,
        Err(msg) => return write_json(&mut wr, 400, &serde_json::json!({ "error": msg })).await,
    };
    tracing::debug!(method = %req.method, path = %req.path, uid = peer.uid, "control request");
    match svc.handle(req).await {
        Response::Json(status, v) => write_json(&mut wr, status, &v).await,
        Response::File(path, content_type) => {
            let mut f = match tokio::fs::File::open(&path).await {
                Ok(f) => f,
                Err(e) => {
                    let msg = format!("{}: {e}", path.display());
                    return write_json(&mut wr, 404, &serde_json::json!({ "error": msg })).await;
                }
            };
            let len = f.metadata().await?.len();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            );
            wr.write_all(head.as_bytes()).await?;
            tokio::io::copy(&mut f, &mut wr).await?;
            wr.flush().await
        }
        Response::Bytes(body, content_type) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            wr.write_all(head.as_bytes()).await?;
            wr.write_all(&body).await?;
            wr.flush().await
        }
        Response::Stream(mut rx) => {
            wr.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            )
            .await?;
            while let Some(v) = rx.recv().await {
                let mut line = serde_json::to_vec(&v).unwrap_or_default();
                line.push(b'\n');
                wr.write_all(format!("{:x}\r\n", line.len()).as_bytes())
                    .await?;
                wr.write_all(&line).await?;
                wr.write_all(b"\r\n").await?;
                wr.flush().await?;
            }
            wr.write_all(b"0\r\n\r\n").await
        }
    }
}

pub(super) async fn read_request<R: AsyncBufReadExt + Unpin>(
    rd: &mut R,
    peer: Peer,
) -> Result<Request, String> {
    let mut line = String::new();
    read_line(rd, &mut line).await?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(format!("malformed request line {:?}", line.trim_end()));
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut len = 0usize;
    for n in 0.. {
        line.clear();
        read_line(rd, &mut line).await?;
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        if n == MAX_HEADER_LINES {
            return Err(format!("more than {MAX_HEADER_LINES} header lines"));
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v
                .trim()
                .parse()
                .map_err(|_| format!("bad Content-Length {:?}", v.trim()))?;
        }
    }
    if len > MAX_BODY {
        return Err(format!(
            "body of {len} bytes exceeds the {MAX_BODY}-byte limit"
        ));
    }
    let mut body = vec![0; len];
    rd.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Ok(Request {
        method,
        path: percent_decode(path),
        query,
        body,
        peer,
    })
}

/// One line of the request head, at most `MAX_LINE` bytes: a caller sending an endless
/// line gets an error, not the daemon's memory.
async fn read_line<R: AsyncBufReadExt + Unpin>(
    rd: &mut R,
    line: &mut String,
) -> Result<(), String> {
    let n = (&mut *rd)
        .take(MAX_LINE as u64 + 1)
        .read_line(line)
        .await
        .map_err(|e| e.to_string())?;
    if n > MAX_LINE {
        return Err(format!("request head line longer than {MAX_LINE} bytes"));
    }
    Ok(())
}

async fn write_json<W: AsyncWriteExt + Unpin>(
    wr: &mut W,
    status: u16,
    v: &serde_json::Value,
) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len() + 1
    );
    wr.write_all(head.as_bytes()).await?;
    wr.write_all(&body).await?;
    wr.write_all(b"\n").await?;
    wr.flush().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || b"-_.~:".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(data: &[u8]) -> Result<Request, String> {
        use futures_util::FutureExt;
        let peer = Peer {
            uid: 0,
            gid: 0,
            pid: None,
        };
        let mut rd = data;
        read_request(&mut rd, peer)
            .now_or_never()
            .expect("memory never waits")
    }

    #[test]
    fn request_heads_are_bounded() {
        let ok = read(b"POST /v1/clips HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!(
            (ok.path.as_str(), ok.body.as_slice()),
            ("/v1/clips", &b"{}"[..])
        );
        let long = format!(
            "GET /v1/status HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(MAX_LINE)
        );
        assert_eq!(
            read(long.as_bytes()).unwrap_err(),
            format!("request head line longer than {MAX_LINE} bytes")
        );
        let many = format!("GET /v1/status HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(65));
        assert_eq!(
            read(many.as_bytes()).unwrap_err(),
            "more than 64 header lines"
        );
        assert_eq!(
            read(format!("GET /v1/status HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(64)).as_bytes())
                .map(|r| r.path),
            Ok("/v1/status".to_string())
        );
    }

    #[test]
    fn percent_round_trip() {
        let s = "2026-11-22T10:00:00+01:00 a&b";
        assert_eq!(percent_decode(&percent_encode(s)), s);
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
