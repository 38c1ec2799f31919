//! A throw-away SoftHSM2 for the tests of the PKCS#11 root key source.
//!
//! One setup per test process, made on first use: a temporary directory with a
//! `softhsm2.conf` whose token directory is inside it, and `SOFTHSM2_CONF` pointing there,
//! set before the module is initialised (SoftHSM2 reads it once, at `C_Initialize`). Every
//! call to `token()` then initialises a fresh token of its own (unique label, random PINs,
//! the user PIN in a 0600 file) and returns the settings to open it.
//!
//! Tokens are made in-process (`C_InitToken` on the free slot, then `C_InitPIN`):
//! SoftHSM2 scans its token directory only at `C_Initialize`, so a token made by
//! `softhsm2-util --init-token` after this process initialised the module stays invisible
//! to it. Creation is serialised (two threads must not pick the same free slot); tests of
//! one process may otherwise use their tokens in parallel.
//!
//! Without `/usr/lib/softhsm/libsofthsm2.so`, `token()` prints why and returns `None` (the
//! caller skips), or panics when `CI` is set, where the library must be installed.
//!
//! Use it before any `TokenRoot::open` of the SoftHSM2 module in the process: an open that
//! came first would initialise the module with the system's configuration.

#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use pii_vault::keyring::{PinSource, Pkcs11Settings, TokenSelector};

/// Where Debian and Ubuntu install the SoftHSM2 module.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A token made for one test.
pub struct TestToken {
    /// Opens the token by its label, the PIN from `pin_file`.
    pub settings: Pkcs11Settings,
    pub label: String,
    /// The slot it is in, as this process numbers it.
    pub slot: u64,
    /// The user PIN, for tests that check it never shows up in a message.
    pub pin: String,
    pub pin_file: PathBuf,
    /// A directory of this token's own, for the test's files.
    pub dir: PathBuf,
}

struct SoftHsm {
    ctx: Pkcs11,
    /// Keeps the token directory, the configuration and the PIN files until the process ends.
    dir: tempfile::TempDir,
    next: AtomicU32,
    /// Held while a token is made: the free slot is shared.
    creating: Mutex<()>,
}

static SOFTHSM: OnceLock<Result<SoftHsm, String>> = OnceLock::new();

/// A fresh token, or `None` (printed) when SoftHSM2 is not installed here.
pub fn token(test: &str) -> Option<TestToken> {
    let hsm = match SOFTHSM.get_or_init(setup) {
        Ok(hsm) => hsm,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("{test}: SoftHSM2 is required in CI: {why}")
        }
        Err(why) => {
            eprintln!("!!!!! skipped {test}: {why} !!!!!");
            return None;
        }
    };
    Some(hsm.new_token())
}

/// The module's context as this process initialised it, to look at tokens directly.
pub fn context() -> Pkcs11 {
    match SOFTHSM.get_or_init(setup) {
        Ok(hsm) => hsm.ctx.clone(),
        Err(why) => panic!("no SoftHSM2: {why}"),
    }
}

fn setup() -> Result<SoftHsm, String> {
    if !Path::new(MODULE).exists() {
        return Err(format!(
            "no SoftHSM2 module at {MODULE} (install the softhsm2 package)"
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("pii-vault-softhsm")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).map_err(|e| format!("token dir: {e}"))?;
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .map_err(|e| format!("write {}: {e}", conf.display()))?;
    // Once per process, before the module is initialised; every test of the process shares it.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let ctx = Pkcs11::new(MODULE).map_err(|e| format!("load {MODULE}: {e}"))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
            return Err(format!(
                "{MODULE} was initialised in this process before the test configuration was set"
            ))
        }
        Err(e) => return Err(format!("initialise {MODULE}: {e}")),
    }
    Ok(SoftHsm {
        ctx,
        dir,
        next: AtomicU32::new(0),
        creating: Mutex::new(()),
    })
}

impl SoftHsm {
    fn new_token(&self) -> TestToken {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Token labels have at most 32 bytes.
        let label = format!("pv-{}-{n}", std::process::id());
        let pin = random_pin("user");
        let so_pin = AuthPin::from(random_pin("so"));
        let slot = {
            let _creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
            let slot = self.free_slot();
            self.ctx
                .init_token(slot, &so_pin, &label)
                .expect("C_InitToken on the free slot");
            let session = self.ctx.open_rw_session(slot).expect("open a session");
            session
                .login(UserType::So, Some(&so_pin))
                .expect("log in as SO");
            session
                .init_pin(&AuthPin::from(pin.clone()))
                .expect("C_InitPIN");
            // Closing the only session logs the SO out.
            drop(session);
            slot
        };
        let dir = self.dir.path().join(&label);
        std::fs::create_dir(&dir).expect("token's dir");
        let pin_file = dir.join("pin");
        write_private(&pin_file, &pin);
        TestToken {
            settings: Pkcs11Settings {
                module: PathBuf::from(MODULE),
                token: TokenSelector::Label(label.clone()),
                pin: PinSource::File(pin_file.clone()),
                key_label_prefix: "pii-vault-root".to_owned(),
            },
            label,
            slot: slot.id(),
            pin,
            pin_file,
            dir,
        }
    }

    /// The slot whose token is not initialised yet (SoftHSM2 always keeps one).
    fn free_slot(&self) -> Slot {
        self.ctx
            .get_slots_with_token()
            .expect("list slots")
            .into_iter()
            .find(|slot| {
                !self
                    .ctx
                    .get_token_info(*slot)
                    .expect("token info")
                    .token_initialized()
            })
            .expect("SoftHSM2 has a free slot")
    }
}

/// A PIN nobody would find in a message by chance.
fn random_pin(kind: &str) -> String {
    let mut bytes = [0u8; 8];
    pii_vault::crypto::fill_random(&mut bytes).expect("random");
    format!("{kind}-{}", hex::encode(bytes))
}

/// Writes `text` to a new file with mode 0600.
pub fn write_private(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("create a 0600 file");
    file.write_all(text.as_bytes()).expect("write");
}
