//! The device's Ed25519 signing key.
//!
//! Files in the key directory:
//! - `device_ed25519.key`: the 32-byte secret seed, raw, mode 0600. Never leaves the box.
//! - `device_ed25519.pub`: the 32-byte public key, standard base64 plus a newline. This is what
//!   the control centre records for the device and what [`parse_public_key`] reads.

use std::fmt;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{SECRET_KEY_LENGTH, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

use storeguard_base::fs::{io_context, write_atomic};

/// File name of the secret key inside the key directory.
pub const PRIVATE_KEY_FILE: &str = "device_ed25519.key";
/// File name of the public key inside the key directory.
pub const PUBLIC_KEY_FILE: &str = "device_ed25519.pub";

/// Why the device key could not be loaded, created or parsed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("device key")]
    Io(#[from] io::Error),
    #[error(
        "device key {path} has mode {mode:04o}: group/other may access it; \
         run `chmod 600 {path}` after checking nobody copied it"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "device key {path} is {found} bytes, expected exactly {SECRET_KEY_LENGTH} (raw Ed25519 seed)"
    )]
    Length { path: PathBuf, found: u64 },
    #[error("device key {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("no randomness from the OS for the device key: {0}")]
    Random(getrandom::Error),
    #[error("public key is not valid base64")]
    PublicKeyBase64(#[from] base64::DecodeError),
    #[error("public key is {found} bytes, expected 32")]
    PublicKeyLength { found: usize },
    #[error("public key is not a valid Ed25519 point")]
    PublicKeyInvalid,
}

/// The device's Ed25519 key pair. `Debug` shows only the key id.
pub struct DeviceKey {
    signing: SigningKey,
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKey")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

impl DeviceKey {
    /// Loads the key from `dir`, generating and storing it on first start.
    ///
    /// The secret file must be a regular file of exactly 32 bytes without group/other
    /// permissions; otherwise this refuses with an error naming the path. A missing or stale
    /// public key file is (re)written from the secret.
    pub fn load_or_create(dir: &Path) -> Result<DeviceKey, KeyError> {
        Self::load_or_create_named(dir, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE)
    }

    /// As [`DeviceKey::load_or_create`], with other file names: the control centre keeps
    /// its receipt-signing key the same way (`centre_ed25519.key` / `.pub`).
    pub fn load_or_create_named(
        dir: &Path,
        secret_file: &str,
        public_file: &str,
    ) -> Result<DeviceKey, KeyError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_context(e, "create key directory", dir))?;
        let path = dir.join(secret_file);
        let key = match std::fs::symlink_metadata(&path) {
            Ok(_) => Self::load(&path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut seed = [0u8; SECRET_KEY_LENGTH];
                getrandom::fill(&mut seed).map_err(KeyError::Random)?;
                let key = DeviceKey {
                    signing: SigningKey::from_bytes(&seed),
                };
                let written = write_atomic(&path, &seed, 0o600);
                seed.fill(0);
                written?;
                tracing::info!(path = %path.display(), key_id = %key.key_id(), "created signing key");
                key
            }
            Err(e) => return Err(io_context(e, "stat", &path).into()),
        };
        key.ensure_public_file(&dir.join(public_file))?;
        Ok(key)
    }

    /// A key from a known seed (tests and fixtures; a real key comes from the OS RNG).
    pub fn from_seed(seed: [u8; SECRET_KEY_LENGTH]) -> DeviceKey {
        DeviceKey {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    fn load(path: &Path) -> Result<DeviceKey, KeyError> {
        let meta = std::fs::symlink_metadata(path).map_err(|e| io_context(e, "stat", path))?;
        if !meta.file_type().is_file() {
            return Err(KeyError::NotAFile { path: path.into() });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.into(),
                mode,
            });
        }
        if meta.size() != SECRET_KEY_LENGTH as u64 {
            return Err(KeyError::Length {
                path: path.into(),
                found: meta.size(),
            });
        }
        let mut bytes = std::fs::read(path).map_err(|e| io_context(e, "read", path))?;
        let seed: Result<[u8; SECRET_KEY_LENGTH], _> = bytes.as_slice().try_into();
        let found = bytes.len() as u64;
        bytes.fill(0);
        let mut seed = seed.map_err(|_| KeyError::Length {
            path: path.into(),
            found,
        })?;
        let signing = SigningKey::from_bytes(&seed);
        seed.fill(0);
        Ok(DeviceKey { signing })
    }

    fn ensure_public_file(&self, path: &Path) -> Result<(), KeyError> {
        let want = format!("{}\n", self.public_key_b64());
        match std::fs::read_to_string(path) {
            Ok(have) if have == want => return Ok(()),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "public key file did not match the secret key; rewriting it")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_context(e, "read", path).into()),
        }
        write_atomic(path, want.as_bytes(), 0o644)?;
        Ok(())
    }

    /// The public key, standard base64 of the 32 raw bytes.
    pub fn public_key_b64(&self) -> String {
        B64.encode(self.signing.verifying_key().as_bytes())
    }

    /// The public key as an ed25519-dalek verifying key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Short fingerprint: the first 16 hex digits of SHA-256 over the 32 public key bytes.
    pub fn key_id(&self) -> String {
        key_id_of(&self.signing.verifying_key())
    }

    /// Ed25519 signature (RFC 8032, pure, no prehash) over `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }
}

/// The key id (see [`DeviceKey::key_id`]) of any public key.
pub fn key_id_of(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..8])
}

/// Parses a public key as written in `device_ed25519.pub` or a manifest: standard base64 of
/// the 32 raw bytes; surrounding whitespace is ignored.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = B64.decode(text.trim())?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::PublicKeyLength { found: bytes.len() })?;
    VerifyingKey::from_bytes(&arr).map_err(|_| KeyError::PublicKeyInvalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier as _};

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("storeguard-key-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn creates_then_reloads_the_same_key() {
        let dir = temp_dir("create");
        let a = DeviceKey::load_or_create(&dir).unwrap();
        let meta = std::fs::metadata(dir.join(PRIVATE_KEY_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        let pub_text = std::fs::read_to_string(dir.join(PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(pub_text.trim(), a.public_key_b64());
        assert!(!dir.join(format!("{PRIVATE_KEY_FILE}.tmp")).exists());

        let b = DeviceKey::load_or_create(&dir).unwrap();
        assert_eq!(a.public_key_b64(), b.public_key_b64());
        assert_eq!(a.key_id(), b.key_id());
        assert_eq!(a.key_id().len(), 16);

        let sig = Signature::from_bytes(&b.sign(b"hello"));
        let vk = parse_public_key(&pub_text).unwrap();
        vk.verify(b"hello", &sig).unwrap();
        assert!(vk.verify(b"hellO", &sig).is_err());
        assert_eq!(key_id_of(&vk), a.key_id());
        assert!(!format!("{a:?}").contains(&hex::encode(a.signing.to_bytes())));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn two_devices_get_different_keys() {
        let (d1, d2) = (temp_dir("dev1"), temp_dir("dev2"));
        let a = DeviceKey::load_or_create(&d1).unwrap();
        let b = DeviceKey::load_or_create(&d2).unwrap();
        assert_ne!(a.public_key_b64(), b.public_key_b64());
        std::fs::remove_dir_all(&d1).unwrap();
        std::fs::remove_dir_all(&d2).unwrap();
    }

    #[test]
    fn refuses_group_or_world_readable_key() {
        let dir = temp_dir("perm");
        DeviceKey::load_or_create(&dir).unwrap();
        let path = dir.join(PRIVATE_KEY_FILE);
        for mode in [0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = DeviceKey::load_or_create(&dir).unwrap_err();
            assert!(
                matches!(&err, KeyError::Permissions { path: p, mode: m } if *p == path && *m == mode),
                "{err}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        DeviceKey::load_or_create(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_wrong_length_key() {
        let dir = temp_dir("len");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(PRIVATE_KEY_FILE);
        std::fs::write(&path, [7u8; 33]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = DeviceKey::load_or_create(&dir).unwrap_err();
        assert!(matches!(err, KeyError::Length { found: 33, .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rewrites_a_stale_public_key_file() {
        let dir = temp_dir("stale");
        let a = DeviceKey::load_or_create(&dir).unwrap();
        std::fs::write(dir.join(PUBLIC_KEY_FILE), "garbage\n").unwrap();
        DeviceKey::load_or_create(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join(PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(text.trim(), a.public_key_b64());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parse_public_key_rejects_bad_input() {
        assert!(matches!(
            parse_public_key("not base64!"),
            Err(KeyError::PublicKeyBase64(_))
        ));
        assert!(matches!(
            parse_public_key(&B64.encode([1u8; 31])),
            Err(KeyError::PublicKeyLength { found: 31 })
        ));
    }
}
