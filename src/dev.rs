//! What a first dev start creates on a fresh machine: the data directory and the store
//! directory (mode 0700), a root key file
//! (mode 0600) and, when the TLS paths are the dev defaults, the dev PKI and a dev policy
//! that lets the dev client certificate do everything. Called by `serve` and by the tests'
//! harness; configuration itself does no file I/O.

use std::path::Path;

use crate::authz::Policy;
use crate::certs::DEV_CLIENT_ID;
use crate::config::{Backend, Config, ConfigError};
use crate::keyring::RootKeys;

#[derive(Debug, Default)]
pub struct Bootstrapped {
    pub root_key: bool,
    pub dev_certs: bool,
    pub dev_policy: bool,
}

/// Prepares a first start: creates the data directory, a root key file (mode 0600) if the
/// store is new, and the dev PKI if the TLS paths are the defaults and missing. Refuses to
/// invent a root key for a store that already holds data.
pub fn bootstrap(config: &Config) -> Result<Bootstrapped, ConfigError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ConfigError::Io { path, source }
    };
    crate::storage::private_dir(&config.data_dir).map_err(io(&config.data_dir))?;
    let mut done = Bootstrapped::default();
    if !config.root_key_file.exists() {
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
    let pki = config.dev_pki();
    if config.dev_tls && !pki.exists() {
        pki.create()?;
        done.dev_certs = true;
    }
    if config.dev_tls && !config.policy_file.exists() {
        crate::certs::write_file(
            &config.policy_file,
            Policy::dev_default_text(DEV_CLIENT_ID).as_bytes(),
            false,
        )?;
        done.dev_policy = true;
    }
    Ok(done)
}
