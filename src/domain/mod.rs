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
pub use ids::{FieldName, IdempotencyKey, Purpose, SubjectId, TenantId};
pub use subject_state::{Consent, SubjectState};
pub use tenant::Tenant;
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
pub use typed::Render;

/// A request argument that fails validation. The message names the problem and never
/// contains the offending value. Where the request field is known (`fields[2].value`), it
/// is kept apart too, for the field violation a program reads.
#[derive(Clone, PartialEq, Eq)]
pub struct InvalidInput {
    message: String,
    field: Option<String>,
}

impl InvalidInput {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            field: None,
        }
    }

    /// The same problem, found in request field `name` (the field's name in the request
    /// message). The message is left as it is; an inner path already set is kept.
    pub fn in_field(mut self, name: &str) -> Self {
        if self.field.is_none() {
            self.field = Some(name.to_owned());
        }
        self
    }

    /// The same problem, prefixed with where it was found (`fields[2]: ...`), which also
    /// leads the field path (`fields[2].value`).
    pub fn context(self, at: impl fmt::Display) -> Self {
        Self {
            message: format!("{at}: {}", self.message),
            field: Some(match self.field {
                Some(inner) => format!("{at}.{inner}"),
                None => at.to_string(),
            }),
        }
    }

    /// The request field that was wrong, as a dotted path, when it is known.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }
}

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InvalidInput({:?}", self.message)?;
        if let Some(field) = &self.field {
            write!(f, ", field {field:?}")?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for InvalidInput {}
