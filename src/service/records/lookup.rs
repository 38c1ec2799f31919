//! Blind-index lookup: finding a subject by email, phone or another indexed field without
//! decrypting anything. An entry is keyed by an HMAC of the normalised value under the
//! tenant's index key, so the store holds no searchable plaintext.
//!
//! Entry key: `index key version | field name | HMAC tag | subject id`, length-prefixed.

use crate::audit::Operation;
use crate::authz::{act, Grant, Refusal};
use crate::codec::{Reader, Writer};
use crate::crypto::{Index, Key};
use crate::domain::{FieldName, FieldValue, InvalidInput, Purpose, SubjectId, TenantId};

use super::super::usecase::Check;
use super::super::{Call, ServiceError, Vault};

/// The label under which index keys MAC values.
const TAG_LABEL: &str = "blind-index-v1";

/// The text a value is indexed by: typed values are already normalised; free text is
/// trimmed and lower-cased. Bytes are never indexed.
pub(super) fn index_text(value: &FieldValue) -> Option<String> {
    match value {
        FieldValue::Bytes(_) => None,
        FieldValue::Text(t) => Some(t.trim().to_lowercase()),
        other => other.as_text().map(str::to_owned),
    }
}

fn prefix(key: &Key<Index>, field: &str, text: &str) -> Writer {
    let tag = key.mac(TAG_LABEL, &[field.as_bytes(), text.as_bytes()]);
    Writer::new().u32(key.version()).str(field).bytes(&tag)
}

/// The entry key of `subject`'s value `text` in field `field`.
pub(super) fn entry(
    key: &Key<Index>, field: &FieldName, text: &str, subject: &SubjectId,
) -> Vec<u8> {
    prefix(key, field.as_str(), text)
        .str(subject.as_str())
        .finish()
}

/// The entry that finds the holder of a card token: every token is indexed by itself
/// under the field `tok_`, a name no caller can use, so `FindSubjects` never reaches it.
pub(super) fn token_entry(key: &Key<Index>, token: &FieldName, subject: &SubjectId) -> Vec<u8> {
    prefix(key, FieldName::TOKEN_PREFIX, token.as_str())
        .str(subject.as_str())
        .finish()
}

fn subject_of(entry: &[u8]) -> Option<SubjectId> {
    let mut r = Reader::new(entry, "index entry");
    r.u32().ok()?;
    r.str().ok()?;
    r.bytes().ok()?;
    let subject = SubjectId::parse(r.str().ok()?).ok()?;
    r.finish().ok()?;
    Some(subject)
}

impl Vault {
    /// Subjects whose indexed field `field` holds `value` (normalised first).
    pub async fn find_subjects(
        &self, call: &Call, tenant: &TenantId, field: &FieldName, value: &FieldValue,
        purpose: &Purpose,
    ) -> Result<Vec<SubjectId>, ServiceError> {
        let check = Check::Candidates {
            action: act::Find,
            tenant,
            purpose,
        };
        self.use_case(call, Operation::FindSubjects)
            .tenant(tenant)
            .fields([field])
            .purpose(purpose)
            .run(
                check,
                |grant| async move {
                    let found = self.lookup(tenant, field, value)?;
                    self.servable(&grant, tenant, field, purpose, found)
                },
                |found: &Vec<SubjectId>, ev| ev.reason = format!("{} subjects found", found.len()),
            )
            .await
    }

    /// The subjects of `found` the caller may learn of: not reserved ids (legal shadows),
    /// the indexed field of a category the grant covers and not a card number, the subject
    /// neither restricted (unless the purpose is a legal obligation) nor without consent for
    /// the purpose. The others are left out silently: a refusal that depends on whether a
    /// value matched would itself confirm the guess.
    fn servable(
        &self, grant: &Grant<act::Find>, tenant: &TenantId, field: &FieldName, purpose: &Purpose,
        found: Vec<SubjectId>,
    ) -> Result<Vec<SubjectId>, ServiceError> {
        let card = FieldValue::CardNumber(String::new()).kind_code();
        let mut servable = Vec::with_capacity(found.len());
        for subject in found {
            if subject.is_reserved() {
                continue;
            }
            let Some(rec) = self.store.field(tenant, &subject, field)? else {
                continue;
            };
            if rec.kind == card || grant.category(rec.meta.category).is_err() {
                continue;
            }
            let state = self.checked_state(tenant, &subject)?;
            match self.authz.subject_allows(grant, Some(purpose), &state) {
                Ok(()) => servable.push(subject),
                Err(Refusal::Restricted | Refusal::NoConsent(_)) => {}
                Err(refused) => return Err(refused.into()),
            }
        }
        Ok(servable)
    }

    fn lookup(
        &self, tenant: &TenantId, field: &FieldName, value: &FieldValue,
    ) -> Result<Vec<SubjectId>, ServiceError> {
        self.tenant_record(tenant)?;
        if matches!(value, FieldValue::CardNumber(_)) {
            return Err(
                InvalidInput::new("card numbers are not indexed and cannot be looked up").into(),
            );
        }
        let text = index_text(value)
            .ok_or_else(|| InvalidInput::new("bytes values cannot be looked up"))?;
        self.scan_index(tenant, field.as_str(), &text)
    }

    /// The subjects holding the card token `token` (more than one only if its tenant's
    /// tokens are deterministic and several subjects hold the same card).
    pub(super) fn token_holders(
        &self, tenant: &TenantId, token: &FieldName,
    ) -> Result<Vec<SubjectId>, ServiceError> {
        self.scan_index(tenant, FieldName::TOKEN_PREFIX, token.as_str())
    }

    /// The subjects with an index entry for `text` in `field`, under any live key version.
    fn scan_index(
        &self, tenant: &TenantId, field: &str, text: &str,
    ) -> Result<Vec<SubjectId>, ServiceError> {
        let mut found = Vec::new();
        // Every live key version: during a rotation, entries of both versions exist.
        for key in self.keys.index_keys(tenant)? {
            let p = prefix(&key, field, text).finish();
            for e in self.store.index_scan(tenant, &p)? {
                found.extend(subject_of(&e));
            }
        }
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// Starts a new index key version, re-indexes every indexed field under it (decrypting
    /// each value once), then destroys the older versions. Returns the fields re-indexed.
    pub async fn rotate_index_key(
        &self, call: &Call, tenant: &TenantId,
    ) -> Result<u64, ServiceError> {
        self.use_case(call, Operation::RotateIndexKey)
            .tenant(tenant)
            .run(
                Check::action(act::KeyAdmin, Some(tenant)),
                |_| async move { self.reindex(tenant) },
                |n, ev| ev.reason = format!("{n} fields re-indexed"),
            )
            .await
    }

    /// Rotates the tenant's index key and re-indexes every indexed field under the new one,
    /// then destroys the old versions; returns how many fields were re-indexed.
    pub(in crate::service) fn reindex(&self, tenant: &TenantId) -> Result<u64, ServiceError> {
        self.tenant_record(tenant)?;
        let version = self.keys.rotate_index_key(tenant)?;
        let keys = self.keys.index_keys(tenant)?;
        let current = keys
            .iter()
            .find(|k| k.version() == version)
            .ok_or_else(|| ServiceError::Internal("new index key missing".into()))?;
        let mut count = 0;
        let mut after: Option<SubjectId> = None;
        loop {
            let page = self.store.subjects(tenant, after.as_ref(), 500)?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            for subject in &page {
                let Some(record) = self.store.subject(tenant, subject)? else {
                    continue;
                };
                let deks = self.subject_deks(tenant, subject, &record)?;
                for field in self.store.fields(tenant, subject)? {
                    if field.index_entry.is_empty() {
                        continue;
                    }
                    let name = field.meta.name.clone();
                    if name.is_token() {
                        // Indexed by the token itself: nothing to open.
                        let token = token_entry(current, &name, subject);
                        self.store.reindex_field(tenant, subject, &name, &token)?;
                        count += 1;
                        continue;
                    }
                    let value = Self::open_value(tenant, subject, &deks, &field)?;
                    if let Some(text) = index_text(&value) {
                        self.store.reindex_field(
                            tenant,
                            subject,
                            &name,
                            &entry(current, &name, &text, subject),
                        )?;
                        count += 1;
                    }
                }
            }
            after = Some(last);
        }
        self.keys.drop_index_keys(tenant, version)?;
        Ok(count)
    }
}
