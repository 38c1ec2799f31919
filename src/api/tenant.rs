//! `TenantService` handlers.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::TenantId;
use crate::proto::v1 as pb;
use crate::service::Vault;

use super::{caller, convert, page_size};

/// Serves `piivault.v1.TenantService`.
#[derive(Debug, Clone)]
pub struct TenantApi {
    vault: Arc<Vault>,
}

impl TenantApi {
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }
}

#[tonic::async_trait]
impl pb::tenant_service_server::TenantService for TenantApi {
    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let who = caller(&req)?;
        let id = convert::tenant_id(&req.get_ref().tenant_id)?;
        let tenant = self.vault.create_tenant(&id).await?;
        tracing::info!(tenant = %id, caller = %who.identity, "tenant created");
        Ok(Response::new(convert::tenant(tenant)))
    }

    async fn get_tenant(
        &self,
        req: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        caller(&req)?;
        let id = convert::tenant_id(&req.get_ref().tenant_id)?;
        Ok(Response::new(convert::tenant(self.vault.tenant(&id)?)))
    }

    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        caller(&req)?;
        let r = req.get_ref();
        let limit = page_size(r.page_size)?;
        let after = convert::page_token(&r.page_token, TenantId::parse)?;
        let page = self.vault.list_tenants(after.as_ref(), limit)?;
        Ok(Response::new(pb::ListTenantsResponse {
            next_page_token: convert::next_token(page.next.as_ref().map(TenantId::as_str)),
            tenants: page.tenants.into_iter().map(convert::tenant).collect(),
        }))
    }
}
