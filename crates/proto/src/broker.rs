//! Where the broker is: the `mqtt://` / `mqtts://` URL both sides of the link parse.

/// The Debian/Ubuntu system CA bundle, used when no CA file is given.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A parsed broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Parses `mqtt://host[:port]` or `mqtts://host[:port]` (a trailing `/` is allowed).
pub fn parse_broker_url(url: &str) -> Result<BrokerUrl, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("not a URL (expected mqtt://host[:port] or mqtts://host[:port])")?;
    let (tls, default_port) = match scheme {
        "mqtt" | "tcp" => (false, 1883),
        "mqtts" | "ssl" => (true, 8883),
        s => {
            return Err(format!("unsupported scheme {s:?} (expected mqtt or mqtts)"));
        }
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('?') {
        return Err("must not have a path or query (expected mqtt://host[:port])".into());
    }
    if rest.contains('@') {
        return Err(
            "credentials in the URL are not supported; use uplink.username and uplink.password"
                .into(),
        );
    }
    if rest.chars().any(|c| c.is_whitespace()) {
        return Err("contains whitespace".into());
    }
    let (host, port) = storeguard_base::net::split_host_port(rest, default_port)?;
    Ok(BrokerUrl {
        tls,
        host: host.to_string(),
        port,
    })
}
