//! Validation of where the root key lives (`[keys] root`, `root_key_file`), the erasure
//! ledger beside it, and the backup window (`[backup]`) that decides how long retired root
//! key versions are kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::keyring::{PinSource, Pkcs11Settings, RootSource, TokenSelector};

use super::raw::{RawBackup, RawKeys, RawRootSource};
use super::{bounded, ConfigError};

/// The label prefix of root key objects in a token unless configured.
const DEFAULT_LABEL_PREFIX: &str = "pii-vault-root";
/// The longest backup window: the privacy policy keeps backups up to 30 days.
const MAX_BACKUP_DAYS: u64 = 30;

impl RawBackup {
    /// How long retired root key versions are kept to open backups.
    pub(super) fn window(&self) -> Result<Duration, ConfigError> {
        let days = bounded(
            "backup.retention_days",
            u64::from(self.retention_days.unwrap_or(30)),
            0,
            MAX_BACKUP_DAYS,
        )?;
        Ok(Duration::from_secs(days * 86_400))
    }
}

impl RawKeys {
    /// The root key file's path (meaningful for the file source) and the root key source.
    pub(super) fn root_source(
        &self, data_dir: &Path,
    ) -> Result<(PathBuf, RootSource), ConfigError> {
        let default_file = || {
            self.root_key_file
                .clone()
                .unwrap_or_else(|| data_dir.join("root.key"))
        };
        let Some(raw) = &self.root else {
            let file = default_file();
            return Ok((file.clone(), RootSource::File(file)));
        };
        match raw.kind.as_str() {
            "file" => {
                only_for(
                    "file",
                    &[
                        ("module", raw.module.is_some()),
                        ("token_label", raw.token_label.is_some()),
                        ("slot", raw.slot.is_some()),
                        ("pin_file", raw.pin_file.is_some()),
                        ("pin_env", raw.pin_env.is_some()),
                        ("key_label_prefix", raw.key_label_prefix.is_some()),
                    ],
                )?;
                let file =
                    match (&raw.path, &self.root_key_file) {
                        (Some(a), Some(b)) if a != b => return Err(ConfigError::Invalid(
                            "keys.root.path and keys.root_key_file name different files; set one"
                                .into(),
                        )),
                        (Some(a), _) => a.clone(),
                        (None, _) => default_file(),
                    };
                Ok((file.clone(), RootSource::File(file)))
            }
            "pkcs11" => {
                only_for("pkcs11", &[("path", raw.path.is_some())])?;
                if self.root_key_file.is_some() {
                    return Err(ConfigError::Invalid(
                        "keys.root_key_file is set but keys.root.kind is \"pkcs11\": the root \
                         key is in the token; remove root_key_file"
                            .into(),
                    ));
                }
                let settings = pkcs11_settings(raw)?;
                Ok((data_dir.join("root.key"), RootSource::Pkcs11(settings)))
            }
            other => Err(ConfigError::Invalid(format!(
                "keys.root.kind is {other:?}; it must be \"file\" or \"pkcs11\""
            ))),
        }
    }

    /// Where the erasure ledger is: as configured, else beside the root key file (a token
    /// root: in the data directory); none by default on a shared store.
    pub(super) fn erasure_ledger(
        &self, source: &RootSource, data_dir: &Path, shared_store: bool,
    ) -> Option<PathBuf> {
        if let Some(path) = &self.erasure_ledger {
            return Some(path.clone());
        }
        if shared_store {
            return None;
        }
        Some(match source {
            RootSource::File(file) => match file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.join("erasure.ledger"),
                _ => PathBuf::from("erasure.ledger"),
            },
            RootSource::Pkcs11(_) => data_dir.join("erasure.ledger"),
        })
    }
}

/// The token, PIN source and label prefix of a `kind = "pkcs11"` root.
fn pkcs11_settings(raw: &RawRootSource) -> Result<Pkcs11Settings, ConfigError> {
    let module = raw.module.clone().ok_or_else(|| {
        ConfigError::Invalid(
            "keys.root.kind is \"pkcs11\" but keys.root.module (the HSM's PKCS#11 \
             library) is not set"
                .into(),
        )
    })?;
    let token = match (&raw.token_label, raw.slot) {
        (Some(label), None) if !label.is_empty() => TokenSelector::Label(label.clone()),
        (None, Some(slot)) => TokenSelector::Slot(slot),
        _ => {
            return Err(ConfigError::Invalid(
                "keys.root: set exactly one of token_label and slot".into(),
            ))
        }
    };
    let pin = match (&raw.pin_file, &raw.pin_env) {
        (Some(file), None) => PinSource::File(file.clone()),
        (None, Some(var)) if !var.is_empty() => PinSource::Env(var.clone()),
        _ => {
            return Err(ConfigError::Invalid(
                "keys.root: set exactly one of pin_file and pin_env (the PIN is \
                 never written in the configuration)"
                    .into(),
            ))
        }
    };
    let prefix = raw
        .key_label_prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_LABEL_PREFIX.into());
    let fine = !prefix.is_empty()
        && prefix.len() <= 48
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !fine {
        return Err(ConfigError::Invalid(
            "keys.root.key_label_prefix must be 1 to 48 letters, digits, '-', '_' \
             or '.'"
                .into(),
        ));
    }
    Ok(Pkcs11Settings {
        module,
        token,
        pin,
        key_label_prefix: prefix,
    })
}

/// Refuses settings of `raw` that belong to another kind of source.
fn only_for(kind: &str, others: &[(&str, bool)]) -> Result<(), ConfigError> {
    match others.iter().find(|(_, set)| *set) {
        Some((key, _)) => Err(ConfigError::Invalid(format!(
            "keys.root.{key} does not apply to keys.root.kind \"{kind}\""
        ))),
        None => Ok(()),
    }
}
