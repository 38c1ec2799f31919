//! The one mapping from service errors to gRPC statuses. Exhaustive: a new error variant
//! does not compile until it is given a code and a reason here.
//!
//! Every status carries a `google.rpc.ErrorInfo` (domain `piivault.v1`, reason an
//! `ErrorReason` name, see `proto/piivault/v1/errors.proto`); INVALID_ARGUMENT adds a
//! `BadRequest` when the field is known, UNAVAILABLE a `RetryInfo`.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::authz::Refusal;
use crate::proto::v1::ErrorReason;
use crate::proto::ERROR_DOMAIN;
use crate::service::ServiceError;

/// How long a client should wait before retrying a call that found the store or the audit
/// log unavailable: long enough for a stalled disk or a PostgreSQL failover to show.
const RETRY_UNAVAILABLE: Duration = Duration::from_secs(1);
/// ... and one that met keys changing under it: those changes take milliseconds.
const RETRY_KEYS_BUSY: Duration = Duration::from_millis(100);

/// A status with its ErrorInfo. `metadata` holds names and ids only, never a value.
pub fn with_reason(
    code: Code, message: impl Into<String>, reason: ErrorReason, metadata: &[(&str, &str)],
) -> Status {
    detailed(code, message, reason, metadata, |_| {})
}

fn detailed(
    code: Code, message: impl Into<String>, reason: ErrorReason, metadata: &[(&str, &str)],
    more: impl FnOnce(&mut ErrorDetails),
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut details = ErrorDetails::new();
    details.set_error_info(reason.as_str_name(), ERROR_DOMAIN, metadata);
    more(&mut details);
    Status::with_error_details(code, message, details)
}

fn retry_after(message: &str, reason: ErrorReason, after: Duration) -> Status {
    detailed(Code::Unavailable, message, reason, &[], |d| {
        d.set_retry_info(Some(after));
    })
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        use ErrorReason as R;
        let message = e.to_string();
        match e {
            ServiceError::InvalidArgument(problem) => {
                detailed(Code::InvalidArgument, message, R::InvalidInput, &[], |d| {
                    if let Some(field) = problem.field() {
                        d.add_bad_request_violation(field, problem.to_string());
                    }
                })
            }
            ServiceError::TenantNotFound => {
                with_reason(Code::NotFound, message, R::TenantNotFound, &[])
            }
            ServiceError::TenantExists => {
                with_reason(Code::AlreadyExists, message, R::TenantExists, &[])
            }
            ServiceError::SubjectNotFound => {
                with_reason(Code::NotFound, message, R::SubjectNotFound, &[])
            }
            ServiceError::SubjectErased { receipt } => {
                let metadata: Vec<(&str, &str)> = receipt
                    .iter()
                    .map(|id| ("receipt_id", id.as_str()))
                    .collect();
                with_reason(Code::NotFound, message, R::SubjectErased, &metadata)
            }
            ServiceError::VersionMismatch { field, stored } => with_reason(
                Code::Aborted,
                message,
                R::VersionMismatch,
                &[
                    ("field", field.as_str()),
                    ("stored_version", &stored.to_string()),
                ],
            ),
            ServiceError::IdempotencyKeyReused => with_reason(
                Code::FailedPrecondition,
                message,
                R::IdempotencyKeyReused,
                &[],
            ),
            ServiceError::TokenNotFound => {
                with_reason(Code::NotFound, message, R::TokenNotFound, &[])
            }
            ServiceError::TokenWithoutSubject => with_reason(
                Code::FailedPrecondition,
                message,
                R::TokenWithoutSubject,
                &[],
            ),
            ServiceError::FieldNotFound(name) => with_reason(
                Code::NotFound,
                message,
                R::FieldNotFound,
                &[("field", name.as_str())],
            ),
            ServiceError::Refused(Refusal::NotGranted(_)) => {
                with_reason(Code::PermissionDenied, message, R::PolicyDenied, &[])
            }
            ServiceError::Refused(Refusal::Restricted) => {
                with_reason(Code::FailedPrecondition, message, R::SubjectRestricted, &[])
            }
            ServiceError::Refused(Refusal::NoConsent(purpose)) => with_reason(
                Code::FailedPrecondition,
                message,
                R::ConsentWithdrawn,
                &[("purpose", purpose.as_str())],
            ),
            ServiceError::Refused(Refusal::ConsentUncheckable(purpose)) => with_reason(
                Code::FailedPrecondition,
                message,
                R::ConsentUncheckable,
                &[("purpose", purpose.as_str())],
            ),
            ServiceError::TenantShredded => {
                with_reason(Code::NotFound, message, R::TenantShredded, &[])
            }
            ServiceError::KeyLimit(_) => {
                with_reason(Code::FailedPrecondition, message, R::KeyLimitReached, &[])
            }
            ServiceError::KeyPrecondition(_) => with_reason(
                Code::FailedPrecondition,
                message,
                R::KeyOperationBlocked,
                &[],
            ),
            ServiceError::AuditUnavailable(cause) => {
                tracing::warn!(%cause, "audit log unavailable; request failed closed");
                retry_after(
                    "audit log unavailable; retry later",
                    R::AuditUnavailable,
                    RETRY_UNAVAILABLE,
                )
            }
            ServiceError::Unavailable(cause) => {
                tracing::warn!(%cause, "storage unavailable");
                retry_after(
                    "storage unavailable; retry later",
                    R::StorageUnavailable,
                    RETRY_UNAVAILABLE,
                )
            }
            ServiceError::KeysBusy(cause) => {
                tracing::warn!(%cause, "keys changing concurrently");
                retry_after("keys busy; retry later", R::KeysBusy, RETRY_KEYS_BUSY)
            }
            ServiceError::Integrity(why) => {
                // Rolled back or tampered with: DATA_LOSS, "unrecoverable data loss or
                // corruption" in tonic's codes. The cause names no field of the record.
                tracing::error!(
                    cause = why,
                    "subject state record failed its integrity check"
                );
                with_reason(Code::DataLoss, message, R::IntegrityCheckFailed, &[])
            }
            ServiceError::Internal(cause) => {
                // The cause stays in the server log; the client learns nothing that could leak.
                tracing::error!(%cause, "internal error");
                with_reason(Code::Internal, "internal error", R::InternalError, &[])
            }
        }
    }
}
