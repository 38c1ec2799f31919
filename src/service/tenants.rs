//! Tenant use cases: create, get, list.

use crate::domain::TenantId;
use crate::storage::TenantRecord;

use super::{ServiceError, Vault};

/// One page of tenants.
#[derive(Debug)]
pub struct TenantPage {
    pub tenants: Vec<TenantRecord>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<TenantId>,
}

impl Vault {
    /// Creates a tenant and its first KEK; durable before it returns.
    pub async fn create_tenant(&self, id: &TenantId) -> Result<TenantRecord, ServiceError> {
        let (record, wrapped_kek) = self.keys.new_tenant(id, self.clock.now())?;
        if !self.store.create_tenant(&record, &wrapped_kek)? {
            return Err(ServiceError::TenantExists);
        }
        self.commit.durable().await?;
        Ok(record)
    }

    pub fn tenant(&self, id: &TenantId) -> Result<TenantRecord, ServiceError> {
        self.store.tenant(id)?.ok_or(ServiceError::TenantNotFound)
    }

    /// Tenants in id order, `limit` at a time, after `after`.
    pub fn list_tenants(
        &self,
        after: Option<&TenantId>,
        limit: usize,
    ) -> Result<TenantPage, ServiceError> {
        let mut tenants = self.store.tenants(after, limit + 1)?;
        let next = if tenants.len() > limit {
            tenants.truncate(limit);
            tenants.last().map(|t| t.id.clone())
        } else {
            None
        };
        Ok(TenantPage { tenants, next })
    }
}
