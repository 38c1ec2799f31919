//! Card tokens: a random token a service stores instead of a card number. A token belongs
//! to a subject: it is stored as a payment field of that subject, named by the token and
//! sealed under the subject's key, with a blind-index entry (the token under the tenant's
//! index key) that finds its holder. Erasing the subject therefore ends its tokens with it:
//! the key is gone and the entry dropped, and the token answers NOT_FOUND. The token itself
//! is random and says nothing about the number.
//!
//! Tokens issued before they belonged to a subject were fields of one reserved subject of
//! the tenant (`pii-vault:card-tokens`); nothing ties them to a person, so an erasure could
//! never reach them. Detokenize refuses them (FAILED_PRECONDITION, `TOKEN_WITHOUT_SUBJECT`):
//! tokenize the card again for its holder.

use crate::audit::Operation;
use crate::authz::{act, Grant, Refusal};
use crate::domain::{
    Category, FieldName, FieldValue, IdempotencyKey, NewField, Purpose, Render, SubjectId, TenantId,
};

use super::super::usecase::Check;
use super::super::{Call, ServiceError, Vault};
use super::Once;

/// The reserved subject that held a tenant's tokenized card numbers before tokens belonged
/// to their subjects.
fn legacy_token_store() -> Result<SubjectId, ServiceError> {
    SubjectId::parse("pii-vault:card-tokens").map_err(|e| ServiceError::Internal(e.to_string()))
}

fn new_token() -> Result<FieldName, ServiceError> {
    let mut bytes = [0u8; 16];
    crate::crypto::fill_random(&mut bytes)
        .map_err(|_| ServiceError::Internal("no randomness for a token".into()))?;
    FieldName::parse(&format!("tok_{}", hex::encode(bytes)))
        .map_err(|e| ServiceError::Internal(e.to_string()))
}

/// A token and what a caller may see of the number.
#[derive(Debug, Clone)]
pub struct Tokenized {
    pub token: String,
    /// `**** 4242`.
    pub masked: String,
}

impl Vault {
    /// Stores a (Luhn-checked) card number of `subject` and returns a random token for it.
    /// Under the caller's idempotency key, the same number sent again by the same caller
    /// within `IDEMPOTENCY_RETENTION` gets the same token; another number under the key is
    /// refused.
    pub async fn tokenize(
        &self, call: &Call, tenant: &TenantId, subject: &SubjectId, card: &FieldValue,
        key: Option<&IdempotencyKey>,
    ) -> Result<Tokenized, ServiceError> {
        let once = key.map(|key| Once {
            operation: "Tokenize",
            key,
            names_by_vault: true,
        });
        self.use_case(call, Operation::Tokenize)
            .tenant(tenant)
            .subject(subject)
            .run(
                Check::action(act::Tokenize, Some(tenant)),
                |grant| async move {
                    self.store_token(&grant, call, tenant, subject, card, once)
                        .await
                },
                |t: &Tokenized, ev| ev.fields = vec![t.token.clone()],
            )
            .await
    }

    async fn store_token(
        &self, grant: &Grant<act::Tokenize>, call: &Call, tenant: &TenantId, subject: &SubjectId,
        card: &FieldValue, once: Option<Once<'_>>,
    ) -> Result<Tokenized, ServiceError> {
        let FieldValue::CardNumber(_) = card else {
            return Err(
                crate::domain::InvalidInput::new("only card numbers can be tokenized").into(),
            );
        };
        let token = new_token()?;
        let field = NewField {
            name: token.clone(),
            category: Category::Payment,
            value: card.clone(),
            // Indexed by the token (not the card): `token_entry`.
            indexed: false,
            transaction_record: false,
            // A new token never replaces one that exists (a collision of random ids).
            expected_version: Some(0),
            // Tokens live until their subject is erased; not swept by category.
            ttl: Some(std::time::Duration::from_secs(100 * 365 * 86_400)),
        };
        let written = self
            .write_fields(grant, call.caller.as_str(), tenant, subject, &[field], once)
            .await?;
        // A request sent again under its key answers the token first issued for it.
        let token = written.first().map_or(token, |w| w.meta.name.clone());
        Ok(Tokenized {
            token: token.to_string(),
            masked: card
                .render(Render::Masked)
                .and_then(|v| v.as_text().map(str::to_owned))
                .unwrap_or_default(),
        })
    }

    /// The card number behind a token; needs a grant that reveals payment fields, and the
    /// holder's restriction and consents must allow the purpose, as for a read of the field.
    pub async fn detokenize(
        &self, call: &Call, tenant: &TenantId, token: &FieldName, purpose: &Purpose,
    ) -> Result<FieldValue, ServiceError> {
        let check = Check::Policy {
            action: act::Detokenize,
            tenant: Some(tenant),
            purpose: Some(purpose),
        };
        let (card, _holder) = self
            .use_case(call, Operation::Detokenize)
            .tenant(tenant)
            .fields([token])
            .purpose(purpose)
            .run(
                check,
                |grant| async move { self.card_of(&grant, tenant, token, purpose) },
                // The holder is named, so the disclosure is in their access report.
                |(_, holder): &(FieldValue, SubjectId), ev| ev.subject = holder.to_string(),
            )
            .await?;
        Ok(card)
    }

    fn card_of(
        &self, grant: &Grant<act::Detokenize>, tenant: &TenantId, token: &FieldName,
        purpose: &Purpose,
    ) -> Result<(FieldValue, SubjectId), ServiceError> {
        if grant.category(Category::Payment)?.0 != Render::Reveal {
            return Err(Refusal::NotGranted(
                "detokenize needs a rule with render = reveal for payment fields".into(),
            )
            .into());
        }
        if !token.is_token() {
            return Err(ServiceError::TokenNotFound);
        }
        for holder in self.token_holders(tenant, token)? {
            if holder.is_reserved() {
                continue;
            }
            let state = self.checked_state(tenant, &holder)?;
            self.authz.subject_allows(grant, Some(purpose), &state)?;
            let Some(record) = self.store.subject(tenant, &holder)? else {
                continue;
            };
            let Some(field) = self.store.field(tenant, &holder, token)? else {
                continue;
            };
            let deks = self.subject_deks(tenant, &holder, &record)?;
            return Ok((Self::open_value(tenant, &holder, &deks, &field)?, holder));
        }
        if self
            .store
            .field(tenant, &legacy_token_store()?, token)?
            .is_some()
        {
            return Err(ServiceError::TokenWithoutSubject);
        }
        Err(ServiceError::TokenNotFound)
    }
}
