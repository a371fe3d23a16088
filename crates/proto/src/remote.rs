//! Remote configuration and commands: what the control centre sends a box, and what the
//! box answers (docs/remote.md).
//!
//! `config/desired` (retained) carries a whole config document with a version that only
//! grows; `cmd/{name}` carries one command with a request id. Both are signed JSON
//! ([`crate::trust`]) and expire; the box answers on `config/reported` (retained) and
//! `cmd/{name}/result`.

use serde::{Deserialize, Serialize};

use crate::keys::DeviceKey;
use crate::manifest::SignatureBlock;
use crate::trust::{TrustError, TrustedKeys, sign_value};

pub const SCHEMA_DESIRED: &str = "storeguard.config-desired/v1";
pub const SCHEMA_REPORTED: &str = "storeguard.config-reported/v1";
pub const SCHEMA_CMD: &str = "storeguard.cmd/v1";
pub const SCHEMA_CMD_RESULT: &str = "storeguard.cmd-result/v1";

/// The config the control centre wants a box to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Desired {
    pub schema: String,
    pub site_id: String,
    pub device_id: String,
    /// Grows with every change; the box refuses anything not newer than what it applied.
    pub version: u64,
    pub issued_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The whole config file, as a technician would write it.
    pub config: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureBlock>,
}

/// What the box did with the latest desired config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigState {
    Applied,
    Rejected,
    Pending,
    RolledBack,
}

/// The retained `config/reported`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reported {
    pub schema: String,
    pub site_id: String,
    pub device_id: String,
    pub state: ConfigState,
    /// The desired version this report is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// What runs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_version: Option<u64>,
    /// The running config file's content hash (as `storeguard status` shows it).
    pub applied_hash: String,
    /// `field: message`, as `storeguard config validate` prints them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    pub at: String,
}

/// One command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub schema: String,
    pub site_id: String,
    pub device_id: String,
    /// Chosen by the sender; the box runs a request id once and answers repeats from
    /// what it stored.
    pub request_id: String,
    pub issued_at: String,
    pub expires_at: String,
    #[serde(default)]
    pub args: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureBlock>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmdStatus {
    /// Ran and succeeded.
    Ok,
    /// Ran (or started) and failed: `error` says why.
    Failed,
    /// Not run: unsigned, expired, malformed, unknown command.
    Rejected,
}

/// `cmd/{name}/result`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CmdResult {
    pub schema: String,
    pub site_id: String,
    pub device_id: String,
    pub name: String,
    /// Empty when the request could not even be read.
    pub request_id: String,
    pub status: CmdStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// True when this repeats the stored result of an earlier delivery.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    pub at: String,
}

/// Why a signed message from the control centre is not acted on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    #[error("unreadable: {0}")]
    Parse(String),
    #[error("{0}")]
    Trust(#[from] TrustError),
    #[error("addressed to {found}, this box is {expected}")]
    Addressee { expected: String, found: String },
    #[error("expired at {0}")]
    Expired(String),
    #[error("{field}: {reason}")]
    Field { field: &'static str, reason: String },
}

/// What both signed kinds share.
pub trait Signed: serde::de::DeserializeOwned + Serialize + Clone {
    fn names(&self) -> (&str, &str);
    fn expires_at(&self) -> Option<&str>;
    fn strip_signature(&self) -> Self;

    /// The payload, signed by the control centre's `key`.
    fn signed(&self, key: &DeviceKey) -> Vec<u8> {
        sign_value(&self.strip_signature(), key)
    }
}

impl Signed for Desired {
    fn names(&self) -> (&str, &str) {
        (&self.site_id, &self.device_id)
    }
    fn expires_at(&self) -> Option<&str> {
        self.expires_at.as_deref()
    }
    fn strip_signature(&self) -> Self {
        Desired {
            signature: None,
            ..self.clone()
        }
    }
}

impl Signed for Command {
    fn names(&self) -> (&str, &str) {
        (&self.site_id, &self.device_id)
    }
    fn expires_at(&self) -> Option<&str> {
        Some(&self.expires_at)
    }
    fn strip_signature(&self) -> Self {
        Command {
            signature: None,
            ..self.clone()
        }
    }
}

/// Parses and checks a signed message for this box at `now_ns`: the signature by a
/// trusted key, the addressee, and the expiry. Returns it with the signing key id.
pub fn check<T: Signed>(
    payload: &[u8],
    trusted: &TrustedKeys,
    site: &str,
    device: &str,
    now_ns: i64,
) -> Result<(T, String), RemoteError> {
    let msg: T = serde_json::from_slice(payload).map_err(|e| RemoteError::Parse(e.to_string()))?;
    let key_id = trusted.verify(payload)?;
    let (s, d) = msg.names();
    if s != site || d != device {
        return Err(RemoteError::Addressee {
            expected: format!("{site}/{device}"),
            found: format!("{s}/{d}"),
        });
    }
    if let Some(exp) = msg.expires_at() {
        let at = chrono::DateTime::parse_from_rfc3339(exp)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
            .ok_or_else(|| RemoteError::Field {
                field: "expires_at",
                reason: format!("{exp:?} is not an RFC 3339 UTC time"),
            })?;
        if at <= now_ns {
            return Err(RemoteError::Expired(exp.to_string()));
        }
    }
    Ok((msg, key_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DeviceKey {
        DeviceKey::from_seed([9; 32])
    }

    fn trusted() -> TrustedKeys {
        TrustedKeys::parse(&[key().public_key_b64()]).unwrap()
    }

    fn desired(expires: Option<&str>) -> Desired {
        Desired {
            schema: SCHEMA_DESIRED.into(),
            site_id: "s1".into(),
            device_id: "d1".into(),
            version: 3,
            issued_at: "2026-12-01T10:00:00Z".into(),
            expires_at: expires.map(str::to_string),
            config: "[site]\nsite_id = \"s1\"\n".into(),
            signature: None,
        }
    }

    const NOW: i64 = 1_796_126_400_000_000_000; // 2026-12-01T12:00:00Z

    #[test]
    fn signed_desired_checks_out_and_forgeries_are_named() {
        let p = desired(Some("2026-12-02T00:00:00Z")).signed(&key());
        let (d, kid) = check::<Desired>(&p, &trusted(), "s1", "d1", NOW).unwrap();
        assert_eq!((d.version, kid), (3, key().key_id()));
        assert!(matches!(
            check::<Desired>(&p, &trusted(), "s1", "d2", NOW),
            Err(RemoteError::Addressee { .. })
        ));
        let expired = desired(Some("2026-12-01T11:00:00Z")).signed(&key());
        assert!(matches!(
            check::<Desired>(&expired, &trusted(), "s1", "d1", NOW),
            Err(RemoteError::Expired(_))
        ));
        let unsigned = serde_json::to_vec(&desired(None)).unwrap();
        assert_eq!(
            check::<Desired>(&unsigned, &trusted(), "s1", "d1", NOW).unwrap_err(),
            RemoteError::Trust(TrustError::Unsigned)
        );
        let other = desired(None).signed(&DeviceKey::from_seed([1; 32]));
        assert!(matches!(
            check::<Desired>(&other, &trusted(), "s1", "d1", NOW),
            Err(RemoteError::Trust(TrustError::UnknownKey(_)))
        ));
        assert!(matches!(
            check::<Desired>(b"{\"x\":", &trusted(), "s1", "d1", NOW),
            Err(RemoteError::Parse(_))
        ));
    }

    #[test]
    fn commands_must_expire() {
        let c = serde_json::json!({"schema": SCHEMA_CMD, "site_id": "s1", "device_id": "d1",
            "request_id": "r1", "issued_at": "2026-12-01T10:00:00Z", "args": {}});
        let e = serde_json::from_value::<Command>(c).unwrap_err();
        assert!(e.to_string().contains("expires_at"), "{e}");
    }
}
