//! Passwords, tokens and the hashes that stand for them. Nothing here logs,
//! and nothing returns a secret except to the caller that made it.
//!
//! - Passwords: Argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes,
//!   1 lane, as OWASP recommends) with a 16-byte salt from the OS, stored as
//!   a PHC string (which carries its parameters, so stronger defaults later
//!   still verify old hashes). CPU- and memory-heavy: callers run these on the
//!   blocking pool.
//! - Tokens: [`TOKEN_PREFIX`] and 32 random bytes in base64url (no padding);
//!   stored as the SHA-256 of the whole text, which is enough for a secret of
//!   256 random bits (no salt or slow hash needed: it cannot be guessed).

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// How every token starts: recognisable in a config file or a secret
/// scanner, and never taken for a password.
pub const TOKEN_PREFIX: &str = "cairn_";

/// `N` bytes from the operating system's random source.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|error| {
        Error::Internal(format!(
            "the operating system's random source failed: {error}"
        ))
    })?;
    Ok(bytes)
}

/// A generated password: 24 random bytes, 32 characters of base64url.
pub fn generate_password() -> Result<String> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<24>()?))
}

/// A new token's text.
pub fn generate_token() -> Result<String> {
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(random_bytes::<32>()?)
    ))
}

/// A new token id: 8 random bytes in hex (public: listed, used to revoke).
pub fn generate_token_id() -> Result<String> {
    Ok(hex(&random_bytes::<8>()?))
}

/// The SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The SHA-256 of a token's text, as stored.
pub fn token_hash(token: &str) -> [u8; 32] {
    sha256(token.as_bytes())
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The 32 bytes of a 64-digit hex string.
pub fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).ok()?;
    }
    Some(bytes)
}

/// The key of a successful login in the login cache: SHA-256 over a
/// per-process random key, the user and the password (length-prefixed, so
/// `("ab", "c")` and `("a", "bc")` differ). The cache holds only these.
pub fn login_key(process_key: &[u8; 32], user: &str, password: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(process_key);
    hasher.update((user.len() as u64).to_le_bytes());
    hasher.update(user.as_bytes());
    hasher.update(password.as_bytes());
    hasher.finalize().into()
}

/// Hashes `password` (slow: run on the blocking pool).
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|error| Error::Internal(format!("cannot encode a password salt: {error}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| Error::Internal(format!("cannot hash a password: {error}")))
}

/// True when `password` matches the PHC string `hash` (slow: run on the
/// blocking pool). A hash that does not parse matches nothing.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// Verifies against a hash of nothing anyone knows, so that a login as a
/// user that does not exist costs as much as one with a wrong password (the
/// time does not tell which names exist).
pub fn verify_nothing(password: &str) {
    static NOBODY: OnceLock<Option<String>> = OnceLock::new();
    let hash = NOBODY.get_or_init(|| {
        generate_password()
            .and_then(|secret| hash_password(&secret))
            .ok()
    });
    if let Some(hash) = hash {
        let _ = verify_password(password, hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_random_salts() {
        let first = hash_password("correct horse").unwrap();
        let second = hash_password("correct horse").unwrap();
        assert!(first.starts_with("$argon2id$"), "{first}");
        assert_ne!(first, second, "salts differ");
        assert!(verify_password("correct horse", &first));
        assert!(verify_password("correct horse", &second));
        assert!(!verify_password("correct horse!", &first));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn tokens_are_prefixed_long_and_distinct() {
        let token = generate_token().unwrap();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(token.len(), TOKEN_PREFIX.len() + 43);
        assert_ne!(token, generate_token().unwrap());
        assert_eq!(generate_token_id().unwrap().len(), 16);
        assert_eq!(generate_password().unwrap().len(), 32);
    }

    #[test]
    fn hex_round_trips_and_login_keys_separate_user_from_password() {
        let hash = token_hash("cairn_x");
        assert_eq!(parse_hex32(&hex(&hash)), Some(hash));
        assert_eq!(parse_hex32("zz"), None);
        let key = [7u8; 32];
        assert_ne!(login_key(&key, "ab", "c"), login_key(&key, "a", "bc"));
        assert_ne!(login_key(&key, "a", "b"), login_key(&[8u8; 32], "a", "b"));
    }
}
