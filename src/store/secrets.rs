//! Encryption at rest for API keys: ChaCha20-Poly1305 under one 32-byte secret key.
//!
//! The key comes from `GROOVE_DESTINATION_SECRET_KEY` (base64) when set, otherwise from `<data_dir>/secret.key`,
//! generated on first start. Losing the key makes every stored API key unreadable, so the file is created once,
//! never overwritten, and a damaged file is an error rather than a reason to make a new one.

use std::fmt;
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use rand::rngs::OsRng;
use rand::TryRngCore;

use super::data_dir::create_private_dir;
use super::error::{Context, StoreError};

/// Environment variable holding the base64 secret key; it takes precedence over the key file.
pub const SECRET_KEY_ENV: &str = "GROOVE_DESTINATION_SECRET_KEY";
/// Name of the generated key file inside the data directory.
pub const SECRET_KEY_FILE: &str = "secret.key";

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

// People paste keys from `openssl rand -base64 32` (padded, standard alphabet) as often as from URL-safe tools;
// accepting both costs nothing since the length check follows.
const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);
const CANONICAL: GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Seals and opens small secrets (API keys) with a key that never leaves this type: no accessor, and `Debug`
/// prints nothing of it. The cipher wipes its key copy on drop.
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretBox").finish_non_exhaustive()
    }
}

impl SecretBox {
    /// The key from the value of [`SECRET_KEY_ENV`]: base64 (standard or URL-safe, padding optional) of
    /// exactly 32 bytes; surrounding whitespace is ignored.
    pub fn from_encoded(encoded: &str) -> Result<Self, StoreError> {
        Self::parse(encoded, SECRET_KEY_ENV)
    }

    /// The key from `<data_dir>/secret.key`, generating the file (mode 0600) if it does not exist yet.
    ///
    /// Refuses a key file that group or others may read or write: the key would already be exposed, and
    /// carrying on would hide that. Creates `data_dir` (mode 0700) if missing.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, StoreError> {
        create_private_dir(data_dir)?;
        let path = data_dir.join(SECRET_KEY_FILE);
        // Two attempts: if another process creates the file between our read and our create, read theirs.
        for _ in 0..2 {
            match read_key_file(&path)? {
                Some(secrets) => return Ok(secrets),
                None => {
                    if let Some(secrets) = create_key_file(&path)? {
                        return Ok(secrets);
                    }
                }
            }
        }
        Err(StoreError::SecretKey {
            reason: format!(
                "{} appeared and vanished while being created",
                path.display()
            ),
        })
    }

    /// A fresh random key that lives only in memory; for tests and throwaway stores.
    pub fn generate() -> Result<Self, StoreError> {
        let mut key = random_key()?;
        let secrets = Self::from_key(&key);
        wipe(&mut key);
        Ok(secrets)
    }

    fn from_key(key: &[u8; KEY_LEN]) -> Self {
        SecretBox {
            cipher: ChaCha20Poly1305::new(key.into()),
        }
    }

    fn parse(encoded: &str, source: &str) -> Result<Self, StoreError> {
        let text = encoded.trim();
        let mut bytes = STANDARD
            .decode(text)
            .or_else(|_| URL_SAFE.decode(text))
            // The decoder's message quotes the offending character: part of the key, so it is dropped.
            .map_err(|_| StoreError::SecretKey {
                reason: format!("{source} is not valid base64"),
            })?;
        let result = match <[u8; KEY_LEN]>::try_from(bytes.as_slice()) {
            Ok(mut key) => {
                let secrets = Self::from_key(&key);
                wipe(&mut key);
                Ok(secrets)
            }
            Err(_) => Err(StoreError::SecretKey {
                reason: format!(
                    "{source} must be the base64 encoding of exactly {KEY_LEN} bytes, not {}",
                    bytes.len()
                ),
            }),
        };
        wipe(&mut bytes);
        result
    }

    /// Encrypts `plaintext` under a fresh random nonce; the result is `nonce || ciphertext+tag`. `associated`
    /// is authenticated but not stored: the same bytes must be given to [`SecretBox::open`].
    pub(crate) fn seal(&self, associated: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng
            .try_fill_bytes(&mut nonce)
            .context(|| "drawing a random nonce".to_string())?;
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: associated,
                },
            )
            .map_err(|_| StoreError::internal("encrypting a secret", "aead failure"))?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// The plaintext of a [`SecretBox::seal`] output, or `None` if it was sealed under another key, with
    /// other associated data, or altered: authentication fails before any plaintext is produced.
    pub(crate) fn open(&self, associated: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: associated,
                },
            )
            .ok()
    }
}

/// The key in `path`, or `None` if there is no such file.
fn read_key_file(path: &Path) -> Result<Option<SecretBox>, StoreError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(StoreError::internal(
                format!("reading {}", path.display()),
                err,
            ))
        }
    };
    let parsed =
        check_permissions(path).and_then(|()| SecretBox::parse(&text, &path.display().to_string()));
    let mut bytes = text.into_bytes();
    wipe(&mut bytes);
    parsed.map(Some)
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)
        .context(|| format!("reading the permissions of {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(StoreError::SecretKey {
            reason: format!(
                "{} is accessible to group or others (mode {:04o}); run `chmod 600` on it or pass the key in {}",
                path.display(),
                mode & 0o7777,
                SECRET_KEY_ENV
            ),
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// Writes a new random key to `path`; `None` if the file already exists (someone else won the race).
fn create_key_file(path: &Path) -> Result<Option<SecretBox>, StoreError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == ErrorKind::AlreadyExists => return Ok(None),
        Err(err) => {
            return Err(StoreError::internal(
                format!("creating {}", path.display()),
                err,
            ))
        }
    };
    let mut key = random_key()?;
    let mut line = format!("{}\n", CANONICAL.encode(key)).into_bytes();
    let secrets = SecretBox::from_key(&key);
    wipe(&mut key);
    let written = file.write_all(&line).and_then(|()| file.sync_all());
    wipe(&mut line);
    written.context(|| format!("writing {}", path.display()))?;
    sync_parent(path)?;
    tracing::info!(
        path = %path.display(),
        "generated a new secret key for stored API keys; back it up, without it they cannot be decrypted"
    );
    Ok(Some(secrets))
}

/// Makes the new directory entry durable: a crash must not lose the key while keeping data encrypted with it.
fn sync_parent(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        let parent: PathBuf = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::File::open(&parent)
            .and_then(|dir| dir.sync_all())
            .context(|| format!("syncing directory {}", parent.display()))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn random_key() -> Result<[u8; KEY_LEN], StoreError> {
    let mut key = [0u8; KEY_LEN];
    OsRng
        .try_fill_bytes(&mut key)
        .context(|| "drawing a random secret key".to_string())?;
    Ok(key)
}

/// Best-effort scrubbing of transient key copies; `black_box` keeps the compiler from eliding the dead store.
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded_key(byte: u8) -> String {
        CANONICAL.encode([byte; KEY_LEN])
    }

    #[test]
    fn seal_then_open_round_trips() {
        let secrets = SecretBox::from_encoded(&encoded_key(7)).unwrap();
        let sealed = secrets.seal(b"credentials/a", b"groove-key").unwrap();
        assert_eq!(
            secrets.open(b"credentials/a", &sealed).as_deref(),
            Some(&b"groove-key"[..])
        );
    }

    #[test]
    fn nonces_are_fresh_per_value() {
        let secrets = SecretBox::generate().unwrap();
        let a = secrets.seal(b"x", b"same").unwrap();
        let b = secrets.seal(b"x", b"same").unwrap();
        assert_ne!(a, b);
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
    }

    #[test]
    fn wrong_key_other_id_or_tampering_fail_to_open() {
        let secrets = SecretBox::from_encoded(&encoded_key(1)).unwrap();
        let other = SecretBox::from_encoded(&encoded_key(2)).unwrap();
        let sealed = secrets.seal(b"credentials/a", b"groove-key").unwrap();
        assert_eq!(other.open(b"credentials/a", &sealed), None);
        assert_eq!(secrets.open(b"credentials/b", &sealed), None);
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(secrets.open(b"credentials/a", &flipped), None);
        assert_eq!(secrets.open(b"credentials/a", &sealed[..5]), None);
    }

    #[test]
    fn encoded_key_accepts_common_spellings() {
        let standard = CANONICAL.encode([0xfb; KEY_LEN]);
        let unpadded = standard.trim_end_matches('=').to_string();
        let url_safe = standard.replace('+', "-").replace('/', "_");
        for text in [
            standard.clone(),
            unpadded,
            url_safe,
            format!("  {standard}\n"),
        ] {
            assert!(SecretBox::from_encoded(&text).is_ok(), "{text:?}");
        }
    }

    #[test]
    fn bad_encoded_keys_name_the_variable_but_not_the_value() {
        let short = CANONICAL.encode([9u8; 31]);
        let err = SecretBox::from_encoded(&short).unwrap_err().to_string();
        assert!(err.contains(SECRET_KEY_ENV), "{err}");
        assert!(err.contains("exactly 32 bytes, not 31"), "{err}");
        assert!(!err.contains(&short), "{err}");

        let err = SecretBox::from_encoded("not*base64!")
            .unwrap_err()
            .to_string();
        assert!(err.contains(SECRET_KEY_ENV), "{err}");
        assert!(!err.contains('*'), "{err}");
    }

    #[test]
    fn debug_shows_no_key_material() {
        let secrets = SecretBox::from_encoded(&encoded_key(0x41)).unwrap();
        assert_eq!(format!("{secrets:?}"), "SecretBox { .. }");
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("nested").join("data");
        let first = SecretBox::load_or_create(&data_dir).unwrap();
        let path = data_dir.join(SECRET_KEY_FILE);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(&data_dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);

        let contents = fs::read_to_string(&path).unwrap();
        let second = SecretBox::load_or_create(&data_dir).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            contents,
            "never rewritten"
        );
        let sealed = first.seal(b"id", b"value").unwrap();
        assert_eq!(second.open(b"id", &sealed).as_deref(), Some(&b"value"[..]));
        // The file holds the same spelling the environment variable takes.
        let from_env = SecretBox::from_encoded(&contents).unwrap();
        assert!(from_env.open(b"id", &sealed).is_some());
    }

    #[cfg(unix)]
    #[test]
    fn exposed_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        SecretBox::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(SECRET_KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = SecretBox::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode 0644"), "{err}");
        assert!(err.contains(SECRET_KEY_ENV), "{err}");
    }

    #[test]
    fn damaged_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        SecretBox::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(SECRET_KEY_FILE);
        fs::write(&path, "c2hvcnQ=\n").unwrap();
        let err = SecretBox::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains(SECRET_KEY_FILE), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "c2hvcnQ=\n");
    }
}
