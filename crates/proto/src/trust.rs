//! Who the box believes: the control-centre keys pinned in its config, and signed JSON.
//!
//! Everything the control centre tells a box that changes what the box keeps or does (clip
//! receipts now; desired config and commands later) is a JSON object signed with Ed25519.
//! The signature is the object's **last** member, `"signature":{alg, key_id, public_key,
//! value}`, and it covers the payload's exact bytes with that member removed: `{...}`
//! without `,"signature":{...}`. Verifying the bytes as received, rather than a
//! re-serialisation, keeps fields a newer sender adds covered, and is what the openssl
//! recipe in docs/evidence.md checks.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, VerifyingKey};

use crate::keys::{DeviceKey, key_id_of, parse_public_key};
use crate::manifest::{SIGNATURE_ALG, SignatureBlock};

const MEMBER: &[u8] = b",\"signature\":";

/// Why a signed payload is not believed. Each names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("not signed (no trailing \"signature\" member)")]
    Unsigned,
    #[error("signature block: {0}")]
    Malformed(String),
    #[error("signature algorithm {0:?} (only \"ed25519\" is accepted)")]
    Algorithm(String),
    #[error("signed by key {0}, which this box does not trust (trust.control_centre_keys)")]
    UnknownKey(String),
    #[error("signature by key {0} does not match the payload")]
    BadSignature(String),
}

/// One pinned key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    pub key_id: String,
    pub key: VerifyingKey,
}

/// The control-centre public keys a box trusts. Shared by every signed inbound message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: Vec<TrustedKey>,
}

impl TrustedKeys {
    /// Parses keys as written in `.pub` files (base64 of the 32 raw bytes). The error
    /// carries the index of the first bad key, for a `field[i]` path.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<TrustedKeys, (usize, String)> {
        let mut keys = Vec::with_capacity(list.len());
        for (i, text) in list.iter().enumerate() {
            let key = parse_public_key(text.as_ref()).map_err(|e| (i, e.to_string()))?;
            let key_id = key_id_of(&key);
            if !keys.iter().any(|k: &TrustedKey| k.key_id == key_id) {
                keys.push(TrustedKey { key_id, key });
            }
        }
        Ok(TrustedKeys { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.key_id.as_str())
    }

    /// Checks `payload` (signed as this module describes) and returns the signing key id.
    pub fn verify(&self, payload: &[u8]) -> Result<String, TrustError> {
        let (signed, block) = split_signed(payload)?;
        if block.alg != SIGNATURE_ALG {
            return Err(TrustError::Algorithm(block.alg));
        }
        let trusted = self
            .keys
            .iter()
            .find(|k| k.key_id == block.key_id)
            .ok_or_else(|| TrustError::UnknownKey(block.key_id.clone()))?;
        // The embedded key is for offline readers; the box checks against its own pin.
        if !block.public_key.is_empty() && block.public_key != B64.encode(trusted.key.as_bytes()) {
            return Err(TrustError::Malformed(format!(
                "public_key does not belong to key_id {}",
                block.key_id
            )));
        }
        let sig = decode_signature(&block.value)?;
        trusted
            .key
            .verify_strict(&signed, &sig)
            .map_err(|_| TrustError::BadSignature(block.key_id.clone()))?;
        Ok(block.key_id)
    }
}

fn decode_signature(value: &str) -> Result<Signature, TrustError> {
    let bytes = B64
        .decode(value.trim())
        .map_err(|e| TrustError::Malformed(format!("value: {e}")))?;
    let arr = <[u8; 64]>::try_from(bytes.as_slice())
        .map_err(|_| TrustError::Malformed(format!("value: {} bytes, expected 64", bytes.len())))?;
    Ok(Signature::from_bytes(&arr))
}

/// The signed bytes and the signature block of a payload.
pub fn split_signed(payload: &[u8]) -> Result<(Vec<u8>, SignatureBlock), TrustError> {
    let at = payload
        .windows(MEMBER.len())
        .rposition(|w| w == MEMBER)
        .ok_or(TrustError::Unsigned)?;
    let rest = &payload[at + MEMBER.len()..];
    let Some(block) = rest.strip_suffix(b"}") else {
        return Err(TrustError::Malformed(
            "the payload must end with the signature member and '}'".into(),
        ));
    };
    let block: SignatureBlock =
        serde_json::from_slice(block).map_err(|e| TrustError::Malformed(e.to_string()))?;
    let mut signed = payload[..at].to_vec();
    signed.push(b'}');
    Ok((signed, block))
}

/// Appends a signature by `key` to a compact JSON object (`{...}`), as [`TrustedKeys::verify`]
/// expects. Panics if `unsigned` is not an object's bytes: callers serialise a struct.
pub fn sign_json(unsigned: &[u8], key: &DeviceKey) -> Vec<u8> {
    assert!(
        unsigned.first() == Some(&b'{') && unsigned.last() == Some(&b'}') && unsigned.len() > 2,
        "sign_json needs a non-empty compact JSON object"
    );
    let block = SignatureBlock {
        alg: SIGNATURE_ALG.into(),
        key_id: key.key_id(),
        public_key: key.public_key_b64(),
        value: B64.encode(key.sign(unsigned)),
    };
    let mut out = unsigned[..unsigned.len() - 1].to_vec();
    out.extend_from_slice(MEMBER);
    out.extend_from_slice(&serde_json::to_vec(&block).expect("block serializes"));
    out.push(b'}');
    out
}

/// A payload struct (its `signature` left out), serialised compactly and signed.
pub fn sign_value<T: serde::Serialize>(unsigned: &T, key: &DeviceKey) -> Vec<u8> {
    // Plain structs of strings and numbers: serialisation cannot fail.
    sign_json(
        &serde_json::to_vec(unsigned).expect("payload serializes"),
        key,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> DeviceKey {
        DeviceKey::from_seed([n; 32])
    }

    fn trusted(keys: &[&DeviceKey]) -> TrustedKeys {
        let list: Vec<String> = keys.iter().map(|k| k.public_key_b64()).collect();
        TrustedKeys::parse(&list).unwrap()
    }

    #[test]
    fn signed_json_verifies_with_a_trusted_key_only() {
        let (a, b) = (key(1), key(2));
        let p = sign_json(br#"{"x":1,"y":"z"}"#, &a);
        assert!(p.ends_with(b"}") && p.starts_with(br#"{"x":1,"y":"z","signature":{"#));
        assert_eq!(trusted(&[&b, &a]).verify(&p).unwrap(), a.key_id());
        assert_eq!(
            trusted(&[&b]).verify(&p),
            Err(TrustError::UnknownKey(a.key_id()))
        );
        assert!(TrustedKeys::default().verify(&p).is_err());
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let a = key(1);
        let t = trusted(&[&a]);
        let p = sign_json(br#"{"status":"failed","sha256":"00"}"#, &a);
        let forged = String::from_utf8(p.clone())
            .unwrap()
            .replace("failed", "verified");
        assert_eq!(
            t.verify(forged.as_bytes()),
            Err(TrustError::BadSignature(a.key_id()))
        );
        assert_eq!(
            t.verify(br#"{"status":"verified"}"#),
            Err(TrustError::Unsigned)
        );
        let mut trailing = p.clone();
        trailing.push(b'\n');
        assert!(matches!(t.verify(&trailing), Err(TrustError::Malformed(_))));
        // Another key's signature block pasted with this key's id.
        let other = sign_json(br#"{"status":"failed","sha256":"00"}"#, &key(3));
        let pasted = String::from_utf8(other)
            .unwrap()
            .replace(&key(3).key_id(), &a.key_id());
        assert!(t.verify(pasted.as_bytes()).is_err());
    }

    #[test]
    fn bad_keys_are_named_by_index() {
        let good = key(1).public_key_b64();
        assert_eq!(TrustedKeys::parse(&[good.as_str(), "!!"]).unwrap_err().0, 1);
        let t = TrustedKeys::parse(&[good.clone(), format!(" {good}\n")]).unwrap();
        assert_eq!(t.ids().count(), 1);
    }
}
