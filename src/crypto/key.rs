//! Secret keys, typed by the role they play in the hierarchy.
//!
//! A `Key<R>` holds 32 bytes of key material (the input of its purpose subkeys) and the
//! version it was issued as. It has no `Clone`, `PartialEq` or `Serialize`; its `Debug`
//! prints `[secret]`; its bytes leave only through `secret_*` methods, so every exposure can
//! be found with a grep; and it is zeroized on drop.
//!
//! A key prepares its AES-GCM key schedule (`AeadKey`, from its `"seal"` subkey) on first
//! use and keeps it, so a key that seals or opens many times (a cached KEK or DEK) pays for
//! the schedule once. The schedule is cleared when the key is dropped, like the bytes.
//!
//! Each key version also carries its `Derivation`: whether its operations run under
//! purpose subkeys (every key generated now) or, for keys written before those existed,
//! under the bytes themselves (`subkey.rs` says which keys stay legacy, and until when).

use std::fmt;
use std::marker::PhantomData;
use std::sync::OnceLock;

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, Zeroizing};

use super::aead::AeadKey;
use super::subkey::{Derivation, Subkey};
use super::CryptoError;

/// Length of every symmetric key in the vault: AES-256.
pub const KEY_LEN: usize = 32;

/// The subkey purpose of every AEAD operation under a key (`seal`, `open`, wraps).
const SEAL_PURPOSE: &str = "seal";

/// The role a key plays. Each role has its own domain-separation label, so a key of one
/// role can never open what was sealed for another.
pub trait KeyRole: Send + Sync + 'static {
    /// Short name used in AAD and diagnostics.
    const NAME: &'static str;
}

/// Defines a zero-sized marker type for a key role.
macro_rules! role {
    ($(#[$doc:meta])* $name:ident, $label:literal) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub enum $name {}
        impl KeyRole for $name {
            const NAME: &'static str = $label;
        }
    };
}

role!(
    /// The root key: lives outside the store and wraps tenant KEKs.
    Root,
    "root"
);
role!(
    /// A tenant key-encryption key: wraps the subject DEKs of one tenant.
    Kek,
    "kek"
);
role!(
    /// A subject data-encryption key: seals the field values of one subject.
    Dek,
    "dek"
);
role!(
    /// A tenant's blind-index key: HMACs normalised values so lookups need no decryption.
    /// Versioned and wrapped by the root key.
    Index,
    "index"
);
role!(
    /// The audit key: MACs the audit chain. Wrapped by the root key, kept in the store.
    Audit,
    "audit"
);
role!(
    /// A tenant's record integrity key: MACs the subjects' state records and tombstones.
    /// Derived, never stored (`Key::derive`, `keyring::RecordSealer`).
    RecordMac,
    "record-mac"
);

/// A secret key of role `R`.
pub struct Key<R: KeyRole> {
    bytes: Zeroizing<[u8; KEY_LEN]>,
    version: u32,
    /// How this version's operations key themselves: kept with the key (root key file,
    /// wrap plaintext) because data on disk was written one way or the other.
    derivation: Derivation,
    /// The prepared cipher, built on the first seal or open (from the `"seal"` subkey, or
    /// from `bytes` for a legacy key).
    aead: OnceLock<AeadKey>,
    _role: PhantomData<R>,
}

impl<R: KeyRole> Key<R> {
    /// A fresh random key (purpose subkeys, `Derivation::HkdfV1`).
    pub fn generate(version: u32) -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(bytes.as_mut())?;
        Ok(Self::from_secret_bytes(version, bytes))
    }

    /// Takes ownership of raw key bytes (already in zeroizing memory), as a key with purpose
    /// subkeys; `with_derivation` marks a legacy one.
    pub fn from_secret_bytes(version: u32, bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        Self {
            bytes,
            version,
            derivation: Derivation::HkdfV1,
            aead: OnceLock::new(),
            _role: PhantomData,
        }
    }

    /// Parses a key from lower-case hex (as stored in the root key file).
    pub fn from_secret_hex(version: u32, hex_text: &str) -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(hex_text.trim(), bytes.as_mut()).map_err(|_| CryptoError)?;
        Ok(Self::from_secret_bytes(version, bytes))
    }

    /// The key bytes as hex, in memory that is zeroized on drop.
    pub fn secret_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.bytes.as_ref()))
    }

    /// The raw key bytes. Every caller is an exposure; keep them few.
    pub fn secret_bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// An explicit copy: keys are not `Clone`, so every duplicate is visible in the code.
    pub fn duplicate(&self) -> Self {
        Self::from_secret_bytes(self.version, Zeroizing::new(*self.bytes))
            .with_derivation(self.derivation)
    }

    /// The same key with derivation `derivation` (what its file entry or wrap says).
    pub fn with_derivation(mut self, derivation: Derivation) -> Self {
        if derivation != self.derivation {
            self.derivation = derivation;
            self.aead = OnceLock::new();
        }
        self
    }

    /// How this key version derives the keys its operations use.
    pub fn derivation(&self) -> Derivation {
        self.derivation
    }

    /// The subkey of this key for `purpose` (HKDF-SHA-256, `subkey.rs`). Independent of the
    /// key's own derivation: a legacy key has subkeys too, it just does not use them for
    /// what it wrote before.
    pub fn subkey(&self, purpose: &'static str) -> Result<Subkey, CryptoError> {
        self.subkey_for(&[purpose.as_bytes()])
    }

    /// The subkey for the use named by `parts` (after the role name).
    pub(super) fn subkey_for(&self, parts: &[&[u8]]) -> Result<Subkey, CryptoError> {
        let mut info: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        info.push(R::NAME.as_bytes());
        info.extend_from_slice(parts);
        Subkey::derive(&self.bytes, &info)
    }

    /// The prepared cipher of this key, built on first use.
    pub(super) fn aead(&self) -> Result<&AeadKey, CryptoError> {
        if let Some(ready) = self.aead.get() {
            return Ok(ready);
        }
        let fresh = match self.derivation {
            Derivation::HkdfV1 => AeadKey::new(self.subkey(SEAL_PURPOSE)?.secret_bytes())?,
            Derivation::Legacy => AeadKey::new(&self.bytes)?,
        };
        // If another thread won the race, its schedule is kept and `fresh` is dropped
        // (and cleared).
        Ok(self.aead.get_or_init(|| fresh))
    }

    /// The version this key was issued as.
    pub fn version(&self) -> u32 {
        self.version
    }
}

impl<R: KeyRole> fmt::Debug for Key<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key<{}>(v{}, [secret])", R::NAME, self.version)?;
        match self.derivation {
            Derivation::HkdfV1 => Ok(()),
            Derivation::Legacy => f.write_str(" legacy"),
        }
    }
}

impl<R: KeyRole> Drop for Key<R> {
    fn drop(&mut self) {
        // `Zeroizing` already clears the bytes; clearing the version too leaves nothing
        // of the key behind in the freed memory.
        self.version.zeroize();
    }
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    SystemRandom::new().fill(buf).map_err(|_| CryptoError)
}
