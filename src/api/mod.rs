//! The gRPC face of the vault: tonic handlers that turn protobuf messages into validated
//! domain types, call `service`, and map every `ServiceError` to one status code.
//!
//! Every request gets a `Call`: the caller's verified identity and a request id (the
//! client's `x-request-id` if it is well-formed, else a random one), echoed back in the
//! response's `x-request-id` header and written to the request's audit event.

mod access;
mod admin;
mod audit;
mod backup;
mod batch;
mod convert;
mod keys;
mod record;
mod rights;
mod status;
mod tenant;
mod tokens;

use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::authz::Caller;
use crate::domain::InvalidInput;
use crate::service::{Call, Operation, Vault};

pub use admin::AdminApi;
pub use audit::{outcome_name, AuditApi};
pub use backup::BackupApi;
pub use keys::KeyApi;
pub use record::RecordApi;
pub use rights::RightsApi;
pub use tenant::TenantApi;
pub use tokens::TokenApi;

/// Default and largest page sizes of list calls.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// Request-id header, accepted from clients and always sent back.
pub const REQUEST_ID: &str = "x-request-id";

/// The request id of a call, settled before any handler runs: the client's `x-request-id`
/// if it is well-formed, else a new random one, written into `headers` so that the
/// server's span, the handler (`call`) and the audit event all use the same id.
pub fn ensure_request_id(headers: &mut http::HeaderMap) -> String {
    let client = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok());
    let id = crate::service::request_id(client);
    if client != Some(id.as_str()) {
        if let Ok(v) = http::HeaderValue::from_str(&id) {
            headers.insert(REQUEST_ID, v);
        }
    }
    id
}

/// The `Call` of a request: its verified caller and its request id. A request without a
/// caller never came through the mTLS listener and is refused.
fn call<T>(req: &Request<T>) -> Result<Call, Status> {
    let caller = req.extensions().get::<Caller>().cloned().ok_or_else(|| {
        status::with_reason(
            tonic::Code::Unauthenticated,
            "no verified client certificate",
            crate::proto::v1::ErrorReason::ClientUnverified,
            &[],
        )
    })?;
    let client = req.metadata().get(REQUEST_ID).and_then(|v| v.to_str().ok());
    let request_id = crate::service::request_id(client);
    Ok(Call {
        caller: caller.identity,
        request_id,
    })
}

/// A response carrying the request id.
fn respond<T>(call: &Call, message: T) -> Response<T> {
    let mut resp = Response::new(message);
    if let Ok(v) = MetadataValue::try_from(call.request_id.as_str()) {
        resp.metadata_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// Passes parsed input through; malformed input is audited as such and refused.
async fn parsed<T>(
    vault: &Vault, call: &Call, op: Operation, input: Result<T, InvalidInput>,
) -> Result<T, Status> {
    match input {
        Ok(v) => Ok(v),
        Err(e) => Err(vault.reject(call, op, e.into()).await.into()),
    }
}

/// Tags a parse error with the request field it came from, for the BadRequest detail.
fn field(name: &'static str) -> impl FnOnce(InvalidInput) -> InvalidInput {
    move |e| e.in_field(name)
}

/// A request's optional idempotency key (empty: none).
fn idempotency_key(key: &str) -> Result<Option<crate::domain::IdempotencyKey>, InvalidInput> {
    match key {
        "" => Ok(None),
        key => crate::domain::IdempotencyKey::parse(key)
            .map(Some)
            .map_err(field("idempotency_key")),
    }
}

fn page_size(requested: u32) -> Result<usize, InvalidInput> {
    match requested {
        0 => Ok(DEFAULT_PAGE as usize),
        n if n <= MAX_PAGE => Ok(n as usize),
        n => Err(
            InvalidInput::new(format!("page_size is {n}; the limit is {MAX_PAGE}"))
                .in_field("page_size"),
        ),
    }
}

/// Builds the tonic services over one shared vault.
pub fn services(vault: Arc<Vault>) -> Services {
    Services {
        tenants: TenantApi::new(vault.clone()),
        records: RecordApi::new(vault.clone()),
        audit: AuditApi::new(vault.clone()),
        rights: RightsApi::new(vault.clone()),
        admin: AdminApi::new(vault.clone()),
        keys: KeyApi::new(vault.clone()),
        tokens: TokenApi::new(vault),
    }
}

/// Every gRPC service of the vault, over one shared `Vault`.
#[derive(Debug)]
pub struct Services {
    pub tenants: TenantApi,
    pub records: RecordApi,
    pub audit: AuditApi,
    pub keys: KeyApi,
    pub rights: RightsApi,
    pub admin: AdminApi,
    pub tokens: TokenApi,
}

#[cfg(test)]
mod tests {
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;

    fn assert_reason(status: &Status, code: Code, reason: &str) {
        assert_eq!(status.code(), code, "{status:?}");
        let details = status.get_error_details();
        let info = details.error_info().expect("an ErrorInfo");
        assert_eq!(info.domain, crate::proto::ERROR_DOMAIN);
        assert_eq!(info.reason, reason);
    }

    /// Only the mTLS listener puts a verified caller on a request: one without is refused
    /// before any handler runs, and says why.
    #[test]
    fn a_request_without_a_verified_caller_is_unauthenticated() {
        let status = call(&Request::new(())).expect_err("no caller");
        assert_reason(&status, Code::Unauthenticated, "CLIENT_UNVERIFIED");
    }
}
