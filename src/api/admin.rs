//! `AdminService` handlers.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::proto::v1 as pb;
use crate::service::Vault;

use super::{call, respond};

/// Serves `piivault.v1.AdminService`.
#[derive(Debug, Clone)]
pub struct AdminApi {
    vault: Arc<Vault>,
}

impl AdminApi {
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn reload_policy(
        &self, req: Request<pb::ReloadPolicyRequest>,
    ) -> Result<Response<pb::ReloadPolicyResponse>, Status> {
        let call = call(&req)?;
        self.vault.reload_policy(&call).await?;
        Ok(respond(&call, pb::ReloadPolicyResponse {}))
    }
}
