//! The portable export (GDPR art. 20): the access report as one JSON document (schema
//! `pii-vault.export/v1`, documented on `ExportSubject` in `rights.proto`), handed out in
//! chunks of at most `EXPORT_CHUNK` bytes while it is built: the header, then the fields a
//! page at a time, then the recipients a page at a time, then the closing brace. The
//! exporter holds at most one page of fields and less than one chunk of unsent bytes, so
//! a subject of any size exports in bounded memory.

use std::sync::Arc;

use serde::Serialize;

use crate::audit::Operation;
use crate::authz::{act, Grant, Render};
use crate::domain::{FieldName, FieldValue, Purpose, SubjectId, TenantId, Timestamp};

use super::super::usecase::Check;
use super::super::{Call, ServiceError, Vault};
use super::access::{HeldField, Recipient, FIELD_PAGE};

/// The `schema` member of every export document.
pub const EXPORT_SCHEMA: &str = "pii-vault.export/v1";
/// Largest chunk of the document handed out at once.
pub const EXPORT_CHUNK: usize = 64 * 1024;

/// What the exporter writes next.
#[derive(Clone, Debug)]
enum Next {
    /// Fields after this one (from the first when `None`).
    Fields(Option<FieldName>),
    /// Then the fields of the subject's legal shadow (transaction records under a legal
    /// retention duty) after this one.
    Retained(Option<FieldName>),
    /// Recipients among audit events after this sequence number.
    Recipients(u64),
    /// The closing members and brace.
    Close,
    Done,
}

/// An export in progress: its position in the subject's data and the bytes built but not
/// yet handed out.
pub struct Export {
    tenant: TenantId,
    subject: SubjectId,
    grant: Grant<act::Export>,
    /// Recipients are listed from the audit log as it stood when the export began: events
    /// up to this sequence number (the export's own event comes after).
    until: u64,
    next: Next,
    /// Document bytes not yet handed out: less than one chunk plus one page. Holds values.
    out: Vec<u8>,
    fields: u64,
    recipients: u64,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("tenant", &self.tenant)
            .field("subject", &self.subject)
            .field("next", &self.next)
            .field("buffered", &self.out.len())
            .finish_non_exhaustive()
    }
}

fn time(t: Timestamp) -> String {
    t.rfc3339()
}

fn json(out: &mut Vec<u8>, value: &impl Serialize) -> Result<(), ServiceError> {
    serde_json::to_writer(out, value)
        .map_err(|e| ServiceError::Internal(format!("export encoding: {e}")))
}

fn rendering_name(r: Render) -> &'static str {
    match r {
        Render::Redacted => "redacted",
        Render::Masked => "masked",
        Render::Whole => "whole",
        Render::Reveal => "revealed",
    }
}

/// A rendered value as JSON text: bytes in lower-case hex, every other kind as its text.
fn value_text(v: &FieldValue) -> String {
    match v {
        FieldValue::Bytes(b) => hex::encode(b),
        other => other.as_text().unwrap_or_default().to_owned(),
    }
}

#[derive(Serialize)]
struct RetentionJson {
    rule: &'static str,
    period_days: Option<u64>,
    expires_at: Option<String>,
}

#[derive(Serialize)]
struct FieldJson<'a> {
    name: &'a str,
    category: &'static str,
    kind: &'static str,
    value: Option<String>,
    rendering: &'static str,
    version: u64,
    created_at: String,
    updated_at: String,
    retention: RetentionJson,
    legal_retention: bool,
}

impl<'a> From<&'a HeldField> for FieldJson<'a> {
    fn from(f: &'a HeldField) -> Self {
        Self {
            name: f.meta.name.as_str(),
            category: f.meta.category.name(),
            kind: f.kind,
            value: f.value.as_ref().map(value_text),
            rendering: rendering_name(f.render),
            version: f.meta.version,
            created_at: time(f.meta.created_at),
            updated_at: time(f.meta.updated_at),
            retention: RetentionJson {
                rule: f.retention.description,
                period_days: f.retention.period_days(),
                expires_at: f.expires_at.map(time),
            },
            legal_retention: f.legal_retention,
        }
    }
}

#[derive(Serialize)]
struct RecipientJson<'a> {
    seq: u64,
    time: String,
    caller: &'a str,
    operation: &'static str,
    purpose: &'a str,
    fields: &'a [String],
    request_id: &'a str,
}

impl<'a> From<&'a Recipient> for RecipientJson<'a> {
    fn from(r: &'a Recipient) -> Self {
        Self {
            seq: r.seq,
            time: time(r.time),
            caller: &r.caller,
            operation: r.operation.name(),
            purpose: &r.purpose,
            fields: &r.fields,
            request_id: &r.request_id,
        }
    }
}

#[derive(Serialize)]
struct ConsentJson<'a> {
    purpose: &'a str,
    granted: bool,
    decided_at: String,
    source: &'a str,
}

#[derive(Serialize)]
struct RestrictionJson {
    restricted: bool,
    since: Option<String>,
}

/// Writes `"name":` followed by `value`, after a comma unless it is the first member.
fn member(
    out: &mut Vec<u8>, first: bool, name: &str, value: &impl Serialize,
) -> Result<(), ServiceError> {
    if !first {
        out.push(b',');
    }
    json(out, &name)?;
    out.push(b':');
    json(out, value)
}

impl Vault {
    /// Starts a portable export for a declared purpose. The export's audit event is durable
    /// before this returns; the document is then taken chunk by chunk with `export_chunk`.
    pub async fn export_subject(
        &self, call: &Call, tenant: &TenantId, subject: &SubjectId, purpose: &Purpose,
    ) -> Result<Export, ServiceError> {
        let check = Check::Subject {
            action: act::Export,
            tenant,
            subject,
            purpose: Some(purpose),
        };
        self.use_case(call, Operation::ExportSubject)
            .tenant(tenant)
            .subject(subject)
            .purpose(purpose)
            .run(
                check,
                |grant| async move { self.start_export(grant, tenant, subject) },
                |_, ev| ev.reason = "every field, streamed".into(),
            )
            .await
    }

    /// The next chunk of the document (at most `EXPORT_CHUNK` bytes) with the export to
    /// continue, or `None` once it has all been handed out. Built on a blocking thread
    /// (`blocking`): it reads the store and opens a page of fields. An error, or a panic
    /// (as an internal error), ends the export: it is never ended as if it were complete.
    pub async fn export_chunk(
        self: &Arc<Self>, mut export: Export,
    ) -> Result<Option<(Export, Vec<u8>)>, ServiceError> {
        let vault = self.clone();
        self.background
            .run_service("export step", move || {
                Ok(vault.export_next(&mut export)?.map(|chunk| (export, chunk)))
            })
            .await
    }

    fn start_export(
        &self, grant: Grant<act::Export>, tenant: &TenantId, subject: &SubjectId,
    ) -> Result<Export, ServiceError> {
        let (created, state) = self.report_subject(tenant, subject)?;
        let until = self.store.audit_last()?.map_or(0, |(seq, _)| seq);
        let mut out = Vec::with_capacity(EXPORT_CHUNK);
        out.push(b'{');
        member(&mut out, true, "schema", &EXPORT_SCHEMA)?;
        member(&mut out, false, "tenant", &tenant.as_str())?;
        member(&mut out, false, "subject", &subject.as_str())?;
        member(&mut out, false, "generated_at", &time(self.clock.now()))?;
        member(&mut out, false, "subject_created_at", &time(created))?;
        let restriction = RestrictionJson {
            restricted: state.restricted_since.is_some(),
            since: state.restricted_since.map(time),
        };
        member(&mut out, false, "restriction", &restriction)?;
        let consents: Vec<ConsentJson<'_>> = state
            .consents
            .iter()
            .map(|c| ConsentJson {
                purpose: c.purpose.as_str(),
                granted: c.granted,
                decided_at: time(c.at),
                source: &c.source,
            })
            .collect();
        member(&mut out, false, "consents", &consents)?;
        out.extend_from_slice(b",\"fields\":[");
        Ok(Export {
            tenant: tenant.clone(),
            subject: subject.clone(),
            grant,
            until,
            next: Next::Fields(None),
            out,
            fields: 0,
            recipients: 0,
        })
    }

    /// The next chunk of the document, or `None` once it has all been handed out. Blocking.
    fn export_next(&self, x: &mut Export) -> Result<Option<Vec<u8>>, ServiceError> {
        while x.out.len() < EXPORT_CHUNK && !matches!(x.next, Next::Done) {
            self.export_step(x)?;
        }
        if x.out.is_empty() {
            return Ok(None);
        }
        let rest = x.out.split_off(x.out.len().min(EXPORT_CHUNK));
        Ok(Some(std::mem::replace(&mut x.out, rest)))
    }

    /// Writes the next page (or the closing part) of the document into `x.out`.
    fn export_step(&self, x: &mut Export) -> Result<(), ServiceError> {
        match x.next.clone() {
            Next::Fields(ref after) | Next::Retained(ref after) => {
                let retained = matches!(x.next, Next::Retained(_));
                let page = self.held_fields_page(
                    &x.grant,
                    &x.tenant,
                    &x.subject,
                    retained,
                    after.as_ref(),
                )?;
                for f in &page {
                    if x.fields > 0 {
                        x.out.push(b',');
                    }
                    json(&mut x.out, &FieldJson::from(f))?;
                    x.fields += 1;
                }
                let more = page.last().filter(|_| page.len() == FIELD_PAGE);
                x.next = match (more, retained) {
                    (Some(last), false) => Next::Fields(Some(last.meta.name.clone())),
                    (Some(last), true) => Next::Retained(Some(last.meta.name.clone())),
                    (None, false) => Next::Retained(None),
                    (None, true) => {
                        x.out.push(b']');
                        member(&mut x.out, false, "field_count", &x.fields)?;
                        x.out.extend_from_slice(b",\"recipients\":[");
                        Next::Recipients(0)
                    }
                };
            }
            Next::Recipients(after) => {
                let (page, next) = self.recipients_page(&x.tenant, &x.subject, after, x.until)?;
                for r in &page {
                    if x.recipients > 0 {
                        x.out.push(b',');
                    }
                    json(&mut x.out, &RecipientJson::from(r))?;
                    x.recipients += 1;
                }
                x.next = next.map_or(Next::Close, Next::Recipients);
            }
            Next::Close => {
                x.out.push(b']');
                member(&mut x.out, false, "recipient_count", &x.recipients)?;
                x.out.push(b'}');
                x.next = Next::Done;
            }
            Next::Done => {}
        }
        Ok(())
    }
}
