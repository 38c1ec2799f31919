//! Keyed hashes (HMAC-SHA-256) for values that must be checked but not hidden: the root key
//! check value today, the audit chain later.

use ring::hmac;

use super::key::{Key, KeyRole};

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
