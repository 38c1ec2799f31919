//! The gRPC face of the vault: tonic handlers that turn protobuf messages into validated
//! domain types, call `service`, and map every `ServiceError` to one status code.

mod convert;
mod record;
mod status;
mod tenant;

use std::sync::Arc;

use tonic::{Request, Status};

use crate::authz::Caller;
use crate::service::Vault;

pub use record::RecordApi;
pub use tenant::TenantApi;

/// Default and largest page sizes of list calls.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// The caller of a request, as verified at the TLS handshake. A request without one never
/// came through the mTLS listener and is refused.
fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no verified client certificate"))
}

fn page_size(requested: u32) -> Result<usize, Status> {
    match requested {
        0 => Ok(DEFAULT_PAGE as usize),
        n if n <= MAX_PAGE => Ok(n as usize),
        n => Err(Status::invalid_argument(format!(
            "page_size is {n}; the limit is {MAX_PAGE}"
        ))),
    }
}

/// Builds the tonic services over one shared vault.
pub fn services(vault: Arc<Vault>) -> (TenantApi, RecordApi) {
    (TenantApi::new(vault.clone()), RecordApi::new(vault))
}
