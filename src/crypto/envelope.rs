//! The sealed envelope: the one place where the on-disk layout of a ciphertext is defined.
//!
//! ```text
//! format (1 byte = 1) | key version (u32 BE) | nonce (12 bytes) | ciphertext + GCM tag (16 bytes)
//! ```
//!
//! The format byte and key version are bound into the AEAD's associated data together with
//! the caller's context (`Aad`), so editing either makes the envelope fail to open.
//!
//! The AEAD key is the sealing key's `"seal"` subkey (or, for a legacy key, its bytes:
//! `subkey.rs`). A wrapped key's plaintext says the child's derivation: `WRAP_HKDF_V1` then
//! the 32 key bytes for a key with purpose subkeys, the 32 bytes alone for a legacy key.

use zeroize::Zeroizing;

use super::aead::{NONCE_LEN, TAG_LEN};
use super::key::{fill_random, Key, KeyRole, KEY_LEN};
use super::subkey::{Derivation, WRAP_HKDF_V1};
use super::CryptoError;

/// Current envelope format.
const FORMAT_V1: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;

/// Associated data: the context a ciphertext is bound to. Each part is length-prefixed,
/// so no two different contexts encode to the same bytes.
#[derive(Clone, Debug, Default)]
pub struct Aad(Vec<u8>);

impl Aad {
    /// Starts a context with a domain label such as `"field"` or `"dek-wrap"`.
    pub fn new(label: &str) -> Self {
        Self::default().with(label.as_bytes())
    }

    /// Appends one length-prefixed part.
    pub fn with(mut self, part: &[u8]) -> Self {
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(part);
        self
    }

    /// Appends a number.
    pub fn with_u64(self, n: u64) -> Self {
        self.with(&n.to_be_bytes())
    }

    pub(super) fn bytes_for(&self, role: &str, key_version: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() + 16 + role.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(role.as_bytes());
        out.push(0);
        out.extend_from_slice(&key_version.to_be_bytes());
        out.extend_from_slice(&self.0);
        out
    }
}

/// A ciphertext with everything needed to open it except the key and its context.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    key_version: u32,
    nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the 16-byte GCM tag.
    ciphertext: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sealed(v{}, {} bytes)",
            self.key_version,
            self.ciphertext.len()
        )
    }
}

impl Sealed {
    /// Version of the key that sealed this envelope.
    pub fn key_version(&self) -> u32 {
        self.key_version
    }

    /// The envelope in its on-disk form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.ciphertext.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&self.key_version.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Parses the on-disk form. Fails on an unknown format or a truncated envelope.
    pub fn decode(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() < HEADER_LEN + TAG_LEN || bytes[0] != FORMAT_V1 {
            return Err(CryptoError);
        }
        let mut version = [0u8; 4];
        version.copy_from_slice(&bytes[1..5]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[5..HEADER_LEN]);
        Ok(Self {
            key_version: u32::from_be_bytes(version),
            nonce,
            ciphertext: bytes[HEADER_LEN..].to_vec(),
        })
    }
}

impl<R: KeyRole> Key<R> {
    /// Seals `plaintext` under this key, bound to `aad`, with a fresh random 96-bit nonce.
    pub fn seal(&self, plaintext: &[u8], aad: &Aad) -> Result<Sealed, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let aad = aad.bytes_for(R::NAME, self.version());
        let ciphertext = self.aead()?.seal(&nonce, &aad, plaintext)?;
        Ok(Sealed {
            key_version: self.version(),
            nonce,
            ciphertext,
        })
    }

    /// Opens an envelope sealed by this key for `aad`. Any mismatch (key, version, context,
    /// a flipped bit) fails the same opaque way.
    pub fn open(&self, sealed: &Sealed, aad: &Aad) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.key_version != self.version() {
            return Err(CryptoError);
        }
        let aad = aad.bytes_for(R::NAME, self.version());
        self.aead()?.open(&sealed.nonce, &aad, &sealed.ciphertext)
    }

    /// Wraps a child key under this one. The child's version is bound into the context,
    /// so a wrapped key cannot be replayed as another version; its derivation travels in
    /// the plaintext (module comment), so a re-wrap keeps it.
    pub fn wrap<C: KeyRole>(&self, child: &Key<C>, aad: &Aad) -> Result<Sealed, CryptoError> {
        self.seal(&wrap_plaintext(child), &wrap_aad::<C>(aad, child.version()))
    }

    /// Unwraps a child key of version `child_version`, with the derivation its wrap names.
    pub fn unwrap_key<C: KeyRole>(
        &self, sealed: &Sealed, child_version: u32, aad: &Aad,
    ) -> Result<Key<C>, CryptoError> {
        let aad = wrap_aad::<C>(aad, child_version);
        let opened = self.open(sealed, &aad)?;
        child_from_plaintext(&opened, child_version)
    }
}

/// An AES-256-GCM key held outside this process (a PKCS#11 token), which seals and opens
/// what it is handed and never shows its bytes. The envelope around its output is built
/// here like every other (`wrap_external`), so a wrap by the token and a wrap by a file key
/// have the same layout and the same associated data.
pub trait ExternalKey {
    /// The key version the envelope names.
    fn version(&self) -> u32;
    /// AES-256-GCM with a 128-bit tag: the ciphertext followed by the tag. `nonce` arrives
    /// random; a token that must choose its own IV writes it there.
    fn seal_with(
        &self, nonce: &mut [u8; NONCE_LEN], aad: &[u8], plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError>;
    /// Checks the tag and decrypts; any failure is the same opaque error.
    fn open_with(
        &self, nonce: &[u8; NONCE_LEN], aad: &[u8], ciphertext_and_tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError>;
}

/// The plaintext that proves a key: sealed by an external key as its check value, since a
/// key that cannot be read cannot be MACed here (`external_check`).
const CHECK_PLAINTEXT: &[u8] = b"pii-vault external key check value v1";

/// Wraps `child` under the external key `key` acting in role `P`, exactly as `Key::wrap`
/// would under a key of that role held here.
pub fn wrap_external<P: KeyRole, C: KeyRole>(
    key: &dyn ExternalKey, child: &Key<C>, aad: &Aad,
) -> Result<Sealed, CryptoError> {
    seal_external::<P>(
        key,
        &wrap_plaintext(child),
        &wrap_aad::<C>(aad, child.version()),
    )
}

/// Unwraps a child key of version `child_version` that `wrap_external` wrapped.
pub fn unwrap_external<P: KeyRole, C: KeyRole>(
    key: &dyn ExternalKey, sealed: &Sealed, child_version: u32, aad: &Aad,
) -> Result<Key<C>, CryptoError> {
    let aad = wrap_aad::<C>(aad, child_version);
    let opened = open_external::<P>(key, sealed, &aad)?;
    child_from_plaintext(&opened, child_version)
}

/// A check value of an external key: a fresh envelope of a fixed plaintext, which only
/// that key opens (`external_check_matches`). Not comparable byte for byte.
pub fn external_check<P: KeyRole>(key: &dyn ExternalKey) -> Result<Vec<u8>, CryptoError> {
    Ok(seal_external::<P>(key, CHECK_PLAINTEXT, &Aad::new("key-check"))?.encode())
}

/// True if `check` (from `external_check`) was made by `key`.
pub fn external_check_matches<P: KeyRole>(key: &dyn ExternalKey, check: &[u8]) -> bool {
    Sealed::decode(check)
        .and_then(|sealed| open_external::<P>(key, &sealed, &Aad::new("key-check")))
        .is_ok_and(|plain| super::mac::mac_eq(&plain, CHECK_PLAINTEXT))
}

fn seal_external<P: KeyRole>(
    key: &dyn ExternalKey, plaintext: &[u8], aad: &Aad,
) -> Result<Sealed, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    let aad = aad.bytes_for(P::NAME, key.version());
    let ciphertext = key.seal_with(&mut nonce, &aad, plaintext)?;
    if ciphertext.len() != plaintext.len() + TAG_LEN {
        return Err(CryptoError);
    }
    Ok(Sealed {
        key_version: key.version(),
        nonce,
        ciphertext,
    })
}

fn open_external<P: KeyRole>(
    key: &dyn ExternalKey, sealed: &Sealed, aad: &Aad,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.key_version != key.version() {
        return Err(CryptoError);
    }
    let aad = aad.bytes_for(P::NAME, key.version());
    key.open_with(&sealed.nonce, &aad, &sealed.ciphertext)
}

/// The plaintext of a wrap of `child`: `WRAP_HKDF_V1` and its 32 bytes, or the 32 bytes
/// alone for a legacy key (module comment).
fn wrap_plaintext<C: KeyRole>(child: &Key<C>) -> Zeroizing<Vec<u8>> {
    let mut plain = Zeroizing::new(Vec::with_capacity(1 + KEY_LEN));
    if child.derivation() == Derivation::HkdfV1 {
        plain.push(WRAP_HKDF_V1);
    }
    plain.extend_from_slice(child.secret_bytes());
    plain
}

/// The child key a wrap's plaintext holds: `WRAP_HKDF_V1` and 32 bytes, or 32 bytes alone
/// for a legacy key.
fn child_from_plaintext<C: KeyRole>(
    opened: &[u8], child_version: u32,
) -> Result<Key<C>, CryptoError> {
    let (derivation, key_bytes) = match opened.len() {
        KEY_LEN => (Derivation::Legacy, opened),
        n if n == 1 + KEY_LEN && opened[0] == WRAP_HKDF_V1 => (Derivation::HkdfV1, &opened[1..]),
        _ => return Err(CryptoError),
    };
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    bytes.copy_from_slice(key_bytes);
    Ok(Key::from_secret_bytes(child_version, bytes).with_derivation(derivation))
}

#[cfg(test)]
pub(super) fn test_wrap_aad<C: KeyRole>(aad: &Aad, child_version: u32) -> Aad {
    wrap_aad::<C>(aad, child_version)
}

fn wrap_aad<C: KeyRole>(aad: &Aad, child_version: u32) -> Aad {
    aad.clone()
        .with(b"wrap")
        .with(C::NAME.as_bytes())
        .with_u64(u64::from(child_version))
}
