//! Key strings (`tg-<id>-<secret>`), their hashes, and new keys.
//!
//! The public id is what logs, spend records and metrics show; the secret is
//! never stored: only [`KeyHash`], a SHA-256 over a domain tag, the id and the
//! secret (binding the hash to its id, so a stored hash cannot be moved to
//! another key), compared in constant time. The secret of a generated key is
//! 32 random base62 characters (about 190 bits), so an unsalted fast hash
//! is enough: there is nothing to guess. Hand-written keys from the
//! environment must have at least 16 characters of secret.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, Reason};

/// Every key starts with this.
pub const PREFIX: &str = "tg-";
/// Length of a generated public id.
pub const ID_LEN: usize = 12;
/// Length of a generated secret (base62: about 190 bits).
pub const SECRET_LEN: usize = 32;
/// The shortest secret accepted (for keys written by hand into the environment).
pub const MIN_SECRET_LEN: usize = 16;
const MAX_ID_LEN: usize = 64;
const MAX_SECRET_LEN: usize = 256;

/// The SHA-256 of a key's id and secret. Its `Debug` shows nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// The hash of the key `tg-<id>-<secret>`: SHA-256 of `tgk1:<id>:<secret>`
    /// (one 64-byte block for a generated key, so one compression).
    pub fn of(id: &str, secret: &str) -> Self {
        let digest = Sha256::new()
            .chain_update(b"tgk1:")
            .chain_update(id.as_bytes())
            .chain_update(b":")
            .chain_update(secret.as_bytes())
            .finalize();
        let mut out = [0u8; 32];
        out.copy_from_slice(&digest);
        KeyHash(out)
    }

    /// Whether two hashes are equal, in time independent of where they differ.
    pub fn matches(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// The raw bytes, for a store.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// From raw bytes read back from a store.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(KeyHash)
    }

    /// Lowercase hex, for tests that check it never leaves the gateway.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(..)")
    }
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether `id` can be a key's public id: 1 to 64 of `A-Z a-z 0-9 _`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(is_id_byte)
}

/// Splits `tg-<id>-<secret>` into id and secret, or says what is wrong
/// (401 `malformed_key`) without repeating the key.
pub fn parse(key: &str) -> Result<(&str, &str), Error> {
    let malformed = |why: &str| {
        Error::new(
            Reason::MalformedKey,
            format!(
                "The API key is not a tollgate key ({why}); keys look like `tg-<id>-<secret>`. Check that the whole key was copied."
            ),
        )
    };
    let Some(rest) = key.strip_prefix(PREFIX) else {
        return Err(malformed("it does not start with `tg-`"));
    };
    let Some((id, secret)) = rest.split_once('-') else {
        return Err(malformed("it has no secret part"));
    };
    if !valid_id(id) {
        return Err(malformed(
            "its id part is empty, too long or has odd characters",
        ));
    }
    if secret.len() < MIN_SECRET_LEN
        || secret.len() > MAX_SECRET_LEN
        || !secret.bytes().all(is_id_byte)
    {
        return Err(malformed(
            "its secret part is too short, too long or has odd characters",
        ));
    }
    Ok((id, secret))
}

/// A new random id (lowercase letters and digits) and secret (base62), from
/// the operating system's random source.
pub fn generate() -> Result<(String, String), getrandom::Error> {
    const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    const BASE62: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    Ok((
        random_text(ID_LEN, LOWER)?,
        random_text(SECRET_LEN, BASE62)?,
    ))
}

/// `len` characters drawn uniformly from `alphabet` (rejection sampling).
fn random_text(len: usize, alphabet: &[u8]) -> Result<String, getrandom::Error> {
    let n = alphabet.len();
    let limit = 256 - 256 % n;
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf)?;
        for &b in &buf {
            if (b as usize) < limit && out.len() < len {
                out.push(alphabet[b as usize % n] as char);
            }
        }
    }
    Ok(out)
}

/// The full key for an id and a secret.
pub fn format_key(id: &str, secret: &str) -> String {
    format!("{PREFIX}{id}-{secret}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            parse("tg-abc123-0123456789abcdefXYZ").unwrap(),
            ("abc123", "0123456789abcdefXYZ")
        );
        for bad in [
            "",
            "sk-abc-0123456789abcdefXYZ",
            "tg-abc",
            "tg--0123456789abcdefXYZ",
            "tg-abc-short",
            "tg-a.b-0123456789abcdefXYZ",
            "tg-abc-0123456789abcdef-XYZ",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.reason(), Reason::MalformedKey, "{bad}");
            if !bad.is_empty() {
                assert!(!e.message().contains(bad), "{}", e.message());
            }
        }
    }

    #[test]
    fn hash_is_bound_to_the_id_and_compares() {
        let a = KeyHash::of("id1", "secretsecretsecret");
        assert!(a.matches(&KeyHash::of("id1", "secretsecretsecret")));
        assert!(!a.matches(&KeyHash::of("id2", "secretsecretsecret")));
        assert!(!a.matches(&KeyHash::of("id1", "secretsecretsecreT")));
        assert_eq!(format!("{a:?}"), "KeyHash(..)");
        assert_eq!(a.to_hex().len(), 64);
        assert_eq!(KeyHash::from_bytes(a.as_bytes()), Some(a));
    }

    #[test]
    fn generated_keys_parse() {
        let (id, secret) = generate().unwrap();
        assert_eq!(id.len(), ID_LEN);
        assert_eq!(secret.len(), SECRET_LEN);
        let key = format_key(&id, &secret);
        assert_eq!(parse(&key).unwrap(), (id.as_str(), secret.as_str()));
        assert_ne!(generate().unwrap(), generate().unwrap());
    }
}
