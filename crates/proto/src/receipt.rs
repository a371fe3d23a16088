//! Signed clip receipts: how a box decides whether the control centre really holds a clip.
//!
//! The receiver answers each upload on `evidence/{clip}/ack` with a [`ClipAck`] signed as
//! [`crate::trust`] describes. A `verified` receipt releases the clip's retention lock, so
//! it must prove three things: a trusted key signed it, it is about this site, device and
//! clip, and it names the exact bytes this box sealed (size, SHA-256 and the manifest's
//! signature, which differs for every seal). `incomplete` and `failed` only steer the
//! upload, but are signed too, so a stranger on the broker cannot restart or stall it.

use crate::keys::DeviceKey;
use crate::topics::{AckStatus, ClipAck};
use crate::trust::{TrustError, TrustedKeys, sign_value};

/// What the box sealed, to hold a receipt against.
#[derive(Debug, Clone, Copy)]
pub struct Sealed<'a> {
    pub site: &'a str,
    pub device: &'a str,
    pub clip: &'a str,
    pub bytes: u64,
    pub sha256: &'a str,
    pub manifest_signature: &'a str,
}

/// Why a receipt was not accepted. `Display` is the reason logged and sent upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("unreadable receipt: {0}")]
    Parse(String),
    #[error("{0}")]
    Trust(#[from] TrustError),
    #[error("receipt is for {field} {found:?}, this box sealed {expected:?}")]
    Mismatch {
        field: &'static str,
        expected: String,
        found: String,
    },
    #[error("a verified receipt must name the clip's {0}")]
    Missing(&'static str),
}

impl ClipAck {
    /// The receipt's payload, signed by `key` (the control centre's).
    pub fn signed(&self, key: &DeviceKey) -> Vec<u8> {
        sign_value(
            &ClipAck {
                signature: None,
                ..self.clone()
            },
            key,
        )
    }
}

/// A receipt that passed [`check`]: the parsed ack and the key that signed it.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub ack: ClipAck,
    pub key_id: String,
}

/// Checks a receipt for `sealed` (site, device and clip always; for `verified` also the
/// size, SHA-256 and seal). `sealed: None` means the box holds no such sealed clip: then
/// nothing about its bytes can match, and only the signature and names are checked.
pub fn check(
    payload: &[u8],
    trusted: &TrustedKeys,
    site: &str,
    device: &str,
    clip: &str,
    sealed: Option<&Sealed<'_>>,
) -> Result<Accepted, ReceiptError> {
    let ack: ClipAck =
        serde_json::from_slice(payload).map_err(|e| ReceiptError::Parse(e.to_string()))?;
    let key_id = trusted.verify(payload)?;
    same("site_id", site, &ack.site_id)?;
    same("device_id", device, &ack.device_id)?;
    same("clip", clip, &ack.clip)?;
    if ack.status == AckStatus::Verified {
        let s = sealed.ok_or_else(|| ReceiptError::Mismatch {
            field: "clip",
            expected: "a sealed clip".into(),
            found: clip.into(),
        })?;
        let bytes = ack.bytes.ok_or(ReceiptError::Missing("bytes"))?;
        same("bytes", &s.bytes.to_string(), &bytes.to_string())?;
        let sha = ack
            .sha256
            .as_deref()
            .ok_or(ReceiptError::Missing("sha256"))?;
        same("sha256", s.sha256, sha)?;
        let seal = ack
            .manifest_signature
            .as_deref()
            .ok_or(ReceiptError::Missing("manifest_signature"))?;
        same("manifest_signature", s.manifest_signature, seal)?;
    }
    Ok(Accepted { ack, key_id })
}

fn same(field: &'static str, expected: &str, found: &str) -> Result<(), ReceiptError> {
    if expected == found {
        Ok(())
    } else {
        Err(ReceiptError::Mismatch {
            field,
            expected: expected.into(),
            found: found.into(),
        })
    }
}

/// Where a clip's accepted receipt is kept: `x.mp4` → `x.mp4.receipt.json`, beside the
/// manifest (`x.mp4.manifest.json`).
pub fn receipt_path(clip: &std::path::Path) -> std::path::PathBuf {
    let mut p = clip.as_os_str().to_owned();
    p.push(".receipt.json");
    p.into()
}

/// What an offline check of a kept receipt found.
#[derive(Debug, Clone)]
pub struct ReceiptReport {
    pub ack: ClipAck,
    pub key_id: String,
    /// True when checked against a key given by the caller, not only the embedded one.
    pub key_pinned: bool,
}

/// Checks a kept `verified` receipt against an (already verified) manifest: signed by
/// `centre_key` (base64) if given, else by the key it embeds; about the manifest's site,
/// device, bytes and seal.
pub fn check_kept(
    payload: &[u8],
    manifest: &crate::Manifest,
    centre_key: Option<&str>,
) -> Result<ReceiptReport, ReceiptError> {
    let ack: ClipAck =
        serde_json::from_slice(payload).map_err(|e| ReceiptError::Parse(e.to_string()))?;
    let seal = manifest
        .signature
        .as_ref()
        .map(|s| s.value.as_str())
        .unwrap_or("");
    check_kept_sealed(
        payload,
        &Sealed {
            site: &manifest.site_id,
            device: &manifest.device_id,
            clip: &ack.clip,
            bytes: manifest.file.size,
            sha256: &manifest.file.sha256,
            manifest_signature: seal,
        },
        centre_key,
    )
}

/// Checks a kept `verified` receipt against what it must confirm: a clip's seal, or an
/// uploaded package (`clip` its id, `bytes` and `sha256` its zip's, the seal its manifest's
/// signature value). Signed by `centre_key` (base64) if given, else the key it embeds.
pub fn check_kept_sealed(
    payload: &[u8],
    sealed: &Sealed<'_>,
    centre_key: Option<&str>,
) -> Result<ReceiptReport, ReceiptError> {
    let (_, block) = crate::trust::split_signed(payload)?;
    let key = centre_key.unwrap_or(&block.public_key);
    let trusted = TrustedKeys::parse(&[key])
        .map_err(|(_, e)| ReceiptError::Trust(TrustError::Malformed(format!("key: {e}"))))?;
    let ack: ClipAck =
        serde_json::from_slice(payload).map_err(|e| ReceiptError::Parse(e.to_string()))?;
    if ack.status != AckStatus::Verified {
        return Err(ReceiptError::Mismatch {
            field: "status",
            expected: "verified".into(),
            found: format!("{:?}", ack.status).to_lowercase(),
        });
    }
    let a = check(
        payload,
        &trusted,
        sealed.site,
        sealed.device,
        sealed.clip,
        Some(sealed),
    )?;
    Ok(ReceiptReport {
        ack: a.ack,
        key_id: a.key_id,
        key_pinned: centre_key.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topics::SCHEMA_CLIP_ACK;

    fn centre() -> DeviceKey {
        DeviceKey::from_seed([7; 32])
    }

    fn trusted() -> TrustedKeys {
        TrustedKeys::parse(&[centre().public_key_b64()]).unwrap()
    }

    fn verified() -> ClipAck {
        ClipAck {
            schema: SCHEMA_CLIP_ACK.into(),
            site_id: "s1".into(),
            device_id: "d1".into(),
            clip: "c1".into(),
            status: AckStatus::Verified,
            bytes: Some(10),
            sha256: Some("ab".into()),
            manifest_signature: Some("SIG".into()),
            resend_from: None,
            need_manifest: false,
            reason: None,
            at: "2026-12-01T00:00:00.000Z".into(),
            signature: None,
        }
    }

    const SEALED: Sealed<'static> = Sealed {
        site: "s1",
        device: "d1",
        clip: "c1",
        bytes: 10,
        sha256: "ab",
        manifest_signature: "SIG",
    };

    fn run(a: &ClipAck, key: &DeviceKey) -> Result<Accepted, ReceiptError> {
        check(&a.signed(key), &trusted(), "s1", "d1", "c1", Some(&SEALED))
    }

    #[test]
    fn a_true_receipt_is_accepted() {
        let r = run(&verified(), &centre()).unwrap();
        assert_eq!(r.key_id, centre().key_id());
        assert!(r.ack.signature.is_some());
    }

    #[test]
    fn every_forgery_is_named() {
        let other = DeviceKey::from_seed([8; 32]);
        assert!(matches!(
            run(&verified(), &other),
            Err(ReceiptError::Trust(TrustError::UnknownKey(_)))
        ));
        let unsigned = serde_json::to_vec(&verified()).unwrap();
        assert_eq!(
            check(&unsigned, &trusted(), "s1", "d1", "c1", Some(&SEALED)).unwrap_err(),
            ReceiptError::Trust(TrustError::Unsigned)
        );
        type Forge = fn(&mut ClipAck);
        let cases: [(&str, Forge); 5] = [
            ("sha256", |a| a.sha256 = Some("cd".into())),
            ("bytes", |a| a.bytes = Some(11)),
            ("device_id", |a| a.device_id = "d2".into()),
            ("site_id", |a| a.site_id = "s2".into()),
            ("manifest_signature", |a| {
                a.manifest_signature = Some("OLD".into())
            }),
        ];
        for (field, f) in cases {
            let mut a = verified();
            f(&mut a);
            match run(&a, &centre()) {
                Err(ReceiptError::Mismatch { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        let mut a = verified();
        a.sha256 = None;
        assert_eq!(
            run(&a, &centre()).unwrap_err(),
            ReceiptError::Missing("sha256")
        );
        // A verified receipt for a clip this box never sealed.
        let p = verified().signed(&centre());
        assert!(check(&p, &trusted(), "s1", "d1", "c1", None).is_err());
    }

    #[test]
    fn a_kept_receipt_is_checked_offline_against_what_it_confirms() {
        let p = verified().signed(&centre());
        let k = centre().public_key_b64();
        let r = check_kept_sealed(&p, &SEALED, Some(&k)).unwrap();
        assert!(r.key_pinned);
        assert!(check_kept_sealed(&p, &SEALED, None).is_ok());
        let other = Sealed {
            sha256: "cd",
            ..SEALED
        };
        assert!(matches!(
            check_kept_sealed(&p, &other, None),
            Err(ReceiptError::Mismatch {
                field: "sha256",
                ..
            })
        ));
        let stranger = DeviceKey::from_seed([9; 32]).public_key_b64();
        assert!(check_kept_sealed(&p, &SEALED, Some(&stranger)).is_err());
    }

    #[test]
    fn steering_receipts_need_a_signature_but_no_bytes() {
        let mut a = verified();
        a.status = AckStatus::Incomplete;
        a.bytes = None;
        a.sha256 = None;
        a.manifest_signature = None;
        a.resend_from = Some(4);
        assert!(check(&a.signed(&centre()), &trusted(), "s1", "d1", "c1", None).is_ok());
        let unsigned = serde_json::to_vec(&a).unwrap();
        assert!(check(&unsigned, &trusted(), "s1", "d1", "c1", None).is_err());
    }
}
