//! `[uplink]`: the MQTT link to the control centre (see docs/mqtt.md).

use super::Validator;
use super::values::{Bytes, Dur, Secret, format_bytes};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
pub use storeguard_proto::broker::{BrokerUrl, SYSTEM_CA_BUNDLE, parse_broker_url};

/// Room reserved in every MQTT payload for the binary chunk header (magic, length, JSON).
pub const CHUNK_HEADER_RESERVE: u64 = 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    /// `mqtt://host[:port]` (port 1883) or `mqtts://host[:port]` (TLS, port 8883).
    pub broker: String,
    /// MQTT client id; default `storeguard-{device_id}`. Must be unique per broker.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// TLS files for `mqtts://`; absolute paths.
    #[serde(default)]
    pub tls: Option<UplinkTls>,
    #[serde(default = "default_keepalive")]
    pub keepalive: Dur,
    /// Clip bytes per chunk message.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: Bytes,
    /// The largest publish payload the broker accepts (mosquitto `message_size_limit`,
    /// EMQX `max_packet_size`, ...). Larger outbox messages are set aside with an error
    /// instead of being sent: a v3.1.1 broker acknowledges and then discards them.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: Bytes,
    /// The largest message the box takes from the broker (MQTT 5 Maximum Packet Size): the
    /// broker drops larger ones for this box instead of sending them, so a huge retained
    /// message on an inbound topic cannot cut the link.
    #[serde(default = "default_max_inbound_size")]
    pub max_inbound_size: Bytes,
    /// Evidence upload cap in bytes per second (chunk payloads only; alerts bypass it).
    #[serde(default)]
    pub upload_rate_limit: Option<Bytes>,
    /// Messages in flight (published, not yet acknowledged by the broker).
    #[serde(default = "default_window")]
    pub window: u16,
    /// Outbox limits; when full, telemetry is dropped (and counted), alerts never.
    #[serde(default = "default_max_messages")]
    pub max_messages: u64,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: Bytes,
    /// Ceiling of the reconnect backoff (exponential with jitter, from 0.5 s).
    #[serde(default = "default_max_backoff")]
    pub max_reconnect_backoff: Dur,
    /// A fully sent clip not confirmed by the receiver within this time has its final
    /// chunk re-sent, prompting the receiver to confirm or ask for what it misses.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout: Dur,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkTls {
    /// CA certificate(s), PEM; default: the system bundle.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS; needs `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

fn default_keepalive() -> Dur {
    Dur::secs(30)
}
fn default_chunk_size() -> Bytes {
    Bytes(256 << 10)
}
fn default_max_message_size() -> Bytes {
    Bytes(1 << 20)
}
fn default_max_inbound_size() -> Bytes {
    Bytes(1 << 20)
}
fn default_window() -> u16 {
    32
}
fn default_max_messages() -> u64 {
    100_000
}
fn default_max_bytes() -> Bytes {
    Bytes(256 << 20)
}
fn default_max_backoff() -> Dur {
    Dur::secs(30)
}
fn default_ack_timeout() -> Dur {
    Dur::secs(600)
}

impl Uplink {
    /// A minimal config for `broker` with every other field at its default.
    pub fn new(broker: impl Into<String>) -> Uplink {
        Uplink {
            broker: broker.into(),
            client_id: None,
            username: None,
            password: None,
            tls: None,
            keepalive: default_keepalive(),
            chunk_size: default_chunk_size(),
            max_message_size: default_max_message_size(),
            max_inbound_size: default_max_inbound_size(),
            upload_rate_limit: None,
            window: default_window(),
            max_messages: default_max_messages(),
            max_bytes: default_max_bytes(),
            max_reconnect_backoff: default_max_backoff(),
            ack_timeout: default_ack_timeout(),
        }
    }

    pub fn client_id_for(&self, device_id: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("storeguard-{device_id}"))
    }

    pub(crate) fn validate(&self, v: &mut Validator) {
        let url = match parse_broker_url(&self.broker) {
            Ok(u) => Some(u),
            Err(e) => {
                v.err("uplink.broker", format!("{:?}: {e}", self.broker));
                None
            }
        };
        if let Some(id) = &self.client_id {
            if id.is_empty() || id.len() > 128 {
                v.err("uplink.client_id", "must be 1 to 128 characters");
            } else if let Some(c) = id
                .chars()
                .find(|c| !c.is_ascii_graphic() || matches!(c, '+' | '#' | '/'))
            {
                v.err(
                    "uplink.client_id",
                    format!("{id:?} contains {c:?}; use printable ASCII without '+', '#', '/'"),
                );
            }
        }
        if let Some(u) = &self.username
            && u.is_empty()
        {
            v.err("uplink.username", "must not be empty when set");
        }
        if self.password.is_some() && self.username.is_none() {
            v.err("uplink.password", "password given without username");
        }
        if let Some(tls) = &self.tls {
            if url.as_ref().is_some_and(|u| !u.tls) {
                v.err(
                    "uplink.tls",
                    "TLS files given but the broker URL is mqtt://; use mqtts:// for TLS",
                );
            }
            for (name, p) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
                if let Some(p) = p
                    && !p.is_absolute()
                {
                    v.err(
                        &format!("uplink.tls.{name}"),
                        format!("{} must be an absolute path", p.display()),
                    );
                }
            }
            match (&tls.cert, &tls.key) {
                (Some(_), None) => v.err(
                    "uplink.tls.cert",
                    "client certificate given without uplink.tls.key",
                ),
                (None, Some(_)) => {
                    v.err("uplink.tls.key", "client key given without uplink.tls.cert")
                }
                _ => {}
            }
        }
        v.range(
            "uplink.keepalive",
            self.keepalive,
            Dur::secs(5),
            Dur::secs(1800),
        );
        let (chunk, max_msg) = (self.chunk_size.0, self.max_message_size.0);
        if !(1 << 10..=16 << 20).contains(&chunk) {
            v.err(
                "uplink.chunk_size",
                format!("{} is out of range (1KiB to 16MiB)", format_bytes(chunk)),
            );
        }
        if !(4 << 10..=256 << 20).contains(&max_msg) {
            v.err(
                "uplink.max_message_size",
                format!("{} is out of range (4KiB to 256MiB)", format_bytes(max_msg)),
            );
        } else if chunk + CHUNK_HEADER_RESERVE > max_msg {
            v.err(
                "uplink.chunk_size",
                format!(
                    "{} plus the {} chunk header exceeds uplink.max_message_size ({})",
                    format_bytes(chunk),
                    format_bytes(CHUNK_HEADER_RESERVE),
                    format_bytes(max_msg)
                ),
            );
        }
        if !(4 << 10..=64 << 20).contains(&self.max_inbound_size.0) {
            v.err(
                "uplink.max_inbound_size",
                format!(
                    "{} is out of range (4KiB to 64MiB)",
                    format_bytes(self.max_inbound_size.0)
                ),
            );
        }
        if let Some(r) = self.upload_rate_limit
            && r.0 < 1 << 10
        {
            v.err(
                "uplink.upload_rate_limit",
                format!(
                    "{} per second is too low (minimum 1KiB; omit the key for no limit)",
                    format_bytes(r.0)
                ),
            );
        }
        if !(1..=1024).contains(&self.window) {
            v.err(
                "uplink.window",
                format!("{} is out of range (1 to 1024)", self.window),
            );
        }
        if self.max_messages < 100 {
            v.err(
                "uplink.max_messages",
                format!("{} is too small (minimum 100)", self.max_messages),
            );
        }
        if self.max_bytes.0 < 1 << 20 {
            v.err(
                "uplink.max_bytes",
                format!(
                    "{} is too small (minimum 1MiB)",
                    format_bytes(self.max_bytes.0)
                ),
            );
        }
        v.range(
            "uplink.max_reconnect_backoff",
            self.max_reconnect_backoff,
            Dur::millis(100),
            Dur::secs(3600),
        );
        v.range(
            "uplink.ack_timeout",
            self.ack_timeout,
            Dur::secs(1),
            Dur::secs(7 * 86400),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    const BASE: &str = r#"
[site]
site_id = "store-1"
device_id = "box-a"

[storage]
data_dir = "data"
"#;

    fn parse(uplink: &str) -> Result<Config, Vec<crate::config::Problem>> {
        Config::parse(&format!("{BASE}\n[uplink]\n{uplink}"), Path::new("/etc/x"))
    }

    #[test]
    fn urls() {
        let u = parse_broker_url("mqtt://10.0.0.1").unwrap();
        assert_eq!((u.tls, u.port), (false, 1883));
        let u = parse_broker_url("mqtts://cc.example.net/").unwrap();
        assert_eq!(
            (u.tls, u.port, u.host.as_str()),
            (true, 8883, "cc.example.net")
        );
        assert_eq!(parse_broker_url("mqtt://[::1]:1884").unwrap().port, 1884);
        assert_eq!(
            parse_broker_url("mqtt://[::1]:1884").unwrap().to_string(),
            "mqtt://[::1]:1884"
        );
        assert!(parse_broker_url("http://x").unwrap_err().contains("scheme"));
        assert!(
            parse_broker_url("mqtt://u:p@x")
                .unwrap_err()
                .contains("username")
        );
        assert!(parse_broker_url("mqtt://x:0").is_err());
        assert!(parse_broker_url("mqtt://x/topic").is_err());
    }

    #[test]
    fn defaults_and_limits() {
        let c = parse("broker = \"mqtt://127.0.0.1:1883\"").unwrap();
        let u = c.uplink.unwrap();
        assert_eq!(u.chunk_size, Bytes(256 << 10));
        assert_eq!(u.window, 32);
        assert_eq!(u.client_id_for("box-a"), "storeguard-box-a");
        assert_eq!(u.max_messages, 100_000);
        assert!(parse_config_without_uplink().uplink.is_none());
    }

    fn parse_config_without_uplink() -> Config {
        Config::parse(BASE, Path::new("/etc/x")).unwrap()
    }

    #[test]
    fn problems_are_named_and_located() {
        let p = parse(
            "broker = \"mqtt://h\"\npassword = \"x\"\nchunk_size = \"1MiB\"\n\
             max_message_size = \"1MiB\"\nwindow = 0\n[uplink.tls]\ncert = \"c.pem\"\n",
        )
        .unwrap_err();
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "uplink.password",
                "uplink.tls",
                "uplink.tls.cert",
                "uplink.tls.cert",
                "uplink.chunk_size",
                "uplink.window"
            ],
            "{p:?}"
        );
        assert!(
            p[4].message.contains("exceeds uplink.max_message_size"),
            "{p:?}"
        );
        assert_eq!(p[0].line, 11, "{p:?}");
        let p = parse("broker = \"mqtts://h:99999\"").unwrap_err();
        assert!(p[0].message.contains("invalid port"), "{p:?}");
    }

    #[test]
    fn password_is_masked() {
        let c = parse("broker = \"mqtts://h\"\nusername = \"u\"\npassword = \"hunter2\"").unwrap();
        let shown = c.to_toml_masked();
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
