//! What a start prepares in its data directory. Every start: the data directory and the
//! store directory (mode 0700), and a root key file (mode 0600) for a new store. A dev start
//! (`serve --dev`) also marks the directory as a dev one (`DEV_MARK`) and, when the TLS
//! paths are the dev defaults, creates the dev PKI and a dev policy that lets the dev
//! client certificate do everything. A configured start refuses a dev directory and dev TLS
//! paths, so nothing allow-all is ever made or used without `--dev`. Called by `serve` and
//! by the tests' harness; configuration itself does no file I/O.

use std::path::Path;

use crate::authz::Policy;
use crate::certs::DEV_CLIENT_ID;
use crate::config::{Backend, Config, ConfigError};
use crate::keyring::{RootKeys, RootSource};

#[derive(Debug, Default)]
pub struct Bootstrapped {
    pub root_key: bool,
    pub dev_certs: bool,
    pub dev_policy: bool,
}

/// The file that marks a data directory made by a dev start.
pub const DEV_MARK: &str = "DEV-MODE";

/// How a start treats its data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartMode {
    /// `serve --dev`: a directory of its own, marked, with generated dev certificates and
    /// an allow-all policy.
    Dev,
    /// A real deployment's start, from a configuration file.
    Configured,
}

/// Prepares a start: creates the data directory, a root key file (mode 0600) if the store
/// is new, and, in dev mode, the dev mark and the dev PKI and policy if the TLS paths are
/// the defaults and missing. Refuses to invent a root key for a store that already holds
/// data, a configured start on a dev directory or with dev TLS paths, and a dev start on a
/// directory that holds data but was not made by one.
pub fn bootstrap(config: &Config, mode: StartMode) -> Result<Bootstrapped, ConfigError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ConfigError::Io { path, source }
    };
    let mark = config.data_dir.join(DEV_MARK);
    let in_use = config.root_key_file.exists() || config.store_dir().exists();
    match mode {
        StartMode::Configured if mark.exists() => {
            return Err(ConfigError::Invalid(format!(
                "{} is a dev data directory (made by `serve --dev`: dev certificates, an \
                 allow-all policy); start it with --dev, or give a real deployment a data \
                 directory of its own",
                config.data_dir.display()
            )))
        }
        StartMode::Configured if config.dev_tls => {
            return Err(ConfigError::Invalid(
                "no TLS certificates are configured (tls.cert, tls.key, tls.client_ca): a \
                 real deployment names its own (`pii-vault certs` makes them); `serve --dev` \
                 generates dev ones"
                    .into(),
            ))
        }
        StartMode::Dev if in_use && !mark.exists() => {
            return Err(ConfigError::Invalid(format!(
                "{} holds a vault that was not made by `serve --dev`: dev mode would give it \
                 dev certificates and an allow-all policy, so it refuses. Start it with its \
                 configuration, or, if it is a dev directory (a restored dev backup, or one \
                 made before dev mode was marked), create the file {} in it",
                config.data_dir.display(),
                DEV_MARK
            )))
        }
        _ => {}
    }
    crate::storage::private_dir(&config.data_dir).map_err(io(&config.data_dir))?;
    if mode == StartMode::Dev && !mark.exists() {
        crate::certs::write_file(
            &mark,
            b"This data directory was made by `pii-vault serve --dev`: dev certificates, an\n\
              allow-all policy and a root key file kept beside the data. Never store real\n\
              personal data here. A start without --dev refuses it.\n",
            false,
        )?;
    }
    let mut done = Bootstrapped::default();
    // A root key in a PKCS#11 token is made in the token at the first start, never here.
    let file_root = matches!(config.root_source, RootSource::File(_));
    if file_root && !config.root_key_file.exists() {
        if config.store_dir().exists() {
            return Err(ConfigError::Invalid(format!(
                "root key file {} is missing but {} already holds data; restore the key file (a new key cannot read the old data)",
                config.root_key_file.display(),
                config.store_dir().display()
            )));
        }
        RootKeys::generate()?.save(&config.root_key_file)?;
        done.root_key = true;
    }
    if config.backend == Backend::Sled {
        let store = config.store_dir();
        crate::storage::private_dir(&store).map_err(io(&store))?;
    }
    let dev_tls = mode == StartMode::Dev && config.dev_tls;
    let pki = config.dev_pki();
    if dev_tls && !pki.exists() {
        pki.create()?;
        done.dev_certs = true;
    }
    if dev_tls && !config.policy_file.exists() {
        crate::certs::write_file(
            &config.policy_file,
            Policy::dev_default_text(DEV_CLIENT_ID).as_bytes(),
            false,
        )?;
        done.dev_policy = true;
    }
    Ok(done)
}
