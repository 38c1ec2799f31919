//! The vault's vocabulary: ids, fields, categories and time. No I/O, no async.

mod field;
mod ids;
pub mod retention;
mod subject_state;
mod tenant;
mod time;
pub mod typed;

use std::fmt;

pub use field::{Category, Field, FieldMeta, FieldValue, NewField};
pub use ids::{FieldName, Purpose, SubjectId, TenantId};
pub use subject_state::{Consent, SubjectState};
pub use tenant::Tenant;
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
pub use typed::Render;

/// A request argument that fails validation. The message names the problem and never
/// contains the offending value.
#[derive(Clone, PartialEq, Eq)]
pub struct InvalidInput(String);

impl InvalidInput {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// The same problem, prefixed with where it was found (`fields[2]: ...`).
    pub fn context(self, at: impl fmt::Display) -> Self {
        Self(format!("{at}: {}", self.0))
    }
}

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InvalidInput({:?})", self.0)
    }
}

impl std::error::Error for InvalidInput {}
