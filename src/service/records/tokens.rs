//! Card tokens: a random token a service stores instead of a card number. The number is
//! kept as a sealed payment field of a reserved subject of the tenant, so it lives under the
//! same key hierarchy (and rotations) as every other value; the token itself is random and
//! says nothing about the number.

use crate::audit::Operation;
use crate::authz::{act, Grant, Refusal};
use crate::domain::{
    Category, FieldName, FieldValue, IdempotencyKey, NewField, Purpose, Render, SubjectId, TenantId,
};

use super::super::usecase::{no_detail, Check};
use super::super::{Call, ServiceError, Vault};
use super::Once;

/// The reserved subject that holds a tenant's tokenized card numbers.
fn token_store() -> Result<SubjectId, ServiceError> {
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
    /// Stores a (Luhn-checked) card number and returns a random token for it. Under the
    /// caller's idempotency key, the same number sent again by the same caller within
    /// `IDEMPOTENCY_RETENTION` gets the same token; another number under the key is refused.
    pub async fn tokenize(
        &self, call: &Call, tenant: &TenantId, card: &FieldValue, key: Option<&IdempotencyKey>,
    ) -> Result<Tokenized, ServiceError> {
        let once = key.map(|key| Once {
            operation: "Tokenize",
            key,
            names_by_vault: true,
        });
        self.use_case(call, Operation::Tokenize)
            .tenant(tenant)
            .run(
                Check::action(act::Tokenize, Some(tenant)),
                |grant| async move { self.store_token(&grant, call, tenant, card, once).await },
                |t: &Tokenized, ev| ev.fields = vec![t.token.clone()],
            )
            .await
    }

    async fn store_token(
        &self, grant: &Grant<act::Tokenize>, call: &Call, tenant: &TenantId, card: &FieldValue,
        once: Option<Once<'_>>,
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
            indexed: false,
            transaction_record: false,
            // A new token never replaces one that exists (a collision of random ids).
            expected_version: Some(0),
            // Tokens live until the token store is erased; not swept by category.
            ttl: Some(std::time::Duration::from_secs(100 * 365 * 86_400)),
        };
        let written = self
            .write_fields(
                grant,
                call.caller.as_str(),
                tenant,
                &token_store()?,
                &[field],
                once,
            )
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

    /// The card number behind a token; needs a grant that reveals payment fields.
    pub async fn detokenize(
        &self, call: &Call, tenant: &TenantId, token: &FieldName, purpose: &Purpose,
    ) -> Result<FieldValue, ServiceError> {
        let check = Check::Policy {
            action: act::Detokenize,
            tenant: Some(tenant),
            purpose: Some(purpose),
        };
        self.use_case(call, Operation::Detokenize)
            .tenant(tenant)
            .fields([token])
            .purpose(purpose)
            .run(
                check,
                |grant| async move { self.card_of(&grant, tenant, token) },
                no_detail,
            )
            .await
    }

    fn card_of(
        &self, grant: &Grant<act::Detokenize>, tenant: &TenantId, token: &FieldName,
    ) -> Result<FieldValue, ServiceError> {
        if grant.category(Category::Payment)?.0 != Render::Reveal {
            return Err(Refusal::NotGranted(
                "detokenize needs a rule with render = reveal for payment fields".into(),
            )
            .into());
        }
        let fields = self
            .read_fields(grant, tenant, &token_store()?, std::slice::from_ref(token))
            .map_err(|e| match e {
                ServiceError::SubjectNotFound | ServiceError::FieldNotFound(_) => {
                    ServiceError::TokenNotFound
                }
                other => other,
            })?;
        fields
            .into_iter()
            .next()
            .and_then(|f| f.value)
            .ok_or(ServiceError::TokenNotFound)
    }
}
