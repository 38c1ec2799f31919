//! The root key in a PKCS#11 token (an HSM): each root key version is a non-extractable
//! AES-256 key object that the token generated, and every wrap and unwrap under it is an
//! AES-GCM operation inside the token (`TokenKey`, through `crypto::ExternalKey`), so the
//! key's bytes never reach this process.
//!
//! Objects are found by name: the label `<prefix>-v<N>` and the id `N` (4 bytes, big-endian).
//! Retirement is recorded on the object itself (the vault has no other place for it): its
//! label becomes `<prefix>-v<N>-retired-<unix micros>`; a retired version still decrypts.
//! Destroying a version destroys its object (`C_DestroyObject`).
//!
//! A module may be initialised only once per process, and tests open many vaults in one
//! process, so loaded modules live in a process-wide registry. So do logins: PKCS#11 login
//! state belongs to the process, not to a session, so every `TokenRoot` of one token shares
//! one logged-in session (behind a mutex: a session is not safe for concurrent use), and a
//! second open with another PIN is refused rather than riding on the first login. The PIN
//! is kept in zeroizing memory to log in again when the token drops the session.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::RawAuthPin;

use crate::crypto::{mac_eq, CryptoError, ExternalKey, Zeroizing, NONCE_LEN};
use crate::domain::Timestamp;

use super::KeyringError;

/// GCM tag length the envelope expects (`crypto::TAG_LEN` bytes).
const TAG_BITS: u64 = 128;
/// What the label of a retired version adds after `-v<N>`.
const RETIRED: &str = "-retired-";

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

/// Modules loaded by this process, by canonical path, and the logged-in tokens.
#[derive(Default)]
struct Registry {
    modules: HashMap<PathBuf, Pkcs11>,
    /// By (canonical module path, slot id); an entry dies with the last `TokenRoot`.
    tokens: HashMap<(PathBuf, u64), Weak<Token>>,
}

static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();

/// Locks a mutex; a panic elsewhere while holding it leaves nothing half-done that matters
/// here (a session is either open or gone).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A logged-in token, shared by every `TokenRoot` and `TokenKey` of it in this process.
struct Token {
    ctx: Pkcs11,
    module: PathBuf,
    slot: Slot,
    label: String,
    /// To log in again after the token lost the session, and to check a second open's PIN.
    pin: Zeroizing<Vec<u8>>,
    /// The one session; `None` after it was lost, until the next operation reopens it.
    session: Mutex<Option<Session>>,
    /// Serialises generate, retire and destroy (check, then change).
    admin: Mutex<()>,
}

impl Token {
    fn describe(&self) -> String {
        format!(
            "token {} (slot {}) via {}",
            self.label,
            self.slot.id(),
            self.module.display()
        )
    }

    fn open_session(&self) -> Result<Session, P11Error> {
        let session = self.ctx.open_rw_session(self.slot)?;
        login(&session, &self.pin)?;
        Ok(session)
    }

    /// Runs `op` on the session; if the token lost the session (a restarted or reconnected
    /// HSM), opens and logs in a new one and runs `op` once more.
    fn with_session<T>(
        &self, mut op: impl FnMut(&Session) -> Result<T, P11Error>,
    ) -> Result<T, P11Error> {
        let mut slot = lock(&self.session);
        let session = match slot.take() {
            Some(session) => session,
            None => self.open_session()?,
        };
        match op(&session) {
            Err(e) if session_lost(&e) => {
                drop(session);
                let session = self.open_session()?;
                let result = op(&session);
                *slot = Some(session);
                result
            }
            result => {
                *slot = Some(session);
                result
            }
        }
    }
}

/// Errors after which a new session (and login) may succeed.
fn session_lost(e: &P11Error) -> bool {
    matches!(
        e,
        P11Error::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::UserNotLoggedIn,
            _
        )
    )
}

/// Logs `session` in as the user. Login state is per process and token, so a token some
/// other session of this process already logged in to is fine.
fn login(session: &Session, pin: &[u8]) -> Result<(), P11Error> {
    let pin = RawAuthPin::new(Box::new(pin.to_vec()));
    match session.login_with_raw(UserType::User, &pin) {
        Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        other => other,
    }
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
        let module = std::fs::canonicalize(&settings.module).map_err(|e| {
            token_err(format!(
                "module {}: {}",
                settings.module.display(),
                match e.kind() {
                    std::io::ErrorKind::NotFound => "no such file".to_owned(),
                    _ => e.to_string(),
                }
            ))
        })?;
        let mut registry = lock(REGISTRY.get_or_init(Mutex::default));
        let ctx = load_module(&mut registry, &module, &settings.module)?;
        let (slot, label) = find_token(&ctx, &settings.token, &settings.module)?;
        let key = (module.clone(), slot.id());
        let pin = read_pin(&settings.pin)?;
        registry.tokens.retain(|_, token| token.strong_count() > 0);
        let token = match registry.tokens.get(&key).and_then(Weak::upgrade) {
            Some(token) if mac_eq(&token.pin, &pin) => token,
            Some(token) => {
                return Err(token_err(format!(
                    "{}: the PIN is not the one this process logged in with",
                    token.describe()
                )))
            }
            None => {
                let token = Token {
                    ctx,
                    module: settings.module.clone(),
                    slot,
                    label,
                    pin,
                    session: Mutex::new(None),
                    admin: Mutex::new(()),
                };
                let session = token.open_session().map_err(|e| login_err(&token, e))?;
                *lock(&token.session) = Some(session);
                let token = Arc::new(token);
                registry.tokens.insert(key, Arc::downgrade(&token));
                token
            }
        };
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
        let found = self
            .token
            .with_session(|session| {
                let mut found = Vec::new();
                for handle in session.find_objects(&template)? {
                    if let Some(info) = read_version(session, handle, &self.prefix)? {
                        found.push(info);
                    }
                }
                Ok(found)
            })
            .map_err(|e| self.err("listing the key versions", e))?;
        let mut versions: Vec<TokenVersionInfo> = found.into_iter().map(|(info, _)| info).collect();
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

/// The module's context, loading and initialising it on first use in this process. A
/// module some other part of the process initialised already is used as it is.
fn load_module(
    registry: &mut Registry, canonical: &Path, configured: &Path,
) -> Result<Pkcs11, KeyringError> {
    if let Some(ctx) = registry.modules.get(canonical) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(canonical).map_err(|e| {
        token_err(format!(
            "module {} cannot be loaded as a PKCS#11 library: {e}",
            configured.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(token_err(format!(
                "module {} failed to initialise: {e}",
                configured.display()
            )))
        }
    }
    registry
        .modules
        .insert(canonical.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// The slot of the selected token and the token's label; checks that it offers AES-GCM.
fn find_token(
    ctx: &Pkcs11, selector: &TokenSelector, module: &Path,
) -> Result<(Slot, String), KeyringError> {
    let module = module.display();
    let fail = |what: &str, e: P11Error| token_err(format!("module {module}: {what}: {e}"));
    let mut tokens = Vec::new();
    for slot in ctx
        .get_slots_with_token()
        .map_err(|e| fail("listing slots", e))?
    {
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| fail("reading a token", e))?;
        tokens.push((slot, info));
    }
    let seen = || {
        let labels: Vec<String> = tokens
            .iter()
            .filter(|(_, info)| info.token_initialized())
            .map(|(slot, info)| format!("{} (slot {})", info.label(), slot.id()))
            .collect();
        if labels.is_empty() {
            "none".to_owned()
        } else {
            labels.join(", ")
        }
    };
    let matching: Vec<_> = tokens
        .iter()
        .filter(|(slot, info)| match selector {
            TokenSelector::Label(label) => info.token_initialized() && info.label() == label,
            TokenSelector::Slot(id) => slot.id() == *id,
        })
        .collect();
    let (slot, info) = match (matching.as_slice(), selector) {
        ([one], _) => *one,
        ([], TokenSelector::Label(label)) => {
            return Err(token_err(format!(
                "module {module} has no token labelled {label} (initialised tokens: {})",
                seen()
            )))
        }
        ([], TokenSelector::Slot(id)) => {
            return Err(token_err(format!(
                "module {module} has no token in slot {id} (initialised tokens: {})",
                seen()
            )))
        }
        (_, _) => {
            return Err(token_err(format!(
                "module {module}: {} tokens match {selector:?}; select one by slot",
                matching.len()
            )))
        }
    };
    let token = format!("token {} (slot {}) via {module}", info.label(), slot.id());
    if !info.token_initialized() || !info.user_pin_initialized() {
        return Err(token_err(format!(
            "{token} is not initialised (no user PIN)"
        )));
    }
    let mechanisms = ctx
        .get_mechanism_list(*slot)
        .map_err(|e| token_err(format!("{token}: listing mechanisms: {e}")))?;
    if !mechanisms.contains(&MechanismType::AES_GCM) {
        return Err(token_err(format!(
            "{token} does not offer CKM_AES_GCM, which every root key wrap uses"
        )));
    }
    Ok((*slot, info.label().to_owned()))
}

/// Explains a failed first login: a wrong or locked PIN, or another failure.
fn login_err(token: &Token, e: P11Error) -> KeyringError {
    let problem = match &e {
        P11Error::Pkcs11(RvError::PinIncorrect, _) => {
            "the token refused the PIN (CKR_PIN_INCORRECT)".to_owned()
        }
        P11Error::Pkcs11(RvError::PinLocked, _) => {
            "the user PIN is locked after too many wrong attempts (CKR_PIN_LOCKED)".to_owned()
        }
        P11Error::Pkcs11(RvError::PinExpired, _) => "the user PIN has expired".to_owned(),
        P11Error::Pkcs11(RvError::PinLenRange, _) => {
            "the PIN's length is out of the token's range".to_owned()
        }
        _ => format!("logging in: {e}"),
    };
    token_err(format!("{}: {problem}", token.describe()))
}

/// Reads the PIN from its file (which only its owner may read) or environment variable,
/// without a trailing newline.
fn read_pin(source: &PinSource) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
    let (mut pin, what) = match source {
        PinSource::File(path) => {
            let what = format!("PIN file {}", path.display());
            let fail = |problem: String| token_err(format!("{what}: {problem}"));
            let mut file = File::open(path).map_err(|e| {
                fail(match e.kind() {
                    std::io::ErrorKind::NotFound => "no such file".to_owned(),
                    _ => e.to_string(),
                })
            })?;
            let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
            if !meta.is_file() {
                return Err(fail("not a regular file".to_owned()));
            }
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(fail(format!(
                    "its mode is {:o}: group and others must have no access (chmod 600)",
                    mode & 0o777
                )));
            }
            // Room for the whole file up front, so no partial copy is left behind by a
            // reallocation.
            let len = usize::try_from(meta.len()).unwrap_or(0).min(4096);
            let mut pin = Zeroizing::new(Vec::with_capacity(len + 1));
            file.read_to_end(&mut pin)
                .map_err(|e| fail(e.to_string()))?;
            (pin, what)
        }
        PinSource::Env(name) => {
            let what = format!("PIN environment variable {name}");
            match std::env::var_os(name) {
                Some(value) => (Zeroizing::new(value.into_vec()), what),
                None => return Err(token_err(format!("{what} is not set"))),
            }
        }
    };
    while matches!(pin.last(), Some(b'\n' | b'\r')) {
        pin.pop();
    }
    if pin.is_empty() {
        return Err(token_err(format!("{what} is empty")));
    }
    Ok(pin)
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
        if let Some((info, handle)) = read_version(session, handle, prefix)? {
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
) -> Result<Option<(TokenVersionInfo, ObjectHandle)>, P11Error> {
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
    Ok(info
        .filter(|info| id.as_deref() == Some(&info.version.to_be_bytes()[..]))
        .map(|info| (info, handle)))
}

fn version_label(prefix: &str, version: u32) -> String {
    format!("{prefix}-v{version}")
}

fn retired_label(prefix: &str, version: u32, at: Timestamp) -> String {
    format!("{prefix}-v{version}{RETIRED}{}", at.0)
}

/// Parses `<prefix>-v<N>` or `<prefix>-v<N>-retired-<micros>`, numbers in canonical decimal
/// (no sign, no leading zero), so each version has exactly one label.
fn parse_label(prefix: &str, label: &[u8]) -> Option<TokenVersionInfo> {
    let rest = std::str::from_utf8(label)
        .ok()?
        .strip_prefix(prefix)?
        .strip_prefix("-v")?;
    let (version, retired_at) = match rest.split_once(RETIRED) {
        Some((version, at)) => (version, Some(Timestamp(canonical_number(at)?))),
        None => (rest, None),
    };
    let version = u32::try_from(canonical_number(version)?).ok()?;
    Some(TokenVersionInfo {
        version,
        retired_at,
    })
}

fn canonical_number(text: &str) -> Option<u64> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(label: &str) -> Option<(u32, Option<u64>)> {
        parse_label("pii-vault-root", label.as_bytes())
            .map(|info| (info.version, info.retired_at.map(|at| at.0)))
    }

    #[test]
    fn labels_round_trip() {
        let label = version_label("pii-vault-root", 3);
        assert_eq!(label, "pii-vault-root-v3");
        assert_eq!(parsed(&label), Some((3, None)));
        let label = retired_label("pii-vault-root", 3, Timestamp(1_700_000_000_123_456));
        assert_eq!(label, "pii-vault-root-v3-retired-1700000000123456");
        assert_eq!(parsed(&label), Some((3, Some(1_700_000_000_123_456))));
        assert_eq!(parsed("pii-vault-root-v4294967295"), Some((u32::MAX, None)));
    }

    #[test]
    fn foreign_and_malformed_labels_are_not_versions() {
        for label in [
            "other-v1",
            "pii-vault-root",
            "pii-vault-root-v",
            "pii-vault-root-1",
            "pii-vault-root-v01",
            "pii-vault-root-v+1",
            "pii-vault-root-v-1",
            "pii-vault-root-v1 ",
            "pii-vault-root-v4294967296",
            "pii-vault-root-v1-retired-",
            "pii-vault-root-v1-retired-x",
            "pii-vault-root-v1-retired-01",
            "pii-vault-root-v1-retired-5-retired-6",
            // another vault whose prefix extends this one
            "pii-vault-root-v1-v2",
            "pii-vault-root-prod-v1",
        ] {
            assert_eq!(parsed(label), None, "{label}");
        }
        assert_eq!(parse_label("p", &[0xff, b'-', b'v', b'1']), None);
    }
}
