//! The write path: seal each value under the subject's current DEK, bound (AAD) to where it
//! lives, and store the sealed fields with a check that the key did not change meanwhile.
//! One loop (`retry::WRITE`) retries the whole attempt (key, seal, store) when another
//! write or a key job won the race; nothing below it in the service retries.

use std::time::Duration;

use crate::authz::{act, Act, Grant};
use crate::crypto::{Aad, Dek, Index, Key};
use crate::domain::{
    Category, FieldName, FieldValue, IdempotencyKey, InvalidInput, NewField, SubjectId, TenantId,
    Timestamp,
};
use crate::storage::{category_bit, Idempotency, SealedField, StoreError, SubjectWrite, Written};

use super::super::retry::{self, Attempt};
use super::super::{Call, ServiceError, Vault};
use super::lookup;

/// The context a field ciphertext is bound to: moving it to another tenant, subject or
/// field, or relabelling its category or kind, makes it fail to open. The DEK version is
/// bound by the envelope itself.
pub(super) fn field_aad(
    tenant: &TenantId, subject: &SubjectId, name: &FieldName, category: Category, kind: u8,
) -> Aad {
    Aad::new("field")
        .with(tenant.as_str().as_bytes())
        .with(subject.as_str().as_bytes())
        .with(name.as_str().as_bytes())
        .with(&[category.code(), kind])
}

/// Rectification trail of a write, for its audit event: what each replaced version was,
/// when and by whom it was written; never the value.
pub(super) fn rectification_trail(written: &[Written]) -> String {
    if written.iter().any(|w| w.replayed) {
        return "sent again under its idempotency key: answered as the first time, nothing written"
            .into();
    }
    written
        .iter()
        .filter_map(|w| {
            let p = w.previous.as_ref()?;
            let (secs, _) = p.updated_at.seconds_nanos();
            Some(format!(
                "{} v{} (written at {secs} by {}) -> v{}",
                p.name, p.version, p.updated_by, w.meta.version
            ))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The categories (a category mask) whose stored fields `grant` lets a write replace: the
/// store checks an overwrite against the stored field's category inside its transaction.
fn replaceable<A: Act>(grant: &Grant<A>) -> u32 {
    Category::ALL
        .into_iter()
        .filter(|c| grant.category(*c).is_ok())
        .fold(0, |mask, c| mask | category_bit(c))
}

/// How long a write's idempotency record answers the same request again.
pub const IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A write's idempotency key and the operation it came with: a key given to PutFields and
/// the same key given to Tokenize never meet.
#[derive(Clone, Copy, Debug)]
pub struct Once<'a> {
    pub operation: &'static str,
    pub key: &'a IdempotencyKey,
    /// The vault names the fields (a new random token each time): their names are not
    /// part of the request, so not of its fingerprint.
    pub names_by_vault: bool,
}

impl Once<'_> {
    /// The claim of a write of `fields` by `by` at `now`: the scope hashes who asks, for
    /// what and under which key; the fingerprint is a MAC of everything the request asks
    /// under a key derived from the subject's DEK, so it opens nothing once the subject
    /// is erased.
    fn claim(&self, by: &str, dek: &Key<Dek>, fields: &[NewField], now: Timestamp) -> Idempotency {
        let scope = crate::crypto::sha256(
            &crate::codec::Writer::new()
                .str(by)
                .str(self.operation)
                .str(self.key.as_str())
                .finish(),
        );
        let described: Vec<Vec<u8>> = fields
            .iter()
            .map(|f| {
                let name = if self.names_by_vault {
                    ""
                } else {
                    f.name.as_str()
                };
                crate::codec::Writer::new()
                    .str(name)
                    .u8(f.category.code())
                    .u8(f.value.kind_code())
                    .bytes(f.value.as_bytes())
                    .u8(u8::from(f.is_indexed()))
                    .u8(u8::from(f.transaction_record))
                    .u64(f.expected_version.map_or(u64::MAX, |v| v))
                    .u64(f.ttl.map_or(u64::MAX, |t| {
                        u64::try_from(t.as_micros()).unwrap_or(u64::MAX - 1)
                    }))
                    .finish()
            })
            .collect();
        let mut parts: Vec<&[u8]> = vec![self.operation.as_bytes()];
        parts.extend(described.iter().map(Vec::as_slice));
        let micros = u64::try_from(IDEMPOTENCY_RETENTION.as_micros()).unwrap_or(u64::MAX);
        Idempotency {
            scope,
            fingerprint: dek.mac("pii-vault idempotent request v1", &parts),
            expires_at: Timestamp(now.0.saturating_add(micros)),
        }
    }
}

/// Who writes and under which terms, the same for every attempt of one write.
struct Terms<'a> {
    by: &'a str,
    /// The categories whose stored fields the write may replace (`replaceable`).
    may_replace: u32,
    /// The tenant's current index key, when a field is indexed.
    index_key: Option<&'a Key<Index>>,
    once: Option<Once<'a>>,
}

/// The error once every attempt of the write lost its race.
fn contended() -> ServiceError {
    ServiceError::Internal("too many concurrent writes to one subject".into())
}

impl Vault {
    /// Writes `fields` to the subject, or, when they are payment transaction records, to its
    /// legal shadow (creating the subject itself first, so its erasure covers the shadow).
    pub(super) async fn write_to_subject(
        &self, grant: &Grant<act::Write>, call: &Call, tenant: &TenantId, subject: &SubjectId,
        fields: &[NewField], once: Option<Once<'_>>,
    ) -> Result<Vec<Written>, ServiceError> {
        let records = fields.iter().filter(|f| f.transaction_record).count();
        if records == 0 {
            return self
                .write_fields(grant, call.caller.as_str(), tenant, subject, fields, once)
                .await;
        }
        if records != fields.len() {
            return Err(InvalidInput::new(
                "transaction records are written in a request of their own (they live under a separate key)",
            )
            .into());
        }
        self.ensure_subject(call, tenant, subject).await?;
        self.write_fields(
            grant,
            call.caller.as_str(),
            tenant,
            &subject.legal_shadow(),
            fields,
            once,
        )
        .await
    }

    /// Creates the subject (its record and key) if it does not exist; refuses erased ones.
    async fn ensure_subject(
        &self, call: &Call, tenant: &TenantId, subject: &SubjectId,
    ) -> Result<(), ServiceError> {
        let terms = Terms {
            by: call.caller.as_str(),
            may_replace: 0,
            index_key: None,
            once: None,
        };
        retry::WRITE
            .run(
                || self.store_attempt(tenant, subject, &[], &terms),
                contended,
            )
            .await
            .map(drop)
    }

    /// Seals and stores `fields` (checked against the limits and `grant` first), retrying
    /// per `retry::WRITE`; under `once`'s key, a request sent again gets its first answer.
    pub(super) async fn write_fields(
        &self, grant: &Grant<impl act::WritesFields>, by: &str, tenant: &TenantId,
        subject: &SubjectId, fields: &[NewField], once: Option<Once<'_>>,
    ) -> Result<Vec<Written>, ServiceError> {
        self.check_put(fields)?;
        for f in fields {
            grant.category(f.category)?;
            if f.is_indexed() && matches!(f.value, FieldValue::CardNumber(_)) {
                // A blind index of a card number is an oracle for guessing it (the masked
                // and truncated renders leave ~10^5 candidates): never built.
                return Err(InvalidInput::new(format!(
                    "field {} is a card number: card numbers cannot be indexed",
                    f.name
                ))
                .into());
            }
        }
        let index_key = match fields.iter().any(|f| f.is_indexed() || f.name.is_token()) {
            true => self.keys.index_keys(tenant)?.first().cloned(),
            false => None,
        };
        let terms = Terms {
            by,
            may_replace: replaceable(grant),
            index_key: index_key.as_deref(),
            once,
        };
        retry::WRITE
            .run(
                || self.store_attempt(tenant, subject, fields, &terms),
                contended,
            )
            .await
    }

    /// One attempt of a write: the sealing key, the sealed fields, the store's
    /// compare-and-write (which refuses to replace a stored field of a category outside
    /// `terms.may_replace`). `Again` when the key changed or another write stored first.
    async fn store_attempt(
        &self, tenant: &TenantId, subject: &SubjectId, fields: &[NewField], terms: &Terms<'_>,
    ) -> Result<Attempt<Vec<Written>>, ServiceError> {
        let Attempt::Done((record, dek)) = self.sealing_key(tenant, subject, fields.len()).await?
        else {
            return Ok(Attempt::Again);
        };
        let sealed = fields
            .iter()
            .map(|f| {
                let kind = f.value.kind_code();
                let aad = field_aad(tenant, subject, &f.name, f.category, kind);
                Ok(SealedField {
                    name: f.name.clone(),
                    category: f.category,
                    kind,
                    sealed: dek
                        .seal(f.value.as_bytes(), &aad)
                        .map_err(|_| ServiceError::Internal("sealing a field failed".into()))?,
                    expires_at: self.retention.expiry(f.category, f.ttl, self.clock.now()),
                    expected: f.expected_version,
                    index_entry: match terms.index_key {
                        Some(key) if f.name.is_token() => {
                            lookup::token_entry(key, &f.name, subject)
                        }
                        Some(key) if f.is_indexed() => lookup::index_text(&f.value)
                            .map(|text| lookup::entry(key, &f.name, &text, subject))
                            .unwrap_or_default(),
                        _ => Vec::new(),
                    },
                })
            })
            .collect::<Result<Vec<_>, ServiceError>>()?;
        let now = self.clock.now();
        let write = SubjectWrite {
            subject: record,
            fields: sealed,
            now,
            by: terms.by.to_owned(),
            may_replace: terms.may_replace,
            idempotency: terms.once.map(|o| o.claim(terms.by, &dek, fields, now)),
        };
        match self.store.put_fields(tenant, subject, &write) {
            Ok(written) => Ok(Attempt::Done(written)),
            // Another write created or re-keyed the subject first: seal again.
            Err(StoreError::Conflict) => Ok(Attempt::Again),
            Err(e) => Err(e.into()),
        }
    }
}
