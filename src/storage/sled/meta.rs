//! The sled side of store-wide metadata and of the tenant and subject lists.

use std::ops::Bound::{Excluded, Unbounded};

use sled::transaction::Transactional;

use crate::crypto::Sealed;
use crate::domain::{SubjectId, TenantId};
use crate::storage::records::TenantRecord;
use crate::storage::{StoreError, StoreResult};

use super::{backend, decode_subject_key, kek_key, subject_key, tx_error, SledStore};

impl SledStore {
    pub(super) fn init_meta(&self, key: &str, value: &[u8]) -> StoreResult<Vec<u8>> {
        match self
            .meta
            .compare_and_swap(key, None as Option<&[u8]>, Some(value))
            .map_err(backend)?
        {
            Ok(()) => Ok(value.to_vec()),
            Err(cas) => Ok(cas.current.map(|v| v.to_vec()).unwrap_or_default()),
        }
    }

    pub(super) fn scan_meta(&self, prefix: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.meta
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(backend)?;
                let key =
                    String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt("meta key"))?;
                Ok((key, v.to_vec()))
            })
            .collect()
    }

    pub(super) fn add_tenant(
        &self, tenant: &TenantRecord, wrapped_kek: &Sealed,
    ) -> StoreResult<bool> {
        let id = tenant.id.as_str().as_bytes();
        let kek_key = kek_key(&tenant.id, tenant.kek_version);
        let created = (&self.tenants, &self.keks)
            .transaction(|(tenants, keks)| {
                if tenants.get(id)?.is_some() {
                    return Ok(false);
                }
                tenants.insert(id, tenant.encode())?;
                keks.insert(kek_key.as_slice(), wrapped_kek.encode())?;
                Ok(true)
            })
            .map_err(tx_error)?;
        if created {
            self.trees(&tenant.id)?;
        }
        Ok(created)
    }

    pub(super) fn tenant_page(
        &self, after: Option<&TenantId>, limit: usize,
    ) -> StoreResult<Vec<TenantRecord>> {
        let iter = match after {
            Some(a) => self
                .tenants
                .range::<&[u8], _>((Excluded(a.as_str().as_bytes()), Unbounded)),
            None => self.tenants.iter(),
        };
        iter.take(limit)
            .map(|kv| TenantRecord::decode(&kv.map_err(backend)?.1))
            .collect()
    }

    pub(super) fn subject_ids(
        &self, tenant: &TenantId, after: Option<&SubjectId>, limit: usize,
    ) -> StoreResult<Vec<SubjectId>> {
        let trees = self.existing_trees(tenant)?;
        // Keys are length-prefixed, so key order is (length, id) order; pages follow it.
        let iter = match after {
            Some(a) => trees.subjects.range((Excluded(subject_key(a)), Unbounded)),
            None => trees.subjects.iter(),
        };
        iter.take(limit)
            .map(|kv| decode_subject_key(&kv.map_err(backend)?.0))
            .collect()
    }
}
