//! Errors of the use cases (`ServiceError`): each variant maps to exactly one gRPC status in
//! `api`, and to one audit outcome here. What can only go wrong while the vault opens is an
//! `OpenError`, never answered to a request.

use crate::audit::Outcome;
use crate::authz::Refusal;
use crate::domain::{FieldName, InvalidInput};
use crate::keyring::KeyringError;
use crate::storage::StoreError;

use super::{AuditError, HighWaterError};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    InvalidArgument(#[from] InvalidInput),
    #[error("tenant not found")]
    TenantNotFound,
    #[error("tenant already exists")]
    TenantExists,
    #[error("subject not found")]
    SubjectNotFound,
    /// The subject was erased: every read answers NOT_FOUND with this reason, and with the
    /// erasure receipt's id when the tombstone was read (a write racing the erasure has none).
    #[error("subject not found: it was erased")]
    SubjectErased { receipt: Option<String> },
    #[error("field {0} not found")]
    FieldNotFound(FieldName),
    #[error("token not found (never issued, or its holder was erased)")]
    TokenNotFound,
    /// A token issued before tokens belonged to a subject: no erasure could reach it, so it
    /// is not served.
    #[error(
        "this token was issued before tokens belonged to a subject and is no longer served: \
         tokenize the card again with its holder's subject_id"
    )]
    TokenWithoutSubject,
    /// A field is not at the version the write expected: nothing was written.
    #[error("field {field} is at version {stored}, not the expected one; nothing was written")]
    VersionMismatch { field: FieldName, stored: u64 },
    /// The idempotency key came with another request before: nothing was done.
    #[error(
        "the idempotency key was used for a different request in the last 24 hours; \
         nothing was written (use a new key for a new request)"
    )]
    IdempotencyKeyReused,
    /// The policy, the subject's restriction or its consents refuse the request.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The tenant was shredded: every read and write of it answers NOT_FOUND with this reason.
    #[error("tenant not found: it was shredded")]
    TenantShredded,
    /// A key reached its usage limit and must be rotated first. The message names the
    /// key's kind and version, never the key.
    #[error("{0}")]
    KeyLimit(String),
    /// A key operation cannot proceed in the current state (a re-wrap still running, no
    /// root key file to rewrite). The message names the condition, never a key.
    #[error("{0}")]
    KeyPrecondition(String),
    /// The store cannot be read or written right now; the request may be retried.
    #[error("storage unavailable")]
    Unavailable(#[source] StoreError),
    /// The keys the request needs kept changing under it (concurrent rotations, a re-wrap
    /// retiring the version it read); the request may be retried.
    #[error("keys busy")]
    KeysBusy(#[source] KeyringError),
    /// The audit event could not be made durable: the request fails closed.
    #[error("audit log unavailable")]
    AuditUnavailable(#[source] AuditError),
    /// A subject's state record or tombstone is not the one last written for it (rolled
    /// back, forged, swapped, damaged): refused rather than acted on. The cause (a few fixed
    /// words) is logged where it was found, never a field of the record.
    #[error("subject state record failed its integrity check")]
    Integrity(&'static str),
    /// Something that should not happen (damaged data, a key that does not open). The
    /// cause is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why the vault could not open; only `Vault::open` returns it.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The audit key could not be read or unwrapped.
    #[error("audit key: {0}")]
    AuditKey(#[source] KeyringError),
    /// The store is older than its audit high-water mark, or the mark is damaged.
    #[error(transparent)]
    RolledBack(#[from] HighWaterError),
    /// The SIEM mirror of the audit log could not be opened.
    #[error("audit sink: {0}")]
    AuditSink(#[source] std::io::Error),
    /// The audit chain's head could not be read from the store.
    #[error("audit log: {0}")]
    AuditLog(#[source] StoreError),
    /// The erasure ledger cannot be read, is damaged, or is not this store's.
    #[error(transparent)]
    Ledger(#[from] super::rights::LedgerError),
}

impl ServiceError {
    /// The audit outcome of a request that failed this way.
    pub fn outcome(&self) -> Outcome {
        match self {
            ServiceError::InvalidArgument(_) | ServiceError::TenantExists => Outcome::Invalid,
            ServiceError::KeyLimit(_)
            | ServiceError::KeyPrecondition(_)
            | ServiceError::VersionMismatch { .. }
            | ServiceError::TokenWithoutSubject
            | ServiceError::IdempotencyKeyReused => Outcome::Denied,
            ServiceError::TenantNotFound
            | ServiceError::TenantShredded
            | ServiceError::SubjectNotFound
            | ServiceError::SubjectErased { .. }
            | ServiceError::FieldNotFound(_)
            | ServiceError::TokenNotFound => Outcome::NotFound,
            ServiceError::Refused(_) => Outcome::Denied,
            ServiceError::Unavailable(_)
            | ServiceError::Integrity(_)
            | ServiceError::KeysBusy(_)
            | ServiceError::AuditUnavailable(_)
            | ServiceError::Internal(_) => Outcome::Error,
        }
    }

    /// The reason written to the audit event: names and classes only, never a value and
    /// never an internal detail.
    pub fn audit_reason(&self) -> String {
        match self {
            ServiceError::Internal(_) => "internal error".into(),
            other => other.to_string(),
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Backend(_) => ServiceError::Unavailable(e),
            StoreError::NoTenant => ServiceError::TenantNotFound,
            StoreError::Erased => ServiceError::SubjectErased { receipt: None },
            StoreError::NotGranted { field, category } => {
                ServiceError::Refused(Refusal::NotGranted(format!(
                    "no rule grants write of {} fields: field {field} is one",
                    category.name()
                )))
            }
            StoreError::Integrity(why) => ServiceError::Integrity(why),
            StoreError::VersionMismatch { field, stored } => {
                ServiceError::VersionMismatch { field, stored }
            }
            StoreError::IdempotencyKeyReused => ServiceError::IdempotencyKeyReused,
            StoreError::Corrupt(_) | StoreError::AuditDamaged { .. } | StoreError::Conflict => {
                ServiceError::Internal(e.to_string())
            }
        }
    }
}

impl From<KeyringError> for ServiceError {
    fn from(e: KeyringError) -> Self {
        match e {
            KeyringError::Store(e) => e.into(),
            KeyringError::Shredded => ServiceError::TenantShredded,
            KeyringError::LimitReached(_) => ServiceError::KeyLimit(e.to_string()),
            KeyringError::NoRootFile
            | KeyringError::UnsafeRootFile { .. }
            | KeyringError::RootNotWritable { .. }
            | KeyringError::RootFileNotShared(_) => ServiceError::KeyPrecondition(e.to_string()),
            KeyringError::Contended(_) | KeyringError::Retired | KeyringError::Token(_) => {
                ServiceError::KeysBusy(e)
            }
            // Damage, tampering or a wrong root key: logged, never sent.
            KeyringError::RootFile { .. }
            | KeyringError::RootMismatch
            | KeyringError::RootVersionGone { .. }
            | KeyringError::Unwrap
            | KeyringError::Missing(_) => ServiceError::Internal(e.to_string()),
        }
    }
}
