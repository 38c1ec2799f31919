//! Tenant use cases: create, get, list.

use crate::audit::Operation;
use crate::authz::Action;
use crate::domain::TenantId;
use crate::storage::TenantRecord;

use super::{Call, ServiceError, Vault};

/// One page of tenants.
#[derive(Debug)]
pub struct TenantPage {
    pub tenants: Vec<TenantRecord>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<TenantId>,
}

/// Cuts a listing fetched with one extra item into a page and the id the next page starts
/// after.
pub(super) fn paged<T, K: Clone>(
    mut items: Vec<T>,
    limit: usize,
    key: impl Fn(&T) -> &K,
) -> (Vec<T>, Option<K>) {
    if items.len() > limit {
        items.truncate(limit);
        let next = items.last().map(|i| key(i).clone());
        (items, next)
    } else {
        (items, None)
    }
}

impl Vault {
    /// Creates a tenant and its first KEK; durable before it returns.
    pub async fn create_tenant(
        &self,
        call: &Call,
        id: &TenantId,
    ) -> Result<TenantRecord, ServiceError> {
        let mut ev = self.draft(call, Operation::CreateTenant);
        ev.tenant = id.to_string();
        let result = self
            .authorize(call, &mut ev, Action::TenantAdmin, Some(id), None)
            .and_then(|_| match self.keys.create_tenant(id, self.clock.now()) {
                Ok(Some(record)) => {
                    self.metrics
                        .tenant_key_version(&record.id, record.kek_version);
                    Ok(record)
                }
                Ok(None) => Err(ServiceError::TenantExists),
                Err(e) => Err(e.into()),
            });
        // The audit append's flush also makes the new tenant durable.
        self.record(ev, result).await
    }

    pub async fn get_tenant(
        &self,
        call: &Call,
        id: &TenantId,
    ) -> Result<TenantRecord, ServiceError> {
        let mut ev = self.draft(call, Operation::GetTenant);
        ev.tenant = id.to_string();
        let result = self
            .authorize(call, &mut ev, Action::TenantAdmin, Some(id), None)
            .and_then(|_| self.tenant(id));
        self.record(ev, result).await
    }

    /// A tenant that exists and was not shredded.
    pub(super) fn tenant(&self, id: &TenantId) -> Result<TenantRecord, ServiceError> {
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
        &self,
        call: &Call,
        after: Option<&TenantId>,
        limit: usize,
    ) -> Result<TenantPage, ServiceError> {
        let mut ev = self.draft(call, Operation::ListTenants);
        let result = self
            .authorize(call, &mut ev, Action::TenantAdmin, None, None)
            .and_then(|_| Ok(self.store.tenants(after, limit + 1)?))
            .map(|all| {
                let (tenants, next) = paged(all, limit, |t: &TenantRecord| &t.id);
                TenantPage { tenants, next }
            });
        self.record(ev, result).await
    }
}
