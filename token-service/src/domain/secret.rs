//! Link and session secrets: 256 bits from the OS random source, a recognisable prefix,
//! kept only as SHA-256 and compared in constant time. Their `Debug` never prints them.

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::{TryRngCore, rngs::OsRng};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::Error;

const SECRET_BYTES: usize = 32;
/// Length of the base64url (no padding) text of `SECRET_BYTES` bytes.
const SECRET_CHARS: usize = 43;

fn generate(prefix: &str) -> Result<String, Error> {
    let mut bytes = [0u8; SECRET_BYTES];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| Error::Internal(format!("OS random source failed: {e}")))?;
    Ok(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

fn well_formed(prefix: &str, value: &str) -> bool {
    value.len() == prefix.len() + SECRET_CHARS
        && value.starts_with(prefix)
        && value[prefix.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// SHA-256 of a secret: what the database keeps and is searched by.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
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
                SecretHash::of(&self.0)
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
            description.contains("ctk_ followed by 43 characters"),
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
}
