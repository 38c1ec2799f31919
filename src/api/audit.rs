//! `AuditService` handlers.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::domain::InvalidInput;
use crate::proto::v1 as pb;
use crate::service::{AuditEvent, AuditFilter, Operation, Outcome, Vault};

use super::{call, convert, field, parsed, respond};

/// Default and largest number of events one query returns.
const DEFAULT_LIMIT: u32 = 1000;
const MAX_LIMIT: u32 = 100_000;
/// Events per streamed message.
const CHUNK: usize = 256;

/// Serves `piivault.v1.AuditService`.
#[derive(Debug, Clone)]
pub struct AuditApi {
    vault: Arc<Vault>,
}

impl AuditApi {
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }
}

fn outcome(o: Outcome) -> pb::Outcome {
    match o {
        Outcome::Ok => pb::Outcome::Ok,
        Outcome::Denied => pb::Outcome::Denied,
        Outcome::NotFound => pb::Outcome::NotFound,
        Outcome::Invalid => pb::Outcome::Invalid,
        Outcome::Error => pb::Outcome::Error,
        Outcome::Intent => pb::Outcome::Intent,
    }
}

/// The text spelling of an outcome sent as `value` (`ok`, `denied`, ...): the one the audit
/// log stores and its mirrors write, so every text output (CLI, JSON lines, syslog) agrees.
/// The proto enum keeps its own `OUTCOME_*` names on the wire; a value this build does not
/// know is `unknown`.
pub fn outcome_name(value: i32) -> &'static str {
    let known = match pb::Outcome::try_from(value) {
        Ok(pb::Outcome::Ok) => Outcome::Ok,
        Ok(pb::Outcome::Denied) => Outcome::Denied,
        Ok(pb::Outcome::NotFound) => Outcome::NotFound,
        Ok(pb::Outcome::Invalid) => Outcome::Invalid,
        Ok(pb::Outcome::Error) => Outcome::Error,
        Ok(pb::Outcome::Intent) => Outcome::Intent,
        Ok(pb::Outcome::Unspecified) | Err(_) => return "unknown",
    };
    known.name()
}

fn event(e: AuditEvent) -> pb::AuditEvent {
    let d = e.draft;
    pb::AuditEvent {
        seq: e.seq,
        node: e.node,
        time: Some(convert::timestamp(d.time)),
        request_id: d.request_id,
        caller: d.caller,
        operation: d.operation.name().to_owned(),
        tenant_id: d.tenant,
        subject_id: d.subject,
        field_names: d.fields,
        purpose: d.purpose,
        outcome: outcome(d.outcome) as i32,
        reason: d.reason,
        rule: d.rule,
        prev_mac: e.prev_mac.to_vec(),
        mac: e.mac.to_vec(),
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn filter(r: &pb::QueryAuditLogRequest) -> Result<(AuditFilter, usize), InvalidInput> {
    let operation = match r.operation.as_str() {
        "" => None,
        name => Some(Operation::from_name(name).ok_or_else(|| {
            InvalidInput::new("operation is not a known operation name").in_field("operation")
        })?),
    };
    let limit = match r.limit {
        0 => DEFAULT_LIMIT,
        n if n <= MAX_LIMIT => n,
        n => {
            return Err(
                InvalidInput::new(format!("limit is {n}; the most is {MAX_LIMIT}"))
                    .in_field("limit"),
            )
        }
    };
    let filter = AuditFilter {
        tenant: non_empty(&r.tenant_id),
        subject: non_empty(&r.subject_id),
        caller: non_empty(&r.caller),
        operation,
        since: r
            .since
            .as_ref()
            .map(convert::from_timestamp)
            .transpose()
            .map_err(field("since"))?,
        until: r
            .until
            .as_ref()
            .map(convert::from_timestamp)
            .transpose()
            .map_err(field("until"))?,
    };
    Ok((filter, limit as usize))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::QueryAuditLogResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditApi {
    type QueryAuditLogStream = EventStream;

    async fn query_audit_log(
        &self, req: Request<pb::QueryAuditLogRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let call = call(&req)?;
        let r = req.get_ref();
        let (filter, limit) = parsed(&self.vault, &call, Operation::QueryAudit, filter(r)).await?;
        // The first page is fetched by the audited use case: nothing is streamed unless the
        // query itself was recorded.
        let first = self
            .vault
            .query_audit(&call, &filter, r.after_seq, limit.min(CHUNK))
            .await?;
        let vault = self.vault.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut sent = first.events.len();
            let mut cursor = first.cursor;
            let mut done = first.end;
            let message = pb::QueryAuditLogResponse {
                events: first.events.into_iter().map(event).collect(),
                cursor,
            };
            if tx.send(Ok(message)).await.is_err() {
                return;
            }
            // Each page examines a bounded part of the log; a page that found nothing is not
            // sent unless it is the last (its cursor is where the next one resumes).
            while !done && sent < limit {
                let want = (limit - sent).min(CHUNK);
                let page = match vault.query_audit_more(&filter, cursor, want).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                done = page.end;
                sent += page.events.len();
                cursor = page.cursor;
                if page.events.is_empty() && !done {
                    continue;
                }
                let message = pb::QueryAuditLogResponse {
                    events: page.events.into_iter().map(event).collect(),
                    cursor,
                };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        });
        let stream: EventStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(respond(&call, stream))
    }

    async fn verify_audit_log(
        &self, req: Request<pb::VerifyAuditLogRequest>,
    ) -> Result<Response<pb::VerifyAuditLogResponse>, Status> {
        let call = call(&req)?;
        let report = self.vault.verify_audit(&call).await?;
        Ok(respond(
            &call,
            pb::VerifyAuditLogResponse {
                ok: report.is_ok(),
                checked: report.checked,
                first_seq: report.first_seq,
                first_bad_seq: report.first_bad.unwrap_or(0),
                problem: report.problem.unwrap_or_default(),
            },
        ))
    }

    async fn prune_audit_log(
        &self, req: Request<pb::PruneAuditLogRequest>,
    ) -> Result<Response<pb::PruneAuditLogResponse>, Status> {
        let call = call(&req)?;
        let days = req.get_ref().older_than_days;
        let report = self.vault.prune_audit(&call, days).await?;
        Ok(respond(
            &call,
            pb::PruneAuditLogResponse {
                deleted: report.deleted,
                checkpoint_seq: report.through.unwrap_or(0),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_spelled_as_the_audit_log_spells_them() {
        for o in [
            Outcome::Ok,
            Outcome::Denied,
            Outcome::NotFound,
            Outcome::Invalid,
            Outcome::Error,
        ] {
            assert_eq!(outcome_name(outcome(o) as i32), o.name());
        }
        assert_eq!(outcome_name(pb::Outcome::Ok as i32), "ok");
        assert_eq!(outcome_name(0), "unknown");
        assert_eq!(outcome_name(99), "unknown");
    }
}
