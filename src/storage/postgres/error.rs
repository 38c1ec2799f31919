//! What a PostgreSQL step can fail with, and the one conversion of PostgreSQL's errors into
//! store errors (which decides what is retried and what a message may say).

use std::future::Future;

use tokio_postgres::error::SqlState;

use crate::storage::StoreError;

/// Why a database step failed: a store-level answer, or PostgreSQL's own error (kept whole
/// until the retry decision, then reduced to a message without row data).
pub(crate) enum Failure {
    Store(StoreError),
    Pg(tokio_postgres::Error),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Pg(e)
    }
}

impl From<crate::codec::CodecError> for Failure {
    fn from(e: crate::codec::CodecError) -> Self {
        Failure::Store(e.into())
    }
}

impl Failure {
    /// Whether running the transaction again may succeed.
    pub(super) fn retryable(&self) -> bool {
        let Failure::Pg(e) = self else { return false };
        matches!(
            e.code(),
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::UNIQUE_VIOLATION
        )
    }

    pub(super) fn into_store(self) -> StoreError {
        match self {
            Failure::Store(e) => e,
            Failure::Pg(e) => pg_error(&e),
        }
    }
}

/// PostgreSQL's error as a message: the SQLSTATE and primary message only, never the
/// DETAIL line, which can quote key values (subject ids) of the rows involved. A client-side
/// error (connecting, TLS, login) brings its causes, which name what failed (an OS error, a
/// refused certificate) and never the connection string.
pub(super) fn pg_error(e: &tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => {
            StoreError::Backend(format!("PostgreSQL {}: {}", db.code().code(), db.message()))
        }
        None => {
            let mut message = format!("PostgreSQL: {e}");
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                message.push_str(": ");
                message.push_str(&c.to_string());
                cause = c.source();
            }
            StoreError::Backend(message)
        }
    }
}

pub(super) type R<T> = Result<T, Failure>;

/// Waits for a database future on the calling thread; the connection makes progress on the
/// store's own runtime. Store calls wrap their waits in `off_worker`.
pub(crate) fn block<F: Future<Output = Result<T, tokio_postgres::Error>>, T>(f: F) -> R<T> {
    futures_executor::block_on(f).map_err(Failure::Pg)
}
