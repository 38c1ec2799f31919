//! Opening the vault without serving, for `pii-vault restore`: once a backup's trees are
//! written, the erasure ledger is applied to them before anyone can ask the restored store
//! anything (`serve` applies it again at every start, finding nothing left to do).

use std::sync::Arc;

use crate::authz::{Authz, Policy};
use crate::config::Config;
use crate::domain::SystemClock;
use crate::keyring::Keyring;
use crate::service::{LedgerApplied, Vault, HIGH_WATER_FILE};

use super::{open_store, ServerError, LAST_HANDLE_BOUND};

/// Opens the store of `config` with its root key and erasure ledger, applies every ledger
/// entry the store has not seen (each audited), and closes it again. Nobody is authorised
/// meanwhile: the vault runs with an empty policy and serves nothing.
pub async fn apply_erasure_ledger(config: &Config) -> Result<LedgerApplied, ServerError> {
    let store = open_store(config).await?;
    let keys = Keyring::open(config.root_source.load()?, store.clone())?;
    keys.seal_legacy_records()?;
    let authz = Arc::new(Authz::fixed(Policy::parse("")?, config.purposes.clone()));
    let mut settings = config.vault.clone();
    if !store.shared() {
        settings.high_water_file = Some(config.data_dir.join(HIGH_WATER_FILE));
    }
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
