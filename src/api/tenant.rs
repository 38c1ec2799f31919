//! `TenantService` handlers.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::TenantId;
use crate::proto::v1 as pb;
use crate::service::{Operation, Vault};

use super::{call, convert, field, page_size, parsed, respond};

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
        &self, req: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let call = call(&req)?;
        let op = Operation::CreateTenant;
        let id = parsed(
            &self.vault,
            &call,
            op,
            TenantId::parse(&req.get_ref().tenant_id).map_err(field("tenant_id")),
        )
        .await?;
        let tenant = self.vault.create_tenant(&call, &id).await?;
        tracing::info!(tenant = %id, caller = %call.caller, request_id = %call.request_id, "tenant created");
        Ok(respond(&call, convert::tenant(tenant)))
    }

    async fn get_tenant(
        &self, req: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let call = call(&req)?;
        let op = Operation::GetTenant;
        let id = parsed(
            &self.vault,
            &call,
            op,
            TenantId::parse(&req.get_ref().tenant_id).map_err(field("tenant_id")),
        )
        .await?;
        let tenant = self.vault.get_tenant(&call, &id).await?;
        Ok(respond(&call, convert::tenant(tenant)))
    }

    async fn list_tenants(
        &self, req: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let call = call(&req)?;
        let r = req.get_ref();
        let input = page_size(r.page_size)
            .and_then(|limit| Ok((limit, convert::page_token(&r.page_token, TenantId::parse)?)));
        let (limit, after) = parsed(&self.vault, &call, Operation::ListTenants, input).await?;
        let page = self
            .vault
            .list_tenants(&call, after.as_ref(), limit)
            .await?;
        Ok(respond(
            &call,
            pb::ListTenantsResponse {
                next_page_token: convert::next_token(page.next.as_ref().map(TenantId::as_str)),
                tenants: page.tenants.into_iter().map(convert::tenant).collect(),
            },
        ))
    }
}
