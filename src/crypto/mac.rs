//! Keyed hashes (HMAC-SHA-256) for values that must be checked but not hidden: the root key
//! check value, the audit chain, record seals; and HKDF-SHA-256 for keys derived for one
//! purpose from another key.

use ring::{hkdf, hmac};
use zeroize::Zeroizing;

use super::key::{Key, KeyRole, KEY_LEN};
use super::CryptoError;

/// The output length ring's HKDF is asked for: one key.
struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        KEY_LEN
    }
}

/// Length of an HMAC-SHA-256 tag.
pub const MAC_LEN: usize = 32;

impl<R: KeyRole> Key<R> {
    /// HMAC-SHA-256 of `parts` (each length-prefixed) under a subkey of this key derived for
    /// `label`, so the same key never MACs two kinds of message the same way.
    pub fn mac(&self, label: &str, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.secret_bytes());
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(&u32::try_from(label.len()).unwrap_or(u32::MAX).to_be_bytes());
        ctx.update(label.as_bytes());
        for part in parts {
            ctx.update(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// A key of role `C` derived from this one with HKDF-SHA-256 (RFC 5869): `label` is the
    /// salt, `context` (each part length-prefixed) the info. Different labels or contexts
    /// give independent keys; the derived key is version 1.
    pub fn derive<C: KeyRole>(
        &self, label: &str, context: &[&[u8]],
    ) -> Result<Key<C>, CryptoError> {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, label.as_bytes());
        let prk = salt.extract(self.secret_bytes());
        let mut info = Vec::new();
        for part in context {
            info.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            info.extend_from_slice(part);
        }
        let info = [info.as_slice()];
        let okm = prk.expand(&info, KeyLen).map_err(|_| CryptoError)?;
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        okm.fill(bytes.as_mut()).map_err(|_| CryptoError)?;
        Ok(Key::from_secret_bytes(1, bytes))
    }

    /// A public fingerprint of this key (a MAC of a fixed label): lets a data directory
    /// remember which root key it belongs to without storing the key.
    pub fn check_value(&self) -> [u8; MAC_LEN] {
        self.mac(
            "pii-vault key check value v1",
            &[&self.version().to_be_bytes()],
        )
    }
}

/// Compares two MACs in constant time.
pub fn mac_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}
