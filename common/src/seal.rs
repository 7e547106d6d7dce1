//! Opaque tokens a service hands out and must get back unaltered (page tokens): the
//! payload followed by an HMAC-SHA256 tag under a key only the service holds, base64url.
//! A forged or edited token fails to open, so nothing in it reaches a query unchecked.
//!
//! The key comes from configuration (`PAGE_TOKEN_KEY`); without one each process draws a
//! random key, and its tokens then do not survive a restart or work on another replica.

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use rand::{TryRngCore, rngs::OsRng};
use sha2::Sha256;

/// Bytes of the tag kept (128 bits).
const TAG_BYTES: usize = 16;
/// Shortest configured key.
pub const MIN_KEY_BYTES: usize = 16;
/// Longest token text accepted for opening; anything longer was not made here.
const MAX_TOKEN_CHARS: usize = 2048;

/// The key tokens are sealed with. `Debug` never shows it.
#[derive(Clone)]
pub struct SealKey(Vec<u8>);

impl SealKey {
    /// The configured key, or a random one (with `false`) when none is configured.
    ///
    /// # Errors
    /// When the configured key is shorter than [`MIN_KEY_BYTES`], or the OS random source
    /// fails.
    pub fn configured_or_random(configured: Option<&str>) -> Result<(Self, bool), String> {
        match configured.filter(|k| !k.is_empty()) {
            Some(key) if key.len() < MIN_KEY_BYTES => Err(format!(
                "the page token key must be at least {MIN_KEY_BYTES} bytes"
            )),
            Some(key) => Ok((Self(key.as_bytes().to_vec()), true)),
            None => Self::random().map(|k| (k, false)),
        }
    }

    /// A key drawn from the OS random source.
    ///
    /// # Errors
    /// When the OS random source fails.
    pub fn random() -> Result<Self, String> {
        let mut key = vec![0u8; 32];
        OsRng
            .try_fill_bytes(&mut key)
            .map_err(|e| format!("OS random source failed: {e}"))?;
        Ok(Self(key))
    }

    fn mac(&self, purpose: &str, payload: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        // The purpose keeps a token of one kind from opening as another.
        mac.update(&(purpose.len() as u64).to_be_bytes());
        mac.update(purpose.as_bytes());
        mac.update(payload);
        mac
    }

    /// `payload` sealed for `purpose`, as base64url text.
    pub fn seal(&self, purpose: &str, payload: &[u8]) -> String {
        let tag = self.mac(purpose, payload).finalize().into_bytes();
        let mut bytes = Vec::with_capacity(payload.len() + TAG_BYTES);
        bytes.extend_from_slice(payload);
        bytes.extend_from_slice(&tag[..TAG_BYTES]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The payload of a token this key sealed for `purpose`; `None` for anything else.
    /// The tag is compared in constant time.
    pub fn open(&self, purpose: &str, text: &str) -> Option<Vec<u8>> {
        if text.len() > MAX_TOKEN_CHARS {
            return None;
        }
        let mut bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let split = bytes.len().checked_sub(TAG_BYTES)?;
        let tag = bytes.split_off(split);
        self.mac(purpose, &bytes)
            .verify_truncated_left(&tag)
            .ok()
            .map(|()| bytes)
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_tokens_open_only_with_their_key_and_purpose() {
        let (key, configured) =
            SealKey::configured_or_random(Some("0123456789abcdef")).expect("key");
        assert!(configured);
        let token = key.seal("list", b"payload");
        assert_eq!(key.open("list", &token).as_deref(), Some(&b"payload"[..]));
        assert_eq!(key.open("other", &token), None);
        let other = SealKey::random().expect("random key");
        assert_eq!(other.open("list", &token), None);
        // Any edited character breaks the tag.
        let mut edited = token.into_bytes();
        edited[0] = if edited[0] == b'A' { b'B' } else { b'A' };
        let edited = String::from_utf8(edited).expect("ascii");
        assert_eq!(key.open("list", &edited), None);
        assert_eq!(key.open("list", ""), None);
        assert_eq!(key.open("list", "!!"), None);
    }

    #[test]
    fn short_configured_keys_are_refused_and_none_means_random() {
        assert!(SealKey::configured_or_random(Some("short")).is_err());
        let (_, configured) = SealKey::configured_or_random(None).expect("random");
        assert!(!configured);
    }
}
