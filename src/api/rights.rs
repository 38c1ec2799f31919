//! `SubjectRightsService` handlers.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::audit::Operation;
use crate::proto::v1 as pb;
use crate::service::{ErasureReceipt, Vault};

use super::{call, convert, parsed, record::ids, respond};

/// Serves `piivault.v1.SubjectRightsService`.
#[derive(Debug, Clone)]
pub struct RightsApi {
    vault: Arc<Vault>,
}

impl RightsApi {
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }
}

fn receipt(r: ErasureReceipt) -> pb::ErasureReceipt {
    pb::ErasureReceipt {
        receipt_id: r.receipt_id,
        tenant_id: r.tenant.to_string(),
        subject_id: r.subject.to_string(),
        erased_at: Some(convert::timestamp(r.erased_at)),
        erased_by: r.caller,
        categories_erased: r
            .categories_erased
            .into_iter()
            .map(|c| convert::category(c) as i32)
            .collect(),
        final_after: Some(convert::timestamp(r.final_after)),
        already_erased: r.already_erased,
    }
}

#[tonic::async_trait]
impl pb::subject_rights_service_server::SubjectRightsService for RightsApi {
    async fn erase_subject(
        &self,
        req: Request<pb::EraseSubjectRequest>,
    ) -> Result<Response<pb::ErasureReceipt>, Status> {
        let call = call(&req)?;
        let r = req.get_ref();
        let (tenant, subject) = parsed(
            &self.vault,
            &call,
            Operation::EraseSubject,
            ids(&r.tenant_id, &r.subject_id),
        )
        .await?;
        let receipt = receipt(self.vault.erase_subject(&call, &tenant, &subject).await?);
        Ok(respond(&call, receipt))
    }

    async fn access_subject(
        &self,
        req: Request<pb::AccessSubjectRequest>,
    ) -> Result<Response<pb::AccessReport>, Status> {
        super::access::access_subject(&self.vault, req).await
    }

    type ExportSubjectStream = super::access::ExportStream;

    async fn export_subject(
        &self,
        req: Request<pb::ExportSubjectRequest>,
    ) -> Result<Response<Self::ExportSubjectStream>, Status> {
        super::access::export_subject(&self.vault, req).await
    }
}
