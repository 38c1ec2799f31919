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

use std::collections::BTreeSet;

use crate::audit::Operation;
use crate::authz::{act, Grant, Refusal};
use crate::domain::typed::luhn_ok;
use crate::domain::{
    Category, FieldName, FieldValue, IdempotencyKey, InvalidInput, NewField, Purpose, Render,
    SubjectId, TenantId,
};

use super::super::usecase::Check;
use super::super::{Call, ServiceError, Vault};
use super::Once;

/// The reserved subject that held a tenant's tokenized card numbers before tokens belonged
/// to their subjects.
fn legacy_token_store() -> Result<SubjectId, ServiceError> {
    SubjectId::parse("pii-vault:card-tokens").map_err(|e| ServiceError::Internal(e.to_string()))
}

/// The label under which a tenant's index key makes deterministic tokens.
const DETERMINISTIC_LABEL: &str = "card-token-v1";
/// New random tokens tried before a collision with another card's token is reported.
const COLLISION_TRIES: usize = 8;

/// The shape of each tenant's card tokens (`[tokens]` in the configuration).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenSettings {
    /// Tenants whose tokens are an HMAC of the card (the same card, the same token) rather
    /// than random.
    pub deterministic: BTreeSet<TenantId>,
    /// Tenants whose tokens are 16 Luhn-valid digits, starting with 9 and ending with the
    /// card's last four, rather than `tok_` and 32 hex digits.
    pub card_shaped: BTreeSet<TenantId>,
}

/// The token (as its field name) made of 16 bytes of randomness or HMAC: `tok_` and 32 hex
/// digits, or card-shaped: `9`, ten digits of the bytes, the Luhn digit, the card's last
/// four (so the whole passes the Luhn check; 9 is ISO/IEC 7812's national-assignment
/// range, outside the international card networks' ranges).
fn token_name(bytes: &[u8; 16], card_shaped: bool, card: &str) -> Result<FieldName, ServiceError> {
    let text = if card_shaped {
        let n = u128::from_be_bytes(*bytes) % 10_000_000_000;
        let last_four = card.get(card.len().saturating_sub(4)..).unwrap_or_default();
        (0..10)
            .map(|check| format!("9{n:010}{check}{last_four}"))
            .find(|digits| luhn_ok(digits))
            .map(|digits| format!("{}{digits}", FieldName::TOKEN_PREFIX))
            .ok_or_else(|| ServiceError::Internal("no Luhn digit fits the token".into()))?
    } else {
        format!("{}{}", FieldName::TOKEN_PREFIX, hex::encode(bytes))
    };
    FieldName::parse(&text).map_err(|e| ServiceError::Internal(e.to_string()))
}

/// The token as a caller sees it: a card-shaped token without the field name's prefix.
fn shown(token: &FieldName) -> String {
    let rest = token.as_str().trim_start_matches(FieldName::TOKEN_PREFIX);
    if rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_digit()) {
        rest.to_owned()
    } else {
        token.to_string()
    }
}

/// The field name of a token as a caller gives it (a card-shaped one without its prefix).
pub fn token_field(token: &str) -> Result<FieldName, InvalidInput> {
    if token.len() == 16 && token.bytes().all(|b| b.is_ascii_digit()) {
        FieldName::parse(&format!("{}{token}", FieldName::TOKEN_PREFIX))
    } else {
        FieldName::parse(token)
    }
}

fn tokenized(token: &FieldName, card: &FieldValue) -> Tokenized {
    Tokenized {
        token: shown(token),
        masked: card
            .render(Render::Masked)
            .and_then(|v| v.as_text().map(str::to_owned))
            .unwrap_or_default(),
    }
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
        let digits = card.as_text().unwrap_or_default();
        let deterministic = self.tokens.deterministic.contains(tenant);
        let card_shaped = self.tokens.card_shaped.contains(tenant);
        let mut tries = 0;
        let token = loop {
            let mut bytes = [0u8; 16];
            if deterministic {
                let keys = self.keys.index_keys(tenant)?;
                let key = keys
                    .first()
                    .ok_or_else(|| ServiceError::Internal("the tenant has no index key".into()))?;
                let tag = key.mac(DETERMINISTIC_LABEL, &[digits.as_bytes()]);
                bytes.copy_from_slice(&tag[..16]);
            } else {
                crate::crypto::fill_random(&mut bytes)
                    .map_err(|_| ServiceError::Internal("no randomness for a token".into()))?;
            }
            let token = token_name(&bytes, card_shaped, digits)?;
            let (mine, other_card) = self.token_owners(tenant, subject, &token, card)?;
            if other_card {
                // A card-shaped token has ten free digits: another card may have it.
                tries += 1;
                if deterministic || tries >= COLLISION_TRIES {
                    return Err(ServiceError::Internal(
                        "the token for this card is another card's token".into(),
                    ));
                }
                continue;
            }
            if mine && deterministic {
                // The same card of the same subject again: the token it has.
                return Ok(tokenized(&token, card));
            }
            if !mine {
                break token;
            }
        };
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
        let written = match self
            .write_fields(grant, call.caller.as_str(), tenant, subject, &[field], once)
            .await
        {
            // A deterministic token stored by a concurrent request for the same card.
            Err(ServiceError::VersionMismatch { .. }) if deterministic => {
                return Ok(tokenized(&token, card))
            }
            other => other?,
        };
        // A request sent again under its key answers the token first issued for it.
        let token = written.first().map_or(token, |w| w.meta.name.clone());
        Ok(tokenized(&token, card))
    }

    /// The card behind `holder`'s token field `token`, if the holder still has it.
    fn held_token(
        &self, tenant: &TenantId, holder: &SubjectId, token: &FieldName,
    ) -> Result<Option<FieldValue>, ServiceError> {
        let Some(record) = self.store.subject(tenant, holder)? else {
            return Ok(None);
        };
        let Some(field) = self.store.field(tenant, holder, token)? else {
            return Ok(None);
        };
        let deks = self.subject_deks(tenant, holder, &record)?;
        Self::open_value(tenant, holder, &deks, &field).map(Some)
    }

    /// Who holds `token` already: `subject` with this very card, and whether any subject
    /// holds it for another card.
    fn token_owners(
        &self, tenant: &TenantId, subject: &SubjectId, token: &FieldName, card: &FieldValue,
    ) -> Result<(bool, bool), ServiceError> {
        let (mut mine, mut other_card) = (false, false);
        for holder in self.token_holders(tenant, token)? {
            let Some(held) = self.held_token(tenant, &holder, token)? else {
                continue;
            };
            if !crate::crypto::mac_eq(held.as_bytes(), card.as_bytes()) {
                other_card = true;
            } else if holder == *subject {
                mine = true;
            }
        }
        Ok((mine, other_card))
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
            if let Some(card) = self.held_token(tenant, &holder, token)? {
                return Ok((card, holder));
            }
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
