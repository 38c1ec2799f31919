//! `RecordService` handlers.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::{Purpose, SubjectId};
use crate::proto::v1 as pb;
use crate::service::Vault;

use super::{caller, convert, page_size};

/// Serves `piivault.v1.RecordService`.
#[derive(Debug, Clone)]
pub struct RecordApi {
    vault: Arc<Vault>,
}

impl RecordApi {
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }
}

#[tonic::async_trait]
impl pb::record_service_server::RecordService for RecordApi {
    async fn put_fields(
        &self,
        req: Request<pb::PutFieldsRequest>,
    ) -> Result<Response<pb::PutFieldsResponse>, Status> {
        caller(&req)?;
        let r = req.into_inner();
        let tenant = convert::tenant_id(&r.tenant_id)?;
        let subject = convert::subject_id(&r.subject_id)?;
        let fields = convert::new_fields(r.fields)?;
        let written = self.vault.put_fields(&tenant, &subject, &fields).await?;
        Ok(Response::new(pb::PutFieldsResponse {
            fields: written.into_iter().map(convert::written).collect(),
        }))
    }

    async fn get_fields(
        &self,
        req: Request<pb::GetFieldsRequest>,
    ) -> Result<Response<pb::GetFieldsResponse>, Status> {
        caller(&req)?;
        let r = req.get_ref();
        let tenant = convert::tenant_id(&r.tenant_id)?;
        let subject = convert::subject_id(&r.subject_id)?;
        let names = convert::field_names(&r.field_names)?;
        let purpose = Purpose::parse(&r.purpose).map_err(convert::invalid)?;
        let fields = self
            .vault
            .get_fields(&tenant, &subject, &names, &purpose)
            .await?;
        Ok(Response::new(pb::GetFieldsResponse {
            fields: fields.into_iter().map(convert::field).collect(),
        }))
    }

    async fn delete_fields(
        &self,
        req: Request<pb::DeleteFieldsRequest>,
    ) -> Result<Response<pb::DeleteFieldsResponse>, Status> {
        caller(&req)?;
        let r = req.get_ref();
        let tenant = convert::tenant_id(&r.tenant_id)?;
        let subject = convert::subject_id(&r.subject_id)?;
        let names = convert::field_names(&r.field_names)?;
        let deleted = self.vault.delete_fields(&tenant, &subject, &names).await?;
        Ok(Response::new(pb::DeleteFieldsResponse { deleted }))
    }

    async fn list_subjects(
        &self,
        req: Request<pb::ListSubjectsRequest>,
    ) -> Result<Response<pb::ListSubjectsResponse>, Status> {
        caller(&req)?;
        let r = req.get_ref();
        let tenant = convert::tenant_id(&r.tenant_id)?;
        let limit = page_size(r.page_size)?;
        let after = convert::page_token(&r.page_token, SubjectId::parse)?;
        let page = self.vault.list_subjects(&tenant, after.as_ref(), limit)?;
        Ok(Response::new(pb::ListSubjectsResponse {
            next_page_token: convert::next_token(page.next.as_ref().map(SubjectId::as_str)),
            subject_ids: page
                .subjects
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
        }))
    }
}
