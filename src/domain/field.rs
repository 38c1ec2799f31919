//! Fields: the unit of personal data the vault stores, and their categories.

use std::fmt;

use super::{FieldName, InvalidInput, Timestamp};

/// The data categories of section 1 of the privacy policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    Account,
    Profile,
    Payment,
    Communication,
    Usage,
    Device,
    Log,
    Conversation,
    Model,
    Dataset,
    ApiCallMetadata,
}

impl Category {
    /// Every category, in code order.
    pub const ALL: [Category; 11] = [
        Category::Account,
        Category::Profile,
        Category::Payment,
        Category::Communication,
        Category::Usage,
        Category::Device,
        Category::Log,
        Category::Conversation,
        Category::Model,
        Category::Dataset,
        Category::ApiCallMetadata,
    ];

    /// Stable code used on disk and on the wire (matches the proto enum numbers).
    pub fn code(self) -> u8 {
        match self {
            Category::Account => 1,
            Category::Profile => 2,
            Category::Payment => 3,
            Category::Communication => 4,
            Category::Usage => 5,
            Category::Device => 6,
            Category::Log => 7,
            Category::Conversation => 8,
            Category::Model => 9,
            Category::Dataset => 10,
            Category::ApiCallMetadata => 11,
        }
    }

    /// The category with this code.
    pub fn from_code(code: i64) -> Result<Self, InvalidInput> {
        Category::ALL
            .into_iter()
            .find(|c| i64::from(c.code()) == code)
            .ok_or_else(|| InvalidInput::new(format!("category {code} is not a known category")))
    }

    /// Lower-case name, as used in configuration and audit records.
    pub fn name(self) -> &'static str {
        match self {
            Category::Account => "account",
            Category::Profile => "profile",
            Category::Payment => "payment",
            Category::Communication => "communication",
            Category::Usage => "usage",
            Category::Device => "device",
            Category::Log => "log",
            Category::Conversation => "conversation",
            Category::Model => "model",
            Category::Dataset => "dataset",
            Category::ApiCallMetadata => "api_call_metadata",
        }
    }
}

/// A field value in the clear. Its `Debug` never prints the content.
#[derive(Clone, PartialEq, Eq)]
pub enum FieldValue {
    Text(String),
    Bytes(Vec<u8>),
}

impl FieldValue {
    /// Stable code of the value kind, bound into the ciphertext's associated data.
    pub fn kind_code(&self) -> u8 {
        match self {
            FieldValue::Text(_) => 1,
            FieldValue::Bytes(_) => 2,
        }
    }

    /// The value's bytes, as they are sealed.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            FieldValue::Text(s) => s.as_bytes(),
            FieldValue::Bytes(b) => b,
        }
    }

    /// Rebuilds a value from its kind code and opened bytes.
    pub fn from_parts(kind: u8, bytes: Vec<u8>) -> Option<Self> {
        match kind {
            1 => String::from_utf8(bytes).ok().map(FieldValue::Text),
            2 => Some(FieldValue::Bytes(bytes)),
            _ => None,
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True when the value holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            FieldValue::Text(_) => "Text",
            FieldValue::Bytes(_) => "Bytes",
        };
        write!(f, "{kind}([redacted; {} bytes])", self.len())
    }
}

/// A field as a caller writes it.
#[derive(Clone, Debug)]
pub struct NewField {
    pub name: FieldName,
    pub category: Category,
    pub value: FieldValue,
}

/// Everything about a stored field except its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldMeta {
    pub name: FieldName,
    pub category: Category,
    /// Starts at 1, grows by one on every overwrite.
    pub version: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A stored field read back in the clear.
#[derive(Clone, Debug)]
pub struct Field {
    pub meta: FieldMeta,
    pub value: FieldValue,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_codes_round_trip() {
        for c in Category::ALL {
            assert_eq!(Category::from_code(i64::from(c.code())).ok(), Some(c));
        }
        assert!(Category::from_code(0).is_err());
        assert!(Category::from_code(12).is_err());
    }

    #[test]
    fn debug_never_prints_the_value() {
        let v = FieldValue::Text("alice@example.com".into());
        let shown = format!("{v:?}");
        assert!(!shown.contains("alice"), "{shown}");
        assert!(shown.contains("17 bytes"));
    }
}
