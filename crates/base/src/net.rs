//! Host and port parsing shared by the camera (RTSP) and broker (MQTT) URLs.

/// Splits `host[:port]` or `[v6addr][:port]`; `default_port` when none is given.
pub fn split_host_port(hostport: &str, default_port: u16) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, p) = h.split_once(']').ok_or("unterminated IPv6 address")?;
        (h, p.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid port {p:?}"))?,
    };
    Ok((host, port))
}
