//! The access report (GDPR art. 15): every field held on a subject with its retention rule,
//! the subject's consents and restriction, and the recipients of its data, taken from the
//! audit log. The portable export (`export`) streams the same content page by page, so
//! both are built from the paged helpers here.

use std::sync::Arc;

use crate::audit::{AuditFilter, Operation, Outcome};
use crate::authz::{act, Grant, Render};
use crate::domain::retention::{retention_rule, Rule};
use crate::domain::{
    FieldMeta, FieldName, FieldValue, SubjectId, SubjectState, TenantId, Timestamp,
};

use super::super::usecase::Check;
use super::super::{Call, ServiceError, Vault};

/// Field records read from the store, opened and rendered at a time.
pub(in crate::service) const FIELD_PAGE: usize = 128;
/// Recipients gathered from the audit log at a time.
pub(in crate::service) const RECIPIENT_PAGE: usize = 256;

/// Operations whose successful events handed a subject's values to their caller.
const DISCLOSURES: [Operation; 4] = [
    Operation::GetFields,
    Operation::AccessSubject,
    Operation::ExportSubject,
    // A card number revealed for one of the subject's tokens.
    Operation::Detokenize,
];

/// One field as the subject's report shows it.
#[derive(Clone, Debug)]
pub struct HeldField {
    pub meta: FieldMeta,
    /// The stored value's kind (`text`, `bytes`, `email`, ...), whatever the rendering.
    pub kind: &'static str,
    /// The value rendered for the caller; `None` when redacted.
    pub value: Option<FieldValue>,
    /// How `value` was rendered. A field of a category the caller's grant does not cover
    /// is still listed (the report is of everything held), but redacted.
    pub render: Render,
    pub retention: Rule,
    /// When the field expires under its retention rule; `None` when the rule has no fixed
    /// period.
    pub expires_at: Option<Timestamp>,
    /// A transaction record kept under a legal retention duty (in the subject's legal
    /// shadow): an erasure of the subject keeps it, unreadable, until `expires_at`.
    pub legal_retention: bool,
}

/// One disclosure of the subject's data: a successful read recorded in the audit log.
#[derive(Clone, Debug)]
pub struct Recipient {
    /// Sequence number of the audit event.
    pub seq: u64,
    pub time: Timestamp,
    /// Identity of the caller that received the data.
    pub caller: String,
    pub operation: Operation,
    pub purpose: String,
    /// Names of the fields read; empty for an export, which read every field its grant
    /// covered.
    pub fields: Vec<String>,
    pub request_id: String,
}

/// Everything the vault holds on a subject, and who received it.
#[derive(Debug)]
pub struct AccessReport {
    pub tenant: TenantId,
    pub subject: SubjectId,
    pub generated_at: Timestamp,
    /// When the subject's first field was written.
    pub subject_created_at: Timestamp,
    pub state: SubjectState,
    pub fields: Vec<HeldField>,
    pub recipients: Vec<Recipient>,
}

/// The kind the report gives a card token (listed without its card number).
pub const CARD_TOKEN_KIND: &str = "card_token";

/// The lower-case name of a stored value kind (its code is in the field record).
fn kind_name(kind: u8) -> &'static str {
    // `from_parts` only checks the kind for empty content, so this reads the kind without
    // opening the value.
    match FieldValue::from_parts(kind, Vec::new()) {
        Some(FieldValue::Text(_)) => "text",
        Some(FieldValue::Bytes(_)) => "bytes",
        Some(FieldValue::Email(_)) => "email",
        Some(FieldValue::Phone(_)) => "phone",
        Some(FieldValue::CardNumber(_)) => "card_number",
        Some(FieldValue::Iban(_)) => "iban",
        Some(FieldValue::Date(_)) => "date",
        None => "unknown",
    }
}

impl Vault {
    /// The report of everything held on a subject. The report is returned only after its
    /// own audit event (with the names of the fields whose values it shows) is durable.
    pub async fn access_subject(
        self: &Arc<Self>, call: &Call, tenant: &TenantId, subject: &SubjectId,
    ) -> Result<AccessReport, ServiceError> {
        self.use_case(call, Operation::AccessSubject)
            .tenant(tenant)
            .subject(subject)
            .run(
                Check::action(act::AccessReport, Some(tenant)),
                |grant| {
                    // A whole-log walk (the recipients): on the blocking pool.
                    let (vault, tenant, subject) = (self.clone(), tenant.clone(), subject.clone());
                    self.background.run_service("access report", move || {
                        vault.access_report(&grant, &tenant, &subject)
                    })
                },
                |report: &AccessReport, ev| {
                    ev.fields = report
                        .fields
                        .iter()
                        .filter(|f| f.value.is_some())
                        .map(|f| f.meta.name.to_string())
                        .collect();
                },
            )
            .await
    }

    fn access_report(
        &self, grant: &Grant<act::AccessReport>, tenant: &TenantId, subject: &SubjectId,
    ) -> Result<AccessReport, ServiceError> {
        let (created, state) = self.report_subject(tenant, subject)?;
        let mut fields = Vec::new();
        for retained in [false, true] {
            let mut after: Option<FieldName> = None;
            loop {
                let page =
                    self.held_fields_page(grant, tenant, subject, retained, after.as_ref())?;
                let last = page.len() < FIELD_PAGE;
                after = page.last().map(|f| f.meta.name.clone());
                fields.extend(page);
                if last {
                    break;
                }
            }
        }
        let mut recipients = Vec::new();
        let mut cursor = Some(0);
        while let Some(after) = cursor {
            let (page, next) = self.recipients_page(tenant, subject, after, u64::MAX)?;
            recipients.extend(page);
            cursor = next;
        }
        Ok(AccessReport {
            tenant: tenant.clone(),
            subject: subject.clone(),
            generated_at: self.clock.now(),
            subject_created_at: created,
            state,
            fields,
            recipients,
        })
    }

    /// When the subject was created and its consents and restriction; NOT_FOUND (erased
    /// or never known) when there is no live subject.
    pub(super) fn report_subject(
        &self, tenant: &TenantId, subject: &SubjectId,
    ) -> Result<(Timestamp, SubjectState), ServiceError> {
        self.tenant_record(tenant)?;
        let record = self.live_subject(tenant, subject)?;
        let state = self.checked_state(tenant, subject)?;
        Ok((record.created_at, state))
    }

    /// The subject's fields after `after`, at most `FIELD_PAGE`, opened and rendered per
    /// `grant`; fewer than `FIELD_PAGE` means this is the last page. With `retained`, the
    /// fields of its legal shadow (transaction records under a retention duty) instead. The
    /// subject is looked up again for every page, so an erasure during a long export ends it.
    pub(super) fn held_fields_page(
        &self, grant: &Grant<impl act::ListsHeld>, tenant: &TenantId, subject: &SubjectId,
        retained: bool, after: Option<&FieldName>,
    ) -> Result<Vec<HeldField>, ServiceError> {
        let record = self.live_subject(tenant, subject)?;
        let (holder, record) = if retained {
            let shadow = subject.legal_shadow();
            match self.store.subject(tenant, &shadow)? {
                Some(r) => (shadow, r),
                None => return Ok(Vec::new()),
            }
        } else {
            (subject.clone(), record)
        };
        let (subject, page) = (
            &holder,
            self.store.fields_page(tenant, &holder, after, FIELD_PAGE)?,
        );
        if page.is_empty() {
            return Ok(Vec::new());
        }
        let deks = self.subject_deks(tenant, subject, &record)?;
        page.into_iter()
            .map(|rec| {
                let render = grant
                    .category(rec.meta.category)
                    .map_or(Render::Redacted, |(render, _rule)| render);
                // A card token is listed by its token (the field's name), never its card.
                let token = rec.meta.name.is_token();
                let (render, value) = match render {
                    // Not opened at all: the caller may not see it.
                    Render::Redacted => (render, None),
                    _ if token => (Render::Redacted, None),
                    _ => (
                        render,
                        Self::open_value(tenant, subject, &deks, &rec)?.render(render),
                    ),
                };
                let retention = retention_rule(rec.meta.category);
                Ok(HeldField {
                    kind: if token {
                        CARD_TOKEN_KIND
                    } else {
                        kind_name(rec.kind)
                    },
                    value,
                    render,
                    expires_at: retention.expiry(rec.meta.updated_at),
                    retention,
                    legal_retention: retained,
                    meta: rec.meta,
                })
            })
            .collect()
    }

    /// Recipients of the subject's data among audit events after sequence number `after`
    /// and up to `until`, at most about `RECIPIENT_PAGE`, and where to resume (`None` when
    /// the log up to `until` is exhausted).
    pub(super) fn recipients_page(
        &self, tenant: &TenantId, subject: &SubjectId, after: u64, until: u64,
    ) -> Result<(Vec<Recipient>, Option<u64>), ServiceError> {
        let filter = AuditFilter {
            tenant: Some(tenant.to_string()),
            subject: Some(subject.to_string()),
            ..AuditFilter::default()
        };
        let page = self.audit.query(&filter, after, RECIPIENT_PAGE)?;
        let (events, cursor) = (page.events, page.cursor);
        let exhausted = page.end || cursor >= until;
        let recipients = events
            .into_iter()
            .filter(|e| e.seq <= until)
            .filter(|e| e.draft.outcome == Outcome::Ok && DISCLOSURES.contains(&e.draft.operation))
            .map(|e| Recipient {
                seq: e.seq,
                time: e.draft.time,
                caller: e.draft.caller,
                operation: e.draft.operation,
                purpose: e.draft.purpose,
                fields: e.draft.fields,
                request_id: e.draft.request_id,
            })
            .collect();
        Ok((recipients, (!exhausted).then_some(cursor)))
    }
}
