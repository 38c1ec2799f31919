//! The gRPC calls the harness makes, each with a request id of its own (so its audit event
//! can be found) and a deadline (so a stuck vault fails the test instead of hanging it).

use std::time::Duration;

use pii_vault::proto::v1 as pb;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::model::Answer;
use crate::util::text;

pub const TENANT: &str = "crash";
const PURPOSE: &str = "support";
const DEADLINE: Duration = Duration::from_secs(20);

/// The clients of one connection.
#[derive(Clone)]
pub struct Clients {
    pub records: pb::record_service_client::RecordServiceClient<Channel>,
    pub rights: pb::subject_rights_service_client::SubjectRightsServiceClient<Channel>,
    pub keys: pb::key_service_client::KeyServiceClient<Channel>,
    pub audit: pb::audit_service_client::AuditServiceClient<Channel>,
    pub tenants: pb::tenant_service_client::TenantServiceClient<Channel>,
}

impl Clients {
    pub fn new(channel: Channel) -> Self {
        Self {
            records: pb::record_service_client::RecordServiceClient::new(channel.clone()),
            rights: pb::subject_rights_service_client::SubjectRightsServiceClient::new(
                channel.clone(),
            ),
            keys: pb::key_service_client::KeyServiceClient::new(channel.clone()),
            audit: pb::audit_service_client::AuditServiceClient::new(channel.clone()),
            tenants: pb::tenant_service_client::TenantServiceClient::new(channel),
        }
    }
}

/// A request carrying `id` as its `x-request-id` and the harness's deadline.
pub fn request<T>(message: T, id: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.set_timeout(DEADLINE);
    req.metadata_mut().insert(
        pii_vault::api::REQUEST_ID,
        id.parse().expect("request ids are ASCII"),
    );
    req
}

/// Writes `fields` (name, value) of `subject` as text in one atomic PutFields.
pub async fn put(
    c: &mut Clients, id: &str, subject: &str, fields: &[(String, String)],
) -> Result<(), Status> {
    let msg = pb::PutFieldsRequest {
        tenant_id: TENANT.into(),
        subject_id: subject.into(),
        fields: fields
            .iter()
            .map(|(n, v)| text(n, pb::Category::Profile, v))
            .collect(),
        idempotency_key: String::new(),
    };
    c.records.put_fields(request(msg, id)).await.map(|_| ())
}

/// Reads `names` of `subject` (every field when empty): (name, text value) in name order.
pub async fn get(
    c: &mut Clients, id: &str, subject: &str, names: &[String],
) -> Result<Vec<(String, String)>, Status> {
    let msg = pb::GetFieldsRequest {
        tenant_id: TENANT.into(),
        subject_id: subject.into(),
        field_names: names.to_vec(),
        purpose: PURPOSE.into(),
    };
    let fields = c
        .records
        .get_fields(request(msg, id))
        .await?
        .into_inner()
        .fields;
    Ok(fields
        .iter()
        .map(|f| (f.name.clone(), crate::util::text_of(f).to_owned()))
        .collect())
}

/// A read of every field of `subject`, classified for `Subject::settle`.
pub async fn read_all(c: &mut Clients, id: &str, subject: &str) -> Answer {
    match get(c, id, subject, &[]).await {
        Ok(fields) => Answer::Fields(fields),
        Err(s) => classify_not_found(&s),
    }
}

/// NOT_FOUND for an erased subject, NOT_FOUND for a missing one, anything else.
pub fn classify_not_found(s: &Status) -> Answer {
    match s.code() {
        Code::NotFound if s.message().contains("erased") => Answer::Erased,
        Code::NotFound => Answer::NotFound,
        _ => Answer::Error(format!("{:?}: {}", s.code(), s.message())),
    }
}

pub async fn erase(c: &mut Clients, id: &str, subject: &str) -> Result<(), Status> {
    let msg = pb::EraseSubjectRequest {
        tenant_id: TENANT.into(),
        subject_id: subject.into(),
    };
    let receipt = c.rights.erase_subject(request(msg, id)).await?.into_inner();
    assert_eq!(receipt.subject_id, subject, "receipt names the subject");
    Ok(())
}

/// Starts a tenant key rotation: the new KEK version, or the status (FAILED_PRECONDITION
/// while a re-wrap still runs).
pub async fn rotate(c: &mut Clients, id: &str) -> Result<u32, Status> {
    let msg = pb::RotateTenantKeyRequest {
        tenant_id: TENANT.into(),
    };
    Ok(c.keys
        .rotate_tenant_key(request(msg, id))
        .await?
        .into_inner()
        .new_version)
}

/// The tenant's current KEK version and whether a re-wrap is running.
pub async fn key_status(c: &mut Clients, id: &str) -> Result<(u32, bool), Status> {
    let msg = pb::GetKeyStatusRequest {
        tenant_id: TENANT.into(),
        count_deks: false,
    };
    let status = c.keys.get_key_status(request(msg, id)).await?.into_inner();
    let t = status
        .tenants
        .iter()
        .find(|t| t.tenant_id == TENANT)
        .ok_or_else(|| Status::not_found("tenant missing from the key status"))?;
    Ok((t.current_version, t.rewrap.is_some()))
}

/// `get_fields` events after `after_seq`.
pub async fn read_events(
    c: &mut Clients, id: &str, operation: &str, after_seq: u64,
) -> Result<Vec<pb::AuditEvent>, Status> {
    let msg = pb::QueryAuditLogRequest {
        tenant_id: TENANT.into(),
        operation: operation.into(),
        after_seq,
        limit: 100_000,
        ..Default::default()
    };
    let mut stream = c
        .audit
        .query_audit_log(request(msg, id))
        .await?
        .into_inner();
    let mut events = Vec::new();
    while let Some(chunk) = stream.message().await? {
        events.extend(chunk.events);
    }
    Ok(events)
}

/// VerifyAuditLog: `Ok(events checked)` or the problem.
pub async fn verify_chain(c: &mut Clients, id: &str) -> Result<Result<u64, String>, Status> {
    let r = c
        .audit
        .verify_audit_log(request(pb::VerifyAuditLogRequest {}, id))
        .await?
        .into_inner();
    Ok(if r.ok {
        Ok(r.checked)
    } else {
        Err(format!("seq {}: {}", r.first_bad_seq, r.problem))
    })
}
