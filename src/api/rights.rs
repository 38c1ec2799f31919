//! `SubjectRightsService` handlers.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tonic_types::StatusExt;

use crate::domain::{InvalidInput, Purpose, SubjectState};
use crate::proto::v1 as pb;
use crate::service::{Call, ErasureReceipt, Operation, StateChange, Vault};

use super::{call, convert, field, parsed, record::ids, respond};

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

/// Erasures of one EraseSubjects stream that run at once: enough for the audit log's group
/// commit to share its flushes among them, few enough that one stream cannot crowd out
/// every other caller.
const ERASURES_IN_FLIGHT: usize = 32;

type ResultStream = Pin<Box<dyn Stream<Item = Result<pb::EraseSubjectsResponse, Status>> + Send>>;

/// One item's failure, as its own call would have failed.
fn item_error(status: &Status) -> pb::ItemError {
    let details = status.get_error_details();
    let info = details.error_info();
    pb::ItemError {
        code: status.code() as i32,
        message: status.message().to_owned(),
        reason: info.map(|i| i.reason.clone()).unwrap_or_default(),
        metadata: info.map(|i| i.metadata.clone()).unwrap_or_default(),
    }
}

/// Erases one request of an EraseSubjects stream, exactly as EraseSubject would.
async fn erase_one(
    vault: Arc<Vault>, call: Call, index: u64, r: pb::EraseSubjectsRequest,
) -> pb::EraseSubjectsResponse {
    let erased = async {
        let (tenant, subject) = parsed(
            &vault,
            &call,
            Operation::EraseSubject,
            ids(&r.tenant_id, &r.subject_id),
        )
        .await?;
        Ok::<_, Status>(receipt(
            vault.erase_subject(&call, &tenant, &subject).await?,
        ))
    };
    let result = match erased.await {
        Ok(receipt) => pb::erase_subjects_response::Result::Receipt(receipt),
        Err(status) => pb::erase_subjects_response::Result::Error(item_error(&status)),
    };
    pb::EraseSubjectsResponse {
        index,
        result: Some(result),
    }
}

/// Reads the requests of an EraseSubjects stream, runs up to `ERASURES_IN_FLIGHT` at once
/// and sends each result as it is done. Ends when the client's side ends (after the last
/// result), when the client goes away, or with the error of a request that does not decode.
async fn erase_stream(
    vault: Arc<Vault>, call: Call, mut inbound: Streaming<pb::EraseSubjectsRequest>,
    tx: tokio::sync::mpsc::Sender<Result<pb::EraseSubjectsResponse, Status>>,
) {
    let mut running = tokio::task::JoinSet::new();
    let mut index = 0u64;
    let mut reading = true;
    while reading || !running.is_empty() {
        let room = reading && running.len() < ERASURES_IN_FLIGHT;
        tokio::select! {
            next = inbound.message(), if room => match next {
                Ok(Some(r)) => {
                    running.spawn(erase_one(vault.clone(), call.clone(), index, r));
                    index += 1;
                }
                Ok(None) => reading = false,
                Err(status) => {
                    // The erasures already running finish; nothing more is read.
                    reading = false;
                    if tx.send(Err(status)).await.is_err() {
                        return;
                    }
                }
            },
            Some(done) = running.join_next(), if !running.is_empty() => {
                let sent = match done {
                    Ok(result) => tx.send(Ok(result)).await,
                    Err(e) => {
                        tracing::error!(error = %e, "an erasure task failed");
                        tx.send(Err(Status::internal("internal error"))).await
                    }
                };
                if sent.is_err() {
                    // The client is gone: nothing more starts, and what runs is left to
                    // finish (dropping the set would cancel erasures midway).
                    running.detach_all();
                    return;
                }
            }
        }
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

    type EraseSubjectsStream = ResultStream;

    async fn erase_subjects(
        &self, req: Request<Streaming<pb::EraseSubjectsRequest>>,
    ) -> Result<Response<Self::EraseSubjectsStream>, Status> {
        let call = call(&req)?;
        let inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(ERASURES_IN_FLIGHT);
        tokio::spawn(erase_stream(self.vault.clone(), call.clone(), inbound, tx));
        let stream: ResultStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(respond(&call, stream))
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
