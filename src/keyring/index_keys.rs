//! Blind-index keys: per tenant, versioned, wrapped by the root key under
//! `index_key/<tenant>/<version>` in the store's metadata, unwrapped on first use and
//! cached newest first. Rotation adds a version; dropping keeps only the newest ones.

use std::sync::Arc;

use crate::crypto::{Aad, Index, Key, Sealed};
use crate::domain::TenantId;

use super::{Keyring, KeyringError};

/// Store metadata key prefix of every wrapped index key: `index_key/<tenant>/<version>`.
pub(super) const INDEX_KEY_PREFIX: &str = "index_key/";

/// Store metadata key prefix of a tenant's wrapped index keys.
fn index_key_prefix(tenant: &TenantId) -> String {
    format!("{INDEX_KEY_PREFIX}{tenant}/")
}

/// The tenant and version named by an index key's metadata key.
pub(super) fn parse_index_key_name(name: &str) -> Result<(TenantId, u32), KeyringError> {
    let bad = || KeyringError::Missing("index key name");
    let rest = name.strip_prefix(INDEX_KEY_PREFIX).ok_or_else(bad)?;
    let (tenant, version) = rest.split_once('/').ok_or_else(bad)?;
    Ok((
        TenantId::parse(tenant).map_err(|_| bad())?,
        version.parse().map_err(|_| bad())?,
    ))
}

pub(super) fn index_aad(tenant: &TenantId) -> Aad {
    Aad::new("tenant-index-key").with(tenant.as_str().as_bytes())
}

impl Keyring {
    /// A tenant's blind-index keys, newest (current) first; the first is created on first use.
    pub fn index_keys(&self, tenant: &TenantId) -> Result<Vec<Arc<Key<Index>>>, KeyringError> {
        if let Some(keys) = self
            .index_keys
            .read()
            .ok()
            .and_then(|m| m.get(tenant).cloned())
        {
            return Ok(keys);
        }
        let prefix = index_key_prefix(tenant);
        let mut stored = self.store.meta_scan(&prefix)?;
        if stored.is_empty() {
            self.add_index_key(tenant, 1)?;
            stored = self.store.meta_scan(&prefix)?;
        }
        let mut keys = Vec::new();
        for (name, _) in stored {
            let version: u32 = name[prefix.len()..]
                .parse()
                .map_err(|_| KeyringError::Missing("index key version"))?;
            let key = self.open_under_root(
                || {
                    let bytes = self
                        .store
                        .meta(&name)?
                        .ok_or(KeyringError::Missing("index key"))?;
                    Sealed::decode(&bytes).map_err(|_| KeyringError::Missing("index key"))
                },
                |root, wrapped| {
                    Ok(root.unwrap_key::<Index>(wrapped, version, &index_aad(tenant))?)
                },
            )?;
            keys.push(Arc::new(key));
        }
        keys.sort_by_key(|k| std::cmp::Reverse(k.version()));
        if let Ok(mut cache) = self.index_keys.write() {
            cache.insert(tenant.clone(), keys.clone());
        }
        Ok(keys)
    }

    fn add_index_key(&self, tenant: &TenantId, version: u32) -> Result<(), KeyringError> {
        let key: Key<Index> = self.generate(version)?;
        let (_fence, root) = self.root_for_wrap()?;
        let wrapped = self.wrap_under_root(&root, &key, &index_aad(tenant))?;
        // Zero-padded so the store's key order is version order.
        self.store.meta_init(
            &format!("{}{version:010}", index_key_prefix(tenant)),
            &wrapped.encode(),
        )?;
        Ok(())
    }

    /// Adds a new current index key version; older versions stay until `drop_index_keys`.
    pub fn rotate_index_key(&self, tenant: &TenantId) -> Result<u32, KeyringError> {
        let newest = self.index_keys(tenant)?.first().map_or(0, |k| k.version());
        self.add_index_key(tenant, newest + 1)?;
        self.forget_index_keys(tenant);
        Ok(newest + 1)
    }

    /// Destroys every index key version older than `keep`.
    pub fn drop_index_keys(&self, tenant: &TenantId, keep: u32) -> Result<(), KeyringError> {
        for key in self.index_keys(tenant)? {
            if key.version() < keep {
                self.store.meta_remove(&format!(
                    "{}{:010}",
                    index_key_prefix(tenant),
                    key.version()
                ))?;
            }
        }
        self.forget_index_keys(tenant);
        self.announce_destroyed();
        Ok(())
    }

    /// Destroys every index key version of a (shredded) tenant.
    pub(super) fn destroy_index_keys(&self, tenant: &TenantId) -> Result<(), KeyringError> {
        for (name, _) in self.store.meta_scan(&index_key_prefix(tenant))? {
            self.store.meta_remove(&name)?;
        }
        self.forget_index_keys(tenant);
        Ok(())
    }

    fn forget_index_keys(&self, tenant: &TenantId) {
        if let Ok(mut cache) = self.index_keys.write() {
            cache.remove(tenant);
        }
    }
}
