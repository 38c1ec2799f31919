//! `TokenService` handlers.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::{FieldValue, Purpose, SubjectId, TenantId};
use crate::proto::v1 as pb;
use crate::service::{Operation, Vault};

use super::{call, field, idempotency_key, parsed, respond};

/// Serves `piivault.v1.TokenService`.
#[derive(Debug, Clone)]
pub struct TokenApi {
    vault: Arc<Vault>,
}

impl TokenApi {
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }
}

#[tonic::async_trait]
impl pb::token_service_server::TokenService for TokenApi {
    async fn tokenize(
        &self, req: Request<pb::TokenizeRequest>,
    ) -> Result<Response<pb::TokenizeResponse>, Status> {
        let call = call(&req)?;
        let r = req.get_ref();
        let input = TenantId::parse(&r.tenant_id)
            .map_err(field("tenant_id"))
            .and_then(|t| {
                Ok((
                    t,
                    SubjectId::parse_external(&r.subject_id).map_err(field("subject_id"))?,
                    FieldValue::typed(5, &r.card_number).map_err(field("card_number"))?,
                    idempotency_key(&r.idempotency_key)?,
                ))
            });
        let (tenant, subject, card, key) =
            parsed(&self.vault, &call, Operation::Tokenize, input).await?;
        let t = self
            .vault
            .tokenize(&call, &tenant, &subject, &card, key.as_ref())
            .await?;
        Ok(respond(
            &call,
            pb::TokenizeResponse {
                token: t.token,
                masked: t.masked,
            },
        ))
    }

    async fn detokenize(
        &self, req: Request<pb::DetokenizeRequest>,
    ) -> Result<Response<pb::DetokenizeResponse>, Status> {
        let call = call(&req)?;
        let r = req.get_ref();
        let input = TenantId::parse(&r.tenant_id)
            .map_err(field("tenant_id"))
            .and_then(|t| {
                Ok((
                    t,
                    crate::service::token_field(&r.token).map_err(field("token"))?,
                    Purpose::parse(&r.purpose).map_err(field("purpose"))?,
                ))
            });
        let (tenant, token, purpose) =
            parsed(&self.vault, &call, Operation::Detokenize, input).await?;
        let card = self
            .vault
            .detokenize(&call, &tenant, &token, &purpose)
            .await?;
        Ok(respond(
            &call,
            pb::DetokenizeResponse {
                card_number: card.as_text().unwrap_or_default().to_owned(),
            },
        ))
    }
}
