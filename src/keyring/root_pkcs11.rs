//! The root key in a PKCS#11 token (an HSM): each root key version is a non-extractable
//! AES-256 key object that the token generated, and every wrap and unwrap under it is an
//! AES-GCM operation inside the token (`TokenKey`, through `crypto::ExternalKey`), so the
//! key's bytes never reach this process.
//!
//! Objects are found by name: the label `<prefix>-v<N>` and the id `N` (4 bytes,
//! big-endian); both must agree (`names.rs`). Retirement is recorded on the object itself
//! (the vault has no other place for it): its label becomes
//! `<prefix>-v<N>-retired-<unix micros>`, and a retired version still decrypts. Destroying
//! a version destroys its object (`C_DestroyObject`). Modules and logins are shared by the
//! whole process (`session.rs`).

mod names;
mod session;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use crate::crypto::{CryptoError, ExternalKey, Zeroizing, NONCE_LEN};
use crate::domain::Timestamp;

use super::KeyringError;
use names::{parse_label, retired_label, version_label};
use session::{lock, Token};

/// GCM tag length the envelope expects (`crypto::TAG_LEN` bytes).
const TAG_BITS: u64 = 128;

/// Where the token and its PIN are (validated config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkcs11Settings {
    /// The PKCS#11 library (.so).
    pub module: PathBuf,
    pub token: TokenSelector,
    pub pin: PinSource,
    /// Names the key objects (`<prefix>-v<N>`), so several vaults can share a token.
    pub key_label_prefix: String,
}

/// Which token of the module holds the keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSelector {
    Label(String),
    Slot(u64),
}

/// Where the user PIN is read from at open; it is never part of the config itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    File(PathBuf),
    Env(String),
}

/// One root key version object in the token, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenVersionInfo {
    pub version: u32,
    pub retired_at: Option<Timestamp>,
}

/// The root key versions of one token.
pub struct TokenRoot {
    token: Arc<Token>,
    prefix: Arc<str>,
}

impl fmt::Debug for TokenRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRoot")
            .field("module", &self.token.module)
            .field("token", &self.token.label)
            .finish()
    }
}

impl TokenRoot {
    /// Loads the module (once per process), finds the token, reads the PIN and logs in.
    /// Each refusal says which part is wrong, never the PIN.
    pub fn open(settings: &Pkcs11Settings) -> Result<Self, KeyringError> {
        let prefix = settings.key_label_prefix.as_str();
        if prefix.is_empty() {
            return Err(token_err("the key label prefix is empty"));
        }
        let token = session::log_in(settings)?;
        Ok(Self {
            token,
            prefix: Arc::from(prefix),
        })
    }

    /// The versions in the token, sorted by version.
    pub fn versions(&self) -> Result<Vec<TokenVersionInfo>, KeyringError> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
        ];
        let mut versions = self
            .token
            .with_session(|session| {
                let mut found = Vec::new();
                for handle in session.find_objects(&template)? {
                    found.extend(read_version(session, handle, &self.prefix)?);
                }
                Ok(found)
            })
            .map_err(|e| self.err("listing the key versions", e))?;
        versions.sort_by_key(|info| info.version);
        if let Some(pair) = versions.windows(2).find(|w| w[0].version == w[1].version) {
            return Err(self.duplicate(pair[0].version));
        }
        Ok(versions)
    }

    /// The key of `version`, or `None` if the token has no such version.
    pub fn key(&self, version: u32) -> Result<Option<TokenKey>, KeyringError> {
        let found = self
            .token
            .with_session(|session| find_version(session, &self.prefix, version))
            .map_err(|e| self.err(&format!("finding root key version {version}"), e))?;
        match found.len() {
            0 => Ok(None),
            1 => Ok(Some(self.token_key(version))),
            _ => Err(self.duplicate(version)),
        }
    }

    /// Generates `version` inside the token. Refuses a version the token already holds.
    pub fn generate(&self, version: u32) -> Result<TokenKey, KeyringError> {
        let _admin = lock(&self.token.admin);
        if self.key(version)?.is_some() {
            return Err(token_err(format!(
                "{}: root key version {version} already exists",
                self.describe()
            )));
        }
        let label = version_label(&self.prefix, version);
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Derive(false),
            Attribute::Label(label.into_bytes()),
            Attribute::Id(version.to_be_bytes().to_vec()),
        ];
        self.token
            .with_session(|session| session.generate_key(&Mechanism::AesKeyGen, &template))
            .map_err(|e| self.err(&format!("generating root key version {version}"), e))?;
        tracing::info!(version, token = %self.describe(), "root key version generated in the token");
        Ok(self.token_key(version))
    }

    /// Records on the object that `version` was retired at `at`. A version retired before
    /// keeps its first retirement time.
    pub fn retire(&self, version: u32, at: Timestamp) -> Result<(), KeyringError> {
        let _admin = lock(&self.token.admin);
        let what = format!("retiring root key version {version}");
        let found = self
            .token
            .with_session(|session| find_version(session, &self.prefix, version))
            .map_err(|e| self.err(&what, e))?;
        let (handle, retired) = match found.as_slice() {
            [] => {
                return Err(token_err(format!(
                    "{}: root key version {version} is not in the token",
                    self.describe()
                )))
            }
            [(handle, info)] => (*handle, info.retired_at.is_some()),
            _ => return Err(self.duplicate(version)),
        };
        if retired {
            return Ok(());
        }
        let label = retired_label(&self.prefix, version, at);
        self.token
            .with_session(|session| {
                session.update_attributes(handle, &[Attribute::Label(label.clone().into_bytes())])
            })
            .map_err(|e| self.err(&what, e))
    }

    /// Destroys the object of `version` (every one, should there be several). A version
    /// already gone is not an error: a destroy repeated after a crash finds nothing.
    pub fn destroy(&self, version: u32) -> Result<(), KeyringError> {
        let _admin = lock(&self.token.admin);
        self.token
            .with_session(|session| {
                for (handle, _) in find_version(session, &self.prefix, version)? {
                    session.destroy_object(handle)?;
                }
                Ok(())
            })
            .map_err(|e| self.err(&format!("destroying root key version {version}"), e))?;
        tracing::info!(version, token = %self.describe(), "root key version destroyed in the token");
        Ok(())
    }

    /// `token <label> (slot N) via <module>`, for messages.
    pub fn describe(&self) -> String {
        self.token.describe()
    }

    fn token_key(&self, version: u32) -> TokenKey {
        TokenKey {
            token: Arc::clone(&self.token),
            prefix: Arc::clone(&self.prefix),
            version,
        }
    }

    fn err(&self, what: &str, e: P11Error) -> KeyringError {
        token_err(format!("{}: {what}: {e}", self.describe()))
    }

    fn duplicate(&self, version: u32) -> KeyringError {
        token_err(format!(
            "{}: more than one object is root key version {version} ({}); remove the extra one",
            self.describe(),
            version_label(&self.prefix, version)
        ))
    }
}

/// One root key version in the token: seals and opens through it, never holds its bytes.
pub struct TokenKey {
    token: Arc<Token>,
    prefix: Arc<str>,
    version: u32,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenKey(v{})", self.version)
    }
}

impl TokenKey {
    /// Runs a GCM operation on this version's object, found anew each time (handles may
    /// change when the session is reopened; a destroyed version is simply not found).
    fn run<T>(
        &self, what: &str, mut op: impl FnMut(&Session, ObjectHandle) -> Result<T, P11Error>,
    ) -> Result<T, CryptoError> {
        let result = self.token.with_session(|session| {
            match find_version(session, &self.prefix, self.version)?.as_slice() {
                [(handle, _)] => op(session, *handle).map(Some),
                _ => Ok(None),
            }
        });
        match result {
            Ok(Some(out)) => Ok(out),
            Ok(None) => {
                tracing::warn!(version = self.version, token = %self.token.describe(),
                    "{what}: the root key version is not in the token (destroyed?) or not unique");
                Err(CryptoError)
            }
            // A failed tag check says nothing more than any other failed open.
            Err(P11Error::Pkcs11(
                RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
                _,
            )) => Err(CryptoError),
            Err(e) => {
                tracing::warn!(version = self.version, token = %self.token.describe(), error = %e,
                    "{what} with the root key in the token failed");
                Err(CryptoError)
            }
        }
    }
}

impl ExternalKey for TokenKey {
    fn version(&self) -> u32 {
        self.version
    }

    fn seal_with(
        &self, nonce: &mut [u8; NONCE_LEN], aad: &[u8], plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let (ciphertext, iv) = self.run("sealing", |session, handle| {
            // A token that chooses its own IV writes it into this buffer.
            let mut iv = *nonce;
            let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())?;
            let ciphertext = session.encrypt(&Mechanism::AesGcm(params), handle, plaintext)?;
            Ok((ciphertext, iv))
        })?;
        *nonce = iv;
        Ok(ciphertext)
    }

    fn open_with(
        &self, nonce: &[u8; NONCE_LEN], aad: &[u8], ciphertext_and_tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.run("opening", |session, handle| {
            let mut iv = *nonce;
            let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())?;
            let plain = session.decrypt(&Mechanism::AesGcm(params), handle, ciphertext_and_tag)?;
            Ok(Zeroizing::new(plain))
        })
    }
}

fn token_err(message: impl Into<String>) -> KeyringError {
    KeyringError::Token(message.into())
}

/// This vault's objects for `version`: id `version` and a label naming it under `prefix`.
fn find_version(
    session: &Session, prefix: &str, version: u32,
) -> Result<Vec<(ObjectHandle, TokenVersionInfo)>, P11Error> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Id(version.to_be_bytes().to_vec()),
    ];
    let mut found = Vec::new();
    for handle in session.find_objects(&template)? {
        if let Some(info) = read_version(session, handle, prefix)? {
            if info.version == version {
                found.push((handle, info));
            }
        }
    }
    Ok(found)
}

/// The version an object is, if its label parses under `prefix` and its id agrees.
fn read_version(
    session: &Session, handle: ObjectHandle, prefix: &str,
) -> Result<Option<TokenVersionInfo>, P11Error> {
    let attributes = session.get_attributes(handle, &[AttributeType::Label, AttributeType::Id])?;
    let (mut label, mut id) = (None, None);
    for attribute in attributes {
        match attribute {
            Attribute::Label(bytes) => label = Some(bytes),
            Attribute::Id(bytes) => id = Some(bytes),
            _ => {}
        }
    }
    let info = label
        .as_deref()
        .and_then(|label| parse_label(prefix, label));
    Ok(info.filter(|info| id.as_deref() == Some(&info.version.to_be_bytes()[..])))
}
