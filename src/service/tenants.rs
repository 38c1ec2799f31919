//! Tenant use cases: create, get, list. The store's `TenantRecord` stays in the service;
//! callers get a domain `Tenant`.

use crate::audit::Operation;
use crate::authz::act;
use crate::domain::{Tenant, TenantId};
use crate::storage::TenantRecord;

use super::usecase::{no_detail, Check};
use super::{Call, ServiceError, Vault};

/// One page of tenants.
#[derive(Debug)]
pub struct TenantPage {
    pub tenants: Vec<Tenant>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<TenantId>,
}

/// Cuts a listing fetched with one extra item into a page and the id the next page starts
/// after.
pub(super) fn paged<T, K: Clone>(
    mut items: Vec<T>, limit: usize, key: impl Fn(&T) -> &K,
) -> (Vec<T>, Option<K>) {
    if items.len() > limit {
        items.truncate(limit);
        let next = items.last().map(|i| key(i).clone());
        (items, next)
    } else {
        (items, None)
    }
}

/// What callers see of a stored tenant.
fn tenant(record: TenantRecord) -> Tenant {
    Tenant {
        id: record.id,
        created_at: record.created_at,
        key_version: record.kek_version,
    }
}

impl Vault {
    /// Creates a tenant and its first KEK; durable before it returns.
    pub async fn create_tenant(&self, call: &Call, id: &TenantId) -> Result<Tenant, ServiceError> {
        self.use_case(call, Operation::CreateTenant)
            .tenant(id)
            .run(
                Check::action(act::TenantAdmin, Some(id)),
                |_| async move {
                    match self.keys.create_tenant(id, self.clock.now()) {
                        Ok(Some(record)) => {
                            self.metrics
                                .tenant_key_version(&record.id, record.kek_version);
                            Ok(tenant(record))
                        }
                        Ok(None) => Err(ServiceError::TenantExists),
                        Err(e) => Err(e.into()),
                    }
                },
                // The audit append's flush also makes the new tenant durable.
                no_detail,
            )
            .await
    }

    pub async fn get_tenant(&self, call: &Call, id: &TenantId) -> Result<Tenant, ServiceError> {
        self.use_case(call, Operation::GetTenant)
            .tenant(id)
            .run(
                Check::action(act::TenantAdmin, Some(id)),
                |_| async move { self.tenant_record(id).map(tenant) },
                no_detail,
            )
            .await
    }

    /// A tenant that exists and was not shredded.
    pub(super) fn tenant_record(&self, id: &TenantId) -> Result<TenantRecord, ServiceError> {
        let record = self.store.tenant(id)?.ok_or(ServiceError::TenantNotFound)?;
        self.metrics
            .tenant_key_version(&record.id, record.kek_version);
        match record.shredded_at {
            Some(_) => Err(ServiceError::TenantShredded),
            None => Ok(record),
        }
    }

    /// Tenants in id order, `limit` at a time, after `after`.
    pub async fn list_tenants(
        &self, call: &Call, after: Option<&TenantId>, limit: usize,
    ) -> Result<TenantPage, ServiceError> {
        self.use_case(call, Operation::ListTenants)
            .run(
                Check::action(act::TenantAdmin, None),
                |_| async move {
                    let all = self.store.tenants(after, limit + 1)?;
                    let (records, next) = paged(all, limit, |t: &TenantRecord| &t.id);
                    let tenants = records.into_iter().map(tenant).collect();
                    Ok(TenantPage { tenants, next })
                },
                no_detail,
            )
            .await
    }
}
