//! Purpose subkeys: every use of a key goes through a key derived for that one use with
//! HKDF-SHA-256 (RFC 5869), so no key bytes ever serve two algorithms or two purposes.
//!
//! # The scheme (`Derivation::HkdfV1`)
//!
//! ```text
//! PRK     = HKDF-Extract(salt = "pii-vault subkey derivation v1", IKM = the key's 32 bytes)
//! subkey  = HKDF-Expand(PRK, info, 32)
//! info    = len(role) || role || len(p1) || p1 || ...      (each length a u32, big-endian)
//! ```
//!
//! `role` is the key's role name (`root`, `kek`, `dek`, `index`, `audit`, `record-mac`) and
//! the parts name the use:
//!
//! | use | info parts after the role | algorithm under the subkey |
//! |-----|---------------------------|----------------------------|
//! | `Key::seal` / `open` / `wrap` / `unwrap_key` | `"seal"` | AES-256-GCM |
//! | `Key::mac(label, ..)` (check value, audit chain, blind index, record seals) | `"mac"`, label | HMAC-SHA-256 |
//! | `Key::derive(label, context)` (record integrity keys) | `"derive"`, label, context parts | a child key (itself `HkdfV1`) |
//! | `Key::subkey(purpose)` (any other use) | purpose | whatever the caller does with it |
//!
//! The raw key bytes are only ever HKDF input keying material.
//!
//! # Compatibility: which keys stay `Legacy`, and until when
//!
//! Keys written before this scheme used their bytes directly: as the AES-256-GCM key, as
//! the HMAC key over `len(label) || label || parts` (the label as a message prefix), and as
//! HKDF input with the label as salt (`derive`). Those bytes are on disk everywhere, so each
//! key version carries its derivation, and a `Legacy` key keeps computing exactly what it
//! did (byte for byte), while every key generated now is `HkdfV1`:
//!
//! - a root key version says so in the root key file (`derivation = "hkdf-sha256-v1"`; an
//!   entry without the field is `Legacy`). A root rotation adds an `HkdfV1` version,
//!   re-wraps everything under it and destroys the old ones, so after one rotation the root
//!   and its check value are migrated;
//! - a wrapped key (tenant KEK, audit key, index key, subject DEK) says so in its wrap: the
//!   wrapped plaintext of an `HkdfV1` key is one marker byte (`WRAP_HKDF_V1`) then the 32
//!   key bytes; a 32-byte plaintext is a `Legacy` key. A re-wrap keeps the child's
//!   derivation. So a legacy tenant KEK stays legacy until the tenant's KEK is rotated (the
//!   new version is `HkdfV1`; the re-wrap pass moves the DEKs to it and destroys the old
//!   one); a legacy DEK until it is replaced (usage limit) and no field is sealed under it;
//!   a legacy index key until a new index version is added and the old one dropped (key
//!   epochs do that for tenants with erasures); the legacy audit key (and the record
//!   integrity keys derived from it, whose seals are stored) for as long as the store
//!   lives: there is no audit key rotation yet;
//! - a derived key (`derive`) has its parent's derivation.

use std::fmt;

use ring::{hkdf, hmac};
use zeroize::Zeroizing;

use super::key::KEY_LEN;
use super::mac::MAC_LEN;
use super::CryptoError;

/// HKDF salt of every subkey: names the scheme and its version.
pub(super) const SUBKEY_SALT: &[u8] = b"pii-vault subkey derivation v1";

/// The first byte of a wrapped `HkdfV1` key's plaintext (a 32-byte plaintext is `Legacy`).
pub(super) const WRAP_HKDF_V1: u8 = 1;

/// How a key version turns its bytes into the keys its operations use (module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derivation {
    /// Written before purpose subkeys: the bytes are used directly. Read-compatible only;
    /// nothing generated now is legacy.
    Legacy,
    /// Every operation under an HKDF-SHA-256 subkey for its purpose.
    HkdfV1,
}

impl Derivation {
    /// The name the root key file stores (`None` for `Legacy`, which has no field).
    pub fn file_name(self) -> Option<&'static str> {
        match self {
            Derivation::Legacy => None,
            Derivation::HkdfV1 => Some("hkdf-sha256-v1"),
        }
    }

    /// The derivation the root key file names (`None`: a legacy entry).
    pub fn from_file_name(name: Option<&str>) -> Result<Self, CryptoError> {
        match name {
            None => Ok(Derivation::Legacy),
            Some("hkdf-sha256-v1") => Ok(Derivation::HkdfV1),
            Some(_) => Err(CryptoError),
        }
    }
}

/// HMAC-SHA-256 under `key` of `parts`, each prefixed by its length (a u32, big-endian).
pub(super) fn hmac_parts(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    for part in parts {
        ctx.update(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// A key derived for one purpose. No `Clone`; `Debug` prints `[secret]`; zeroized on drop.
pub struct Subkey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for Subkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subkey([secret])")
    }
}

impl Subkey {
    /// HKDF-SHA-256 of `ikm` with the scheme's salt and `info_parts` (length-prefixed).
    pub(super) fn derive(ikm: &[u8; KEY_LEN], info_parts: &[&[u8]]) -> Result<Self, CryptoError> {
        let info = length_prefixed(info_parts);
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        hkdf_sha256(SUBKEY_SALT, ikm, &info, bytes.as_mut())?;
        Ok(Self { bytes })
    }

    /// HMAC-SHA-256 of `parts` (each length-prefixed) under this subkey.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        hmac_parts(self.bytes.as_ref(), parts)
    }

    /// The subkey bytes. Every caller is an exposure; keep them few.
    pub fn secret_bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// Moves the bytes out (to become a `Key` of their own), still in zeroizing memory.
    pub(super) fn into_secret_bytes(self) -> Zeroizing<[u8; KEY_LEN]> {
        self.bytes
    }
}

/// Each part preceded by its length (u32, big-endian), so no two part lists encode alike.
pub(super) fn length_prefixed(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The output length ring's HKDF is asked for.
struct OutLen(usize);

impl hkdf::KeyType for OutLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// RFC 5869 HKDF-SHA-256: extract with `salt`, expand with `info` to fill `out`.
pub(super) fn hkdf_sha256(
    salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8],
) -> Result<(), CryptoError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let info = [info];
    let okm = prk
        .expand(&info, OutLen(out.len()))
        .map_err(|_| CryptoError)?;
    okm.fill(out).map_err(|_| CryptoError)
}
