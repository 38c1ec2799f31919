//! Opening the vault without serving, for `pii-vault restore`: once a backup's trees are
//! written, the erasure ledger is applied to them before anyone can ask the restored store
//! anything (`serve` applies it again at every start, finding nothing left to do).

use std::path::Path;
use std::sync::Arc;

use crate::authz::{Authz, Policy};
use crate::config::Config;
use crate::domain::SystemClock;
use crate::keyring::{parse_root_check, version_list, RootSource, ROOT_CHECK};
use crate::metrics::Metrics;
use crate::service::{LedgerApplied, Vault};
use crate::storage::backup::{self, Manifest};

use super::{open_keys, open_store, vault_settings, ServerError, LAST_HANDLE_BOUND};

/// Opens the store of `config` with its root key and erasure ledger, applies every ledger
/// entry the store has not seen (each audited), and closes it again. Nobody is authorised
/// meanwhile: the vault runs with an empty policy and serves nothing.
pub async fn apply_erasure_ledger(config: &Config) -> Result<LedgerApplied, ServerError> {
    let store = open_store(config).await?;
    let keys = open_keys(config, &store)?;
    let authz = Arc::new(Authz::fixed(Policy::parse("")?, config.purposes.clone()));
    let settings = vault_settings(config, &store, Metrics::default());
    let vault = Arc::new(Vault::open(
        store.clone(),
        keys,
        authz,
        Arc::new(SystemClock),
        settings,
    )?);
    let applied = vault.apply_erasure_ledger().await;
    vault.audit_log().persist_high_water().await;
    let tasks = vault.tasks();
    drop(vault);
    let _ = tokio::time::timeout(LAST_HANDLE_BOUND, crate::service::closed(tasks)).await;
    let flushed = store.flush();
    drop(store);
    let applied = applied.map_err(ServerError::Ledger)?;
    flushed.map_err(|source| ServerError::Store {
        path: config.store_dir().display().to_string(),
        source,
    })?;
    Ok(applied)
}

/// Refuses a backup the vault may not restore at `now_unix` (seconds): one older than the
/// backup window (the root key versions it needs are destroyed or due to be, and the policy
/// keeps backups no longer), or one bound to a root key version the source no longer holds.
/// With a root key file not yet in place the second check is left to the first start.
/// Checks the file whole first (`backup::verify`), in the same read. Returns its manifest
/// and the root key version it needs. Blocking.
pub fn check_restorable(
    file: &Path, config: &Config, now_unix: u64,
) -> Result<(Manifest, u32), ServerError> {
    let (manifest, bound) = backup::verify_with_meta(file, ROOT_CHECK)?;
    let refuse = |why: String| ServerError::NotRestorable {
        path: file.display().to_string(),
        why,
    };
    let window = config.vault.keys.backup_window.as_secs();
    let until = manifest
        .restorable_until_unix
        .unwrap_or(u64::MAX)
        .min(manifest.created_unix.saturating_add(window));
    if now_unix > until {
        return Err(refuse(format!(
            "it was taken {} days ago, more than the backup window ({} days, \
             backup.retention_days): the root key versions that opened it are destroyed or \
             due to be, and the policy keeps backups no longer",
            now_unix.saturating_sub(manifest.created_unix) / 86_400,
            window / 86_400
        )));
    }
    let version = bound
        .as_deref()
        .and_then(parse_root_check)
        .map(|(version, _)| version)
        .ok_or_else(|| refuse("it holds no root key binding: it is not a vault's backup".into()))?;
    if let RootSource::File(key_file) = &config.root_source {
        if !key_file.exists() {
            return Ok((manifest, version));
        }
    }
    let held = config.root_source.load()?.version_numbers();
    if !held.contains(&version) {
        return Err(refuse(format!(
            "it needs root key version {version}, which {} no longer holds (it holds {}): \
             the version was destroyed when the backup window passed, or the key is another \
             vault's",
            config.root_source.describe(),
            version_list(&held)
        )));
    }
    Ok((manifest, version))
}
