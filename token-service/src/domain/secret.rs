//! Link and session secrets: 256 bits from the OS random source after the time they were
//! issued, a recognisable prefix, kept only as a digest and compared in constant time.
//! Their `Debug` never prints them.
//!
//! The issue time leads both the secret and its digest so that the digests of new secrets
//! arrive in order: each insert into the unique index on `secret_hash` lands at its right
//! edge instead of on a random leaf of a table of millions (docs/performance.md, RedeemToken
//! on a loaded file). Secrets issued before carry no time and are still accepted.

use std::{
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::{TryRngCore, rngs::OsRng};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::Error;

/// Unix milliseconds, big-endian: what a secret and its digest start with.
const TIME_BYTES: usize = 6;
/// Base64url of `TIME_BYTES` bytes: a whole number of characters, so the time decodes on
/// its own.
const TIME_CHARS: usize = 8;
const RANDOM_BYTES: usize = 32;
/// Length of the base64url (no padding) text of the time and the random bytes.
const SECRET_CHARS: usize = 51;
/// Secrets issued before the time led them: 32 random bytes, 43 characters.
const UNTIMED_CHARS: usize = 43;
const _: () = assert!(TIME_CHARS * 3 == TIME_BYTES * 4);
const _: () = assert!(SECRET_CHARS == ((TIME_BYTES + RANDOM_BYTES) * 4).div_ceil(3));
const _: () = assert!(UNTIMED_CHARS == (RANDOM_BYTES * 4).div_ceil(3));

fn generate(prefix: &str) -> Result<String, Error> {
    let mut bytes = [0u8; TIME_BYTES + RANDOM_BYTES];
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .to_be_bytes();
    bytes[..TIME_BYTES].copy_from_slice(&millis[millis.len() - TIME_BYTES..]);
    OsRng
        .try_fill_bytes(&mut bytes[TIME_BYTES..])
        .map_err(|e| Error::Internal(format!("OS random source failed: {e}")))?;
    Ok(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

fn well_formed(prefix: &str, value: &str) -> bool {
    let Some(body) = value.strip_prefix(prefix) else {
        return false;
    };
    (body.len() == SECRET_CHARS || body.len() == UNTIMED_CHARS)
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What the database keeps of a secret and is searched by: 32 bytes. For a secret that
/// carries its issue time, that time (6 bytes) then the first 26 bytes of the secret's
/// SHA-256; for an older one, its whole SHA-256. The two cannot be confused: the first
/// would take a preimage of SHA-256 to forge from the second.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    /// `secret` is well formed (checked by `parse` or made by `generate`).
    fn of(prefix: &str, secret: &str) -> Self {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let body = secret.as_bytes().get(prefix.len()..).unwrap_or_default();
        if body.len() != SECRET_CHARS {
            return Self(digest);
        }
        let mut time = [0u8; TIME_BYTES];
        if URL_SAFE_NO_PAD
            .decode_slice(&body[..TIME_CHARS], &mut time)
            .is_err()
        {
            return Self(digest);
        }
        let mut key = [0u8; 32];
        key[..TIME_BYTES].copy_from_slice(&time);
        key[TIME_BYTES..].copy_from_slice(&digest[..32 - TIME_BYTES]);
        Self(key)
    }
    pub fn from_stored(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Constant-time equality, so timing tells nothing about how much of a hash matched.
    pub fn matches(&self, stored: &[u8]) -> bool {
        stored.len() == 32 && bool::from(self.0.as_slice().ct_eq(stored))
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

macro_rules! secret {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $field:literal) => {
        $(#[$doc])*
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn generate() -> Result<Self, Error> {
                generate(Self::PREFIX).map(Self)
            }
            /// Checks the shape only; whether it exists is the store's business.
            pub fn parse(value: &str) -> Result<Self, Error> {
                if value.is_empty() {
                    return Err(Error::invalid($field, "is required"));
                }
                if !well_formed(Self::PREFIX, value) {
                    // Says the expected shape: a truncated or mistyped secret does start
                    // with the prefix, so "is not a ctk_ secret" would mislead.
                    return Err(Error::invalid(
                        $field,
                        format!(
                            "must be {} followed by {SECRET_CHARS} characters (A-Z a-z 0-9 - _), exactly as issued",
                            $prefix
                        ),
                    ));
                }
                Ok(Self(value.to_owned()))
            }
            pub fn hash(&self) -> SecretHash {
                SecretHash::of(Self::PREFIX, &self.0)
            }
            /// The plain secret, to hand to its owner exactly once.
            pub fn expose(self) -> String {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(", $prefix, "..)"))
            }
        }
    };
}

secret!(
    /// A chat link's secret, `ctk_...`.
    TokenSecret,
    "ctk_",
    "secret"
);
secret!(
    /// A customer session's secret, `cse_...`.
    SessionSecret,
    "cse_",
    "session_secret"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_secret_is_told_the_expected_shape() {
        let truncated = format!("{}abc", TokenSecret::PREFIX);
        let Err(Error::InvalidArgument { description, .. }) = TokenSecret::parse(&truncated) else {
            panic!("a truncated secret must be refused");
        };
        assert!(
            description.contains("ctk_ followed by 51 characters"),
            "{description}"
        );
        assert!(SessionSecret::parse("ctk_x").is_err());
    }

    #[test]
    fn generated_secrets_parse_and_hash_stably() {
        let s = TokenSecret::generate().unwrap();
        let text = s.expose();
        assert!(text.starts_with("ctk_"));
        let parsed = TokenSecret::parse(&text).unwrap();
        assert!(
            parsed
                .hash()
                .matches(TokenSecret::parse(&text).unwrap().hash().as_bytes())
        );
        assert!(format!("{parsed:?}").len() < 20);
        assert!(SessionSecret::parse(&text).is_err());
    }

    #[test]
    fn a_new_secret_leads_with_its_time_and_so_does_its_digest() {
        let first = SessionSecret::generate().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = SessionSecret::generate().unwrap();
        let (a, b) = (first.hash(), second.hash());
        assert!(
            a.as_bytes() < b.as_bytes(),
            "digests must sort in issue order"
        );
        let text = second.expose();
        assert_eq!(text.len(), SessionSecret::PREFIX.len() + SECRET_CHARS);
        let mut time = [0u8; 8];
        time[2..].copy_from_slice(&b.as_bytes()[..TIME_BYTES]);
        let millis = u64::from_be_bytes(time);
        let now = u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        assert!(now - millis < 60_000, "{millis} is not the issue time");
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        assert_eq!(b.as_bytes()[TIME_BYTES..], digest[..32 - TIME_BYTES]);
        assert!(
            SessionSecret::parse(&text)
                .unwrap()
                .hash()
                .matches(b.as_bytes())
        );
    }

    #[test]
    fn a_secret_issued_before_the_time_led_it_is_found_by_its_whole_sha256() {
        let untimed = format!("cse_{}", "q".repeat(UNTIMED_CHARS));
        let parsed = SessionSecret::parse(&untimed).unwrap();
        let digest: [u8; 32] = Sha256::digest(untimed.as_bytes()).into();
        assert_eq!(parsed.hash().as_bytes(), &digest);
        assert!(SessionSecret::parse(&format!("cse_{}", "q".repeat(UNTIMED_CHARS + 1))).is_err());
        assert!(SessionSecret::parse(&format!("cse_{}", "q".repeat(SECRET_CHARS - 1))).is_err());
    }
}
