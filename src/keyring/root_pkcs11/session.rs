//! The process-wide side of the PKCS#11 root key source: loaded modules and logged-in
//! tokens.
//!
//! A module may be `C_Initialize`d only once per process, and tests run many vaults in one
//! process, so every module loaded stays in a registry by canonical path. Login state in
//! PKCS#11 belongs to the process and the token, not to a session: every `TokenRoot` of
//! one token shares one `Token`, whose single session sits behind a mutex (a session is not
//! safe for concurrent use; the root key is off the hot path, KEKs are cached). A second
//! open with a PIN other than the one logged in with is refused instead of riding on the
//! first login. The PIN stays in zeroizing memory to log in again when the token drops the
//! session (a restarted or reconnected network HSM).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::RawAuthPin;

use crate::crypto::{mac_eq, Zeroizing};
use crate::keyring::KeyringError;

use super::names::read_pin;
use super::{token_err, Pkcs11Settings, TokenSelector};

/// Modules loaded by this process, and the tokens logged in to.
#[derive(Default)]
struct Registry {
    /// By canonical path: the same library named two ways is still initialised once.
    modules: HashMap<PathBuf, Pkcs11>,
    /// By (canonical module path, slot id); an entry dies with the last `TokenRoot` of it.
    tokens: HashMap<(PathBuf, u64), Weak<Token>>,
}

static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();

/// Locks a mutex. A panic while it was held leaves nothing half-done here (a session is
/// either in place or gone), so a poisoned lock is used as it is.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A logged-in token, shared by every `TokenRoot` and `TokenKey` of it in this process.
pub(super) struct Token {
    ctx: Pkcs11,
    /// As configured, for messages.
    pub(super) module: PathBuf,
    slot: Slot,
    pub(super) label: String,
    /// To log in again after the token lost the session, and to check a second open's PIN.
    pin: Zeroizing<Vec<u8>>,
    /// The one session; `None` after it was lost, until the next operation reopens it.
    session: Mutex<Option<Session>>,
    /// Serialises generate, retire and destroy (each checks, then changes).
    pub(super) admin: Mutex<()>,
}

impl Token {
    /// `token <label> (slot N) via <module>`.
    pub(super) fn describe(&self) -> String {
        describe(&self.label, self.slot, &self.module)
    }

    fn open_session(&self) -> Result<Session, P11Error> {
        let session = self.ctx.open_rw_session(self.slot)?;
        login(&session, &self.pin)?;
        Ok(session)
    }

    /// Runs `op` on the session. If the token lost the session, opens and logs in a new
    /// one and runs `op` once more.
    pub(super) fn with_session<T>(
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

fn describe(label: &str, slot: Slot, module: &Path) -> String {
    format!(
        "token {label} (slot {}) via {}",
        slot.id(),
        module.display()
    )
}

/// The logged-in token `settings` name: loads the module (once per process), finds the
/// token, reads the PIN and logs in, or joins this process's login to it. Each refusal
/// says which part is wrong, never the PIN.
pub(super) fn log_in(settings: &Pkcs11Settings) -> Result<Arc<Token>, KeyringError> {
    let canonical = std::fs::canonicalize(&settings.module).map_err(|e| {
        let problem = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_owned(),
            _ => e.to_string(),
        };
        token_err(format!("module {}: {problem}", settings.module.display()))
    })?;
    let mut registry = lock(REGISTRY.get_or_init(Mutex::default));
    let ctx = load_module(&mut registry, &canonical, &settings.module)?;
    let (slot, label) = find_token(&ctx, &settings.token, &settings.module)?;
    let pin = read_pin(&settings.pin)?;
    registry.tokens.retain(|_, token| token.strong_count() > 0);
    let key = (canonical, slot.id());
    if let Some(token) = registry.tokens.get(&key).and_then(Weak::upgrade) {
        if !mac_eq(&token.pin, &pin) {
            return Err(token_err(format!(
                "{}: the PIN is not the one this process logged in with",
                token.describe()
            )));
        }
        return Ok(token);
    }
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
    Ok(token)
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

/// Logs `session` in as the user. A token that another session of this process is logged
/// in to already is fine: the login is the process's.
fn login(session: &Session, pin: &[u8]) -> Result<(), P11Error> {
    let pin = RawAuthPin::new(Box::new(pin.to_vec()));
    match session.login_with_raw(UserType::User, &pin) {
        Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        other => other,
    }
}

/// Explains a failed first login: a wrong, locked or expired PIN, or another failure.
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
        _ => format!("opening a session and logging in: {e}"),
    };
    token_err(format!("{}: {problem}", token.describe()))
}

/// The module's context, loading and initialising it on first use in this process. A
/// module that another part of the process initialised already is used as it is.
fn load_module(
    registry: &mut Registry, canonical: &Path, configured: &Path,
) -> Result<Pkcs11, KeyringError> {
    if let Some(ctx) = registry.modules.get(canonical) {
        return Ok(ctx.clone());
    }
    let module = configured.display();
    let ctx = Pkcs11::new(canonical).map_err(|e| {
        token_err(format!(
            "module {module} cannot be loaded as a PKCS#11 library: {e}"
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(token_err(format!(
                "module {module} failed to initialise: {e}"
            )))
        }
    }
    registry
        .modules
        .insert(canonical.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// The slot of the selected token and the token's label. Refuses a token without a user
/// PIN or without CKM_AES_GCM.
fn find_token(
    ctx: &Pkcs11, selector: &TokenSelector, module: &Path,
) -> Result<(Slot, String), KeyringError> {
    let fail =
        |what: &str, e: P11Error| token_err(format!("module {}: {what}: {e}", module.display()));
    let mut tokens = Vec::new();
    for slot in ctx
        .get_slots_with_token()
        .map_err(|e| fail("listing slots", e))?
    {
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| fail("reading a token's information", e))?;
        tokens.push((slot, info));
    }
    let matching: Vec<_> = tokens
        .iter()
        .filter(|(slot, info)| match selector {
            TokenSelector::Label(label) => info.token_initialized() && info.label() == label,
            TokenSelector::Slot(id) => slot.id() == *id,
        })
        .collect();
    let (slot, info) = match matching.as_slice() {
        [one] => *one,
        [] => {
            let seen: Vec<String> = tokens
                .iter()
                .filter(|(_, info)| info.token_initialized())
                .map(|(slot, info)| format!("{} (slot {})", info.label(), slot.id()))
                .collect();
            let wanted = match selector {
                TokenSelector::Label(label) => format!("no token labelled {label}"),
                TokenSelector::Slot(id) => format!("no token in slot {id}"),
            };
            return Err(token_err(format!(
                "module {} has {wanted} (initialised tokens: {})",
                module.display(),
                if seen.is_empty() {
                    "none".to_owned()
                } else {
                    seen.join(", ")
                }
            )));
        }
        several => {
            return Err(token_err(format!(
                "module {}: {} tokens match {selector:?}; select one by slot",
                module.display(),
                several.len()
            )))
        }
    };
    let token = describe(info.label(), *slot, module);
    if !info.token_initialized() || !info.user_pin_initialized() {
        return Err(token_err(format!(
            "{token} is not initialised (no user PIN)"
        )));
    }
    let mechanisms = ctx
        .get_mechanism_list(*slot)
        .map_err(|e| token_err(format!("{token}: listing its mechanisms: {e}")))?;
    if !mechanisms.contains(&MechanismType::AES_GCM) {
        return Err(token_err(format!(
            "{token} does not offer CKM_AES_GCM, which every root key wrap uses"
        )));
    }
    Ok((*slot, info.label().to_owned()))
}
