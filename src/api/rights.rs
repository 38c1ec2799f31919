//! `SubjectRightsService` handlers.

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use crate::domain::{InvalidInput, Purpose, SubjectState};
use crate::proto::v1 as pb;
use crate::service::{Call, ErasureReceipt, Operation, StateChange, Vault};

use super::{batch, call, convert, field, parsed, record::ids, respond};

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
        retained: r
            .retained
            .into_iter()
            .map(|(c, until)| pb::RetainedCategory {
                category: convert::category(c) as i32,
                retained_until: Some(convert::timestamp(until)),
            })
            .collect(),
        already_erased: r.already_erased,
    }
}

/// EraseSubject, for a call of its own or an item of EraseSubjects.
async fn erase(
    vault: &Vault, call: &Call, tenant: &str, subject: &str,
) -> Result<pb::ErasureReceipt, Status> {
    let (tenant, subject) =
        parsed(vault, call, Operation::EraseSubject, ids(tenant, subject)).await?;
    Ok(receipt(vault.erase_subject(call, &tenant, &subject).await?))
}

/// Erases one request of an EraseSubjects stream.
async fn erase_one(
    vault: Arc<Vault>, call: Call, index: u64, r: pb::EraseSubjectsRequest,
) -> pb::EraseSubjectsResponse {
    let result = match erase(&vault, &call, &r.tenant_id, &r.subject_id).await {
        Ok(receipt) => pb::erase_subjects_response::Result::Receipt(receipt),
        Err(status) => pb::erase_subjects_response::Result::Error(batch::item_error(&status)),
    };
    pb::EraseSubjectsResponse {
        index,
        result: Some(result),
    }
}

fn status(tenant: &str, subject: &str, s: SubjectState) -> pb::SubjectStatus {
    pb::SubjectStatus {
        tenant_id: tenant.to_owned(),
        subject_id: subject.to_owned(),
        consents: s
            .consents
            .into_iter()
            .map(|c| pb::ConsentDecision {
                purpose: c.purpose.to_string(),
                granted: c.granted,
                decided_at: Some(convert::timestamp(c.at)),
                source: c.source,
            })
            .collect(),
        restricted: s.restricted_since.is_some(),
        restricted_since: s.restricted_since.map(convert::timestamp),
    }
}

impl RightsApi {
    async fn state(
        &self, call: &Call, op: Operation, tenant: &str, subject: &str,
        change: Result<Option<StateChange>, InvalidInput>,
    ) -> Result<Response<pb::SubjectStatus>, Status> {
        let input = ids(tenant, subject).and_then(|ids| Ok((ids, change?)));
        let ((t, s), change) = parsed(&self.vault, call, op, input).await?;
        let state = self.vault.subject_state(call, &t, &s, change).await?;
        Ok(respond(call, status(t.as_str(), s.as_str(), state)))
    }
}

#[tonic::async_trait]
impl pb::subject_rights_service_server::SubjectRightsService for RightsApi {
    async fn restrict_subject(
        &self, req: Request<pb::RestrictSubjectRequest>,
    ) -> Result<Response<pb::SubjectStatus>, Status> {
        let call = call(&req)?;
        let r = req.get_ref();
        self.state(
            &call,
            Operation::RestrictSubject,
            &r.tenant_id,
            &r.subject_id,
            Ok(Some(StateChange::Restrict)),
        )
        .await
    }

    async fn lift_restriction(
        &self, req: Request<pb::LiftRestrictionRequest>,
    ) -> Result<Response<pb::SubjectStatus>, Status> {
        let call = call(&req)?;
        let r = req.get_ref();
        self.state(
            &call,
            Operation::LiftRestriction,
            &r.tenant_id,
            &r.subject_id,
            Ok(Some(StateChange::Lift)),
        )
        .await
    }

    async fn set_consent(
        &self, req: Request<pb::SetConsentRequest>,
    ) -> Result<Response<pb::SubjectStatus>, Status> {
        let call = call(&req)?;
        let r = req.get_ref();
        let change = Purpose::parse(&r.purpose)
            .map_err(field("purpose"))
            .map(|purpose| {
                Some(StateChange::Consent {
                    purpose,
                    granted: r.granted,
                    source: r.source.clone(),
                })
            });
        self.state(
            &call,
            Operation::SetConsent,
            &r.tenant_id,
            &r.subject_id,
            change,
        )
        .await
    }

    async fn list_consents(
        &self, req: Request<pb::ListConsentsRequest>,
    ) -> Result<Response<pb::SubjectStatus>, Status> {
        let call = call(&req)?;
        let r = req.get_ref();
        self.state(
            &call,
            Operation::ListConsents,
            &r.tenant_id,
            &r.subject_id,
            Ok(None),
        )
        .await
    }

    async fn erase_subject(
        &self, req: Request<pb::EraseSubjectRequest>,
    ) -> Result<Response<pb::ErasureReceipt>, Status> {
        let call = call(&req)?;
        let r = req.get_ref();
        let receipt = erase(&self.vault, &call, &r.tenant_id, &r.subject_id).await?;
        Ok(respond(&call, receipt))
    }

    type EraseSubjectsStream = batch::Results<pb::EraseSubjectsResponse>;

    async fn erase_subjects(
        &self, req: Request<Streaming<pb::EraseSubjectsRequest>>,
    ) -> Result<Response<Self::EraseSubjectsStream>, Status> {
        let call = call(&req)?;
        let (vault, each) = (self.vault.clone(), call.clone());
        let results = batch::run(req.into_inner(), move |index, r| {
            erase_one(vault.clone(), each.clone(), index, r)
        });
        Ok(respond(&call, results))
    }

    async fn access_subject(
        &self, req: Request<pb::AccessSubjectRequest>,
    ) -> Result<Response<pb::AccessReport>, Status> {
        super::access::access_subject(&self.vault, req).await
    }

    type ExportSubjectStream = super::access::ExportStream;

    async fn export_subject(
        &self, req: Request<pb::ExportSubjectRequest>,
    ) -> Result<Response<Self::ExportSubjectStream>, Status> {
        super::access::export_subject(&self.vault, req).await
    }
}
