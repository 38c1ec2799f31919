//! `AccessSubject` and `ExportSubject` of `SubjectRightsService`: the access report as one
//! message, and the portable export streamed chunk by chunk.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::domain::Purpose;
use crate::proto::v1 as pb;
use crate::service::{AccessReport, HeldField, Operation, Recipient, Vault};

use super::{call, convert, field, parsed, record::ids, respond};

/// The stream of export chunks.
pub type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportChunk, Status>> + Send>>;

/// Chunks built ahead of the client: with the chunk being built, what the exporter may
/// hold beyond one page.
const CHUNKS_AHEAD: usize = 2;

fn held_field(f: HeldField) -> pb::HeldField {
    let retention = pb::RetentionRule {
        description: f.retention.description.to_owned(),
        period_days: f.retention.period_days().unwrap_or(0),
    };
    pb::HeldField {
        kind: f.kind.to_owned(),
        retention: Some(retention),
        expires_at: f.expires_at.map(convert::timestamp),
        legal_retention: f.legal_retention,
        field: Some(convert::field(crate::domain::Field {
            meta: f.meta,
            value: f.value,
            render: f.render,
        })),
    }
}

fn recipient(r: Recipient) -> pb::Recipient {
    pb::Recipient {
        seq: r.seq,
        time: Some(convert::timestamp(r.time)),
        caller: r.caller,
        operation: r.operation.name().to_owned(),
        purpose: r.purpose,
        field_names: r.fields,
        request_id: r.request_id,
    }
}

fn report(r: AccessReport) -> pb::AccessReport {
    pb::AccessReport {
        tenant_id: r.tenant.to_string(),
        subject_id: r.subject.to_string(),
        generated_at: Some(convert::timestamp(r.generated_at)),
        subject_created_at: Some(convert::timestamp(r.subject_created_at)),
        fields: r.fields.into_iter().map(held_field).collect(),
        restricted: r.state.restricted_since.is_some(),
        restricted_since: r.state.restricted_since.map(convert::timestamp),
        consents: r
            .state
            .consents
            .into_iter()
            .map(|c| pb::ReportedConsent {
                purpose: c.purpose.to_string(),
                granted: c.granted,
                decided_at: Some(convert::timestamp(c.at)),
                source: c.source,
            })
            .collect(),
        recipients: r.recipients.into_iter().map(recipient).collect(),
    }
}

pub(super) async fn access_subject(
    vault: &Arc<Vault>, req: Request<pb::AccessSubjectRequest>,
) -> Result<Response<pb::AccessReport>, Status> {
    let call = call(&req)?;
    let r = req.get_ref();
    let (tenant, subject) = parsed(
        vault,
        &call,
        Operation::AccessSubject,
        ids(&r.tenant_id, &r.subject_id),
    )
    .await?;
    let report = report(vault.access_subject(&call, &tenant, &subject).await?);
    Ok(respond(&call, report))
}

pub(super) async fn export_subject(
    vault: &Arc<Vault>, req: Request<pb::ExportSubjectRequest>,
) -> Result<Response<ExportStream>, Status> {
    let call = call(&req)?;
    let r = req.get_ref();
    let input = ids(&r.tenant_id, &r.subject_id)
        .and_then(|(t, s)| Ok((t, s, Purpose::parse(&r.purpose).map_err(field("purpose"))?)));
    let (tenant, subject, purpose) = parsed(vault, &call, Operation::ExportSubject, input).await?;
    // Recorded before anything is sent: an export that cannot be audited never starts.
    let mut export = vault
        .export_subject(&call, &tenant, &subject, &purpose)
        .await?;
    let vault = vault.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
    tokio::spawn(async move {
        loop {
            // Built off the async workers by the service; a failed step ends the export
            // with its error, never as if it were complete.
            let data = match vault.export_chunk(export).await {
                Ok(Some((back, data))) => {
                    export = back;
                    data
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(Status::from(e))).await;
                    return;
                }
            };
            if tx.send(Ok(pb::ExportChunk { data })).await.is_err() {
                return;
            }
        }
    });
    let stream: ExportStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(respond(&call, stream))
}
