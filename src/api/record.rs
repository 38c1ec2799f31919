//! `RecordService` handlers.

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use crate::domain::{FieldName, Purpose, SubjectId, TenantId};
use crate::proto::v1 as pb;
use crate::service::{Call, Operation, Vault};

use super::{batch, call, convert, field, idempotency_key, page_size, parsed, respond};

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

/// Parses the (tenant, subject) pair every record call starts with.
pub(super) fn ids(
    tenant: &str, subject: &str,
) -> Result<(TenantId, SubjectId), crate::domain::InvalidInput> {
    Ok((
        TenantId::parse(tenant).map_err(field("tenant_id"))?,
        SubjectId::parse_external(subject).map_err(field("subject_id"))?,
    ))
}

/// PutFields, for a call of its own or an item of BatchPutFields.
async fn put_one(
    vault: &Vault, call: &Call, r: pb::PutFieldsRequest,
) -> Result<pb::PutFieldsResponse, Status> {
    let input = ids(&r.tenant_id, &r.subject_id).and_then(|(t, s)| {
        Ok((
            t,
            s,
            convert::new_fields(r.fields)?,
            idempotency_key(&r.idempotency_key)?,
        ))
    });
    let (tenant, subject, fields, key) = parsed(vault, call, Operation::PutFields, input).await?;
    let written = vault
        .put_fields_once(call, &tenant, &subject, &fields, key.as_ref())
        .await?;
    Ok(pb::PutFieldsResponse {
        fields: written.into_iter().map(convert::written).collect(),
    })
}

/// GetFields, for a call of its own or an item of BatchGetFields.
async fn get_one(
    vault: &Vault, call: &Call, r: pb::GetFieldsRequest,
) -> Result<pb::GetFieldsResponse, Status> {
    let input = ids(&r.tenant_id, &r.subject_id).and_then(|(t, s)| {
        Ok((
            t,
            s,
            convert::field_names(&r.field_names)?,
            Purpose::parse(&r.purpose).map_err(field("purpose"))?,
        ))
    });
    let (tenant, subject, names, purpose) =
        parsed(vault, call, Operation::GetFields, input).await?;
    let fields = vault
        .get_fields(call, &tenant, &subject, &names, &purpose)
        .await?;
    Ok(pb::GetFieldsResponse {
        fields: fields.into_iter().map(convert::field).collect(),
    })
}

#[tonic::async_trait]
impl pb::record_service_server::RecordService for RecordApi {
    async fn put_fields(
        &self, req: Request<pb::PutFieldsRequest>,
    ) -> Result<Response<pb::PutFieldsResponse>, Status> {
        let call = call(&req)?;
        let written = put_one(&self.vault, &call, req.into_inner()).await?;
        Ok(respond(&call, written))
    }

    async fn get_fields(
        &self, req: Request<pb::GetFieldsRequest>,
    ) -> Result<Response<pb::GetFieldsResponse>, Status> {
        let call = call(&req)?;
        let read = get_one(&self.vault, &call, req.into_inner()).await?;
        Ok(respond(&call, read))
    }

    type BatchPutFieldsStream = batch::Results<pb::BatchPutFieldsResponse>;

    async fn batch_put_fields(
        &self, req: Request<Streaming<pb::BatchPutFieldsRequest>>,
    ) -> Result<Response<Self::BatchPutFieldsStream>, Status> {
        use pb::batch_put_fields_response::Result as Item;
        let call = call(&req)?;
        let (vault, each) = (self.vault.clone(), call.clone());
        let results = batch::run(
            req.into_inner(),
            move |index, r: pb::BatchPutFieldsRequest| {
                let (vault, call) = (vault.clone(), each.clone());
                async move {
                    let result = match put_one(&vault, &call, r.put.unwrap_or_default()).await {
                        Ok(written) => Item::Written(written),
                        Err(status) => Item::Error(batch::item_error(&status)),
                    };
                    pb::BatchPutFieldsResponse {
                        index,
                        result: Some(result),
                    }
                }
            },
        );
        Ok(respond(&call, results))
    }

    type BatchGetFieldsStream = batch::Results<pb::BatchGetFieldsResponse>;

    async fn batch_get_fields(
        &self, req: Request<Streaming<pb::BatchGetFieldsRequest>>,
    ) -> Result<Response<Self::BatchGetFieldsStream>, Status> {
        use pb::batch_get_fields_response::Result as Item;
        let call = call(&req)?;
        let (vault, each) = (self.vault.clone(), call.clone());
        let results = batch::run(
            req.into_inner(),
            move |index, r: pb::BatchGetFieldsRequest| {
                let (vault, call) = (vault.clone(), each.clone());
                async move {
                    let result = match get_one(&vault, &call, r.get.unwrap_or_default()).await {
                        Ok(read) => Item::Read(read),
                        Err(status) => Item::Error(batch::item_error(&status)),
                    };
                    pb::BatchGetFieldsResponse {
                        index,
                        result: Some(result),
                    }
                }
            },
        );
        Ok(respond(&call, results))
    }

    async fn delete_fields(
        &self, req: Request<pb::DeleteFieldsRequest>,
    ) -> Result<Response<pb::DeleteFieldsResponse>, Status> {
        let call = call(&req)?;
        let r = req.get_ref();
        let input = ids(&r.tenant_id, &r.subject_id)
            .and_then(|(t, s)| Ok((t, s, convert::deleted_names(&r.field_names)?)));
        let (tenant, subject, names) =
            parsed(&self.vault, &call, Operation::DeleteFields, input).await?;
        let deleted = self
            .vault
            .delete_fields(&call, &tenant, &subject, &names)
            .await?;
        Ok(respond(&call, pb::DeleteFieldsResponse { deleted }))
    }

    async fn find_subjects(
        &self, req: Request<pb::FindSubjectsRequest>,
    ) -> Result<Response<pb::FindSubjectsResponse>, Status> {
        let call = call(&req)?;
        let r = req.into_inner();
        let input = TenantId::parse(&r.tenant_id)
            .map_err(field("tenant_id"))
            .and_then(|t| {
                let value = convert::field_value(r.value)?;
                Ok((
                    t,
                    FieldName::parse_external(&r.field_name).map_err(field("field_name"))?,
                    value,
                    Purpose::parse(&r.purpose).map_err(field("purpose"))?,
                ))
            });
        let (tenant, field, value, purpose) =
            parsed(&self.vault, &call, Operation::FindSubjects, input).await?;
        let found = self
            .vault
            .find_subjects(&call, &tenant, &field, &value, &purpose)
            .await?;
        Ok(respond(
            &call,
            pb::FindSubjectsResponse {
                subject_ids: found.iter().map(|s| s.as_str().to_owned()).collect(),
            },
        ))
    }

    async fn rotate_index_key(
        &self, req: Request<pb::RotateIndexKeyRequest>,
    ) -> Result<Response<pb::RotateIndexKeyResponse>, Status> {
        let call = call(&req)?;
        let input = TenantId::parse(&req.get_ref().tenant_id).map_err(field("tenant_id"));
        let tenant = parsed(&self.vault, &call, Operation::RotateIndexKey, input).await?;
        let reindexed = self.vault.rotate_index_key(&call, &tenant).await?;
        Ok(respond(&call, pb::RotateIndexKeyResponse { reindexed }))
    }

    async fn list_subjects(
        &self, req: Request<pb::ListSubjectsRequest>,
    ) -> Result<Response<pb::ListSubjectsResponse>, Status> {
        let call = call(&req)?;
        let r = req.get_ref();
        let input = TenantId::parse(&r.tenant_id)
            .map_err(field("tenant_id"))
            .and_then(|t| {
                Ok((
                    t,
                    page_size(r.page_size)?,
                    convert::page_token(&r.page_token, SubjectId::parse)?,
                ))
            });
        let (tenant, limit, after) =
            parsed(&self.vault, &call, Operation::ListSubjects, input).await?;
        let page = self
            .vault
            .list_subjects(&call, &tenant, after.as_ref(), limit)
            .await?;
        Ok(respond(
            &call,
            pb::ListSubjectsResponse {
                next_page_token: convert::next_token(page.next.as_ref().map(SubjectId::as_str)),
                subject_ids: page
                    .subjects
                    .iter()
                    .map(|s| s.as_str().to_owned())
                    .collect(),
            },
        ))
    }
}
