//! The one mapping from service errors to gRPC statuses. Exhaustive: a new error variant
//! does not compile until it is given a code here.

use tonic::Status;

use crate::authz::Refusal;
use crate::service::ServiceError;

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::InvalidArgument(problem) => Status::invalid_argument(problem.to_string()),
            ServiceError::TenantNotFound => Status::not_found("tenant not found"),
            ServiceError::TenantExists => Status::already_exists("tenant already exists"),
            ServiceError::SubjectNotFound => Status::not_found("subject not found"),
            ServiceError::SubjectErased => Status::not_found("subject not found: it was erased"),
            ServiceError::TokenNotFound => Status::not_found("token not found"),
            ServiceError::FieldNotFound(name) => {
                Status::not_found(format!("field {name} not found"))
            }
            ServiceError::Refused(r @ Refusal::NotGranted(_)) => {
                Status::permission_denied(r.to_string())
            }
            ServiceError::Refused(
                r @ (Refusal::Restricted | Refusal::NoConsent(_) | Refusal::ConsentUncheckable(_)),
            ) => Status::failed_precondition(r.to_string()),
            ServiceError::TenantShredded => Status::not_found("tenant not found: it was shredded"),
            ServiceError::KeyPrecondition(why) => Status::failed_precondition(why),
            ServiceError::AuditUnavailable(cause) => {
                tracing::warn!(%cause, "audit log unavailable; request failed closed");
                Status::unavailable("audit log unavailable; retry later")
            }
            ServiceError::Unavailable(cause) => {
                tracing::warn!(%cause, "storage unavailable");
                Status::unavailable("storage unavailable; retry later")
            }
            ServiceError::KeysBusy(cause) => {
                tracing::warn!(%cause, "keys changing concurrently");
                Status::unavailable("keys busy; retry later")
            }
            ServiceError::Integrity(why) => {
                // Rolled back or tampered with: DATA_LOSS, "unrecoverable data loss or
                // corruption" in tonic's codes. The cause names no field of the record.
                tracing::error!(
                    cause = why,
                    "subject state record failed its integrity check"
                );
                Status::data_loss("subject state record failed its integrity check")
            }
            ServiceError::Internal(cause) => {
                // The cause stays in the server log; the client learns nothing that could leak.
                tracing::error!(%cause, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
