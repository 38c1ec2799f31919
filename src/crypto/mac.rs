//! Keyed hashes (HMAC-SHA-256) for values that must be checked but not hidden: the root key
//! check value, the audit chain, blind indexes, record seals; and keys derived for one
//! purpose from another key (HKDF-SHA-256).
//!
//! A key with purpose subkeys (`Derivation::HkdfV1`) MACs under its `"mac"` subkey for the
//! label and derives under its `"derive"` subkey info; a legacy key keeps what it did before
//! (the label as a message prefix under the key itself, the label as HKDF salt), so that
//! what it MACed or derived then still checks (`subkey.rs`).

use zeroize::Zeroizing;

use super::key::{Key, KeyRole, KEY_LEN};
use super::subkey::{hkdf_sha256, hmac_parts, length_prefixed, Derivation};
use super::CryptoError;

/// Length of an HMAC-SHA-256 tag.
pub const MAC_LEN: usize = 32;

impl<R: KeyRole> Key<R> {
    /// HMAC-SHA-256 of `parts` (each length-prefixed) under this key's subkey for `label`,
    /// so the same key never MACs two kinds of message under the same bytes.
    pub fn mac(&self, label: &str, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        match self.derivation() {
            Derivation::HkdfV1 => match self.subkey_for(&[b"mac", label.as_bytes()]) {
                Ok(subkey) => subkey.mac(parts),
                // ring's HKDF fails only for outputs over 255 hash lengths.
                Err(CryptoError) => unreachable!("HKDF-SHA-256 always yields a 32-byte subkey"),
            },
            Derivation::Legacy => self.legacy_mac(label, parts),
        }
    }

    /// The MAC a legacy key computes: HMAC under the key bytes, the label as a prefix
    /// (length-prefixed like every part).
    fn legacy_mac(&self, label: &str, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(label.as_bytes());
        all.extend_from_slice(parts);
        hmac_parts(self.secret_bytes(), &all)
    }

    /// A key of role `C` derived from this one for `label` and `context` (each part
    /// length-prefixed). Different labels or contexts give independent keys; the derived
    /// key is version 1 and has this key's derivation.
    pub fn derive<C: KeyRole>(
        &self, label: &str, context: &[&[u8]],
    ) -> Result<Key<C>, CryptoError> {
        let bytes = match self.derivation() {
            Derivation::HkdfV1 => {
                let mut info: Vec<&[u8]> = vec![b"derive", label.as_bytes()];
                info.extend_from_slice(context);
                self.subkey_for(&info)?.into_secret_bytes()
            }
            Derivation::Legacy => {
                // RFC 5869 with `label` as the salt and the context as the info.
                let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
                let info = length_prefixed(context);
                hkdf_sha256(label.as_bytes(), self.secret_bytes(), &info, bytes.as_mut())?;
                bytes
            }
        };
        Ok(Key::from_secret_bytes(1, bytes).with_derivation(self.derivation()))
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
