//! Fields: the unit of personal data the vault stores, and their categories.

use std::fmt;

use super::typed::{self, Render};
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

/// A field value in the clear. Its `Debug` never prints the content. Typed variants hold
/// their normalised form (see `typed`); construct them with `FieldValue::typed`.
#[derive(Clone, PartialEq, Eq)]
pub enum FieldValue {
    Text(String),
    Bytes(Vec<u8>),
    Email(String),
    /// E.164.
    Phone(String),
    /// Digits only, Luhn-checked.
    CardNumber(String),
    Iban(String),
    /// `YYYY-MM-DD`.
    Date(String),
}

/// The kinds of value, by stable code (also bound into each ciphertext's AAD).
const TEXT: u8 = 1;
const BYTES: u8 = 2;
const EMAIL: u8 = 3;
const PHONE: u8 = 4;
const CARD: u8 = 5;
const IBAN: u8 = 6;
const DATE: u8 = 7;

impl FieldValue {
    /// Validates and normalises a typed value given as text.
    pub fn typed(kind: u8, text: &str) -> Result<Self, InvalidInput> {
        Ok(match kind {
            TEXT => FieldValue::Text(text.to_owned()),
            EMAIL => FieldValue::Email(typed::normalize_email(text)?),
            PHONE => FieldValue::Phone(typed::normalize_phone(text)?),
            CARD => FieldValue::CardNumber(typed::normalize_card(text)?),
            IBAN => FieldValue::Iban(typed::normalize_iban(text)?),
            DATE => FieldValue::Date(typed::normalize_date(text)?),
            _ => return Err(InvalidInput::new("value kind is not a text kind")),
        })
    }

    /// Stable code of the value kind, bound into the ciphertext's associated data.
    pub fn kind_code(&self) -> u8 {
        match self {
            FieldValue::Text(_) => TEXT,
            FieldValue::Bytes(_) => BYTES,
            FieldValue::Email(_) => EMAIL,
            FieldValue::Phone(_) => PHONE,
            FieldValue::CardNumber(_) => CARD,
            FieldValue::Iban(_) => IBAN,
            FieldValue::Date(_) => DATE,
        }
    }

    /// The value's bytes, as they are sealed.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            FieldValue::Bytes(b) => b,
            FieldValue::Text(s)
            | FieldValue::Email(s)
            | FieldValue::Phone(s)
            | FieldValue::CardNumber(s)
            | FieldValue::Iban(s)
            | FieldValue::Date(s) => s.as_bytes(),
        }
    }

    /// The value as text, for every kind but bytes.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            FieldValue::Bytes(_) => None,
            FieldValue::Text(s)
            | FieldValue::Email(s)
            | FieldValue::Phone(s)
            | FieldValue::CardNumber(s)
            | FieldValue::Iban(s)
            | FieldValue::Date(s) => Some(s),
        }
    }

    /// Rebuilds a value from its kind code and opened bytes (already validated when stored).
    pub fn from_parts(kind: u8, bytes: Vec<u8>) -> Option<Self> {
        if kind == BYTES {
            return Some(FieldValue::Bytes(bytes));
        }
        let s = String::from_utf8(bytes).ok()?;
        Some(match kind {
            TEXT => FieldValue::Text(s),
            EMAIL => FieldValue::Email(s),
            PHONE => FieldValue::Phone(s),
            CARD => FieldValue::CardNumber(s),
            IBAN => FieldValue::Iban(s),
            DATE => FieldValue::Date(s),
            _ => return None,
        })
    }

    /// What a caller with `render` sees: the value, a masked text, or nothing.
    pub fn render(&self, render: Render) -> Option<FieldValue> {
        use FieldValue::*;
        match (render, self) {
            (Render::Redacted, _) => None,
            (Render::Reveal, v) => Some(v.clone()),
            (Render::Whole, CardNumber(c)) => Some(Text(typed::truncate_card(c))),
            (Render::Whole, v) => Some(v.clone()),
            (Render::Masked, Bytes(_)) => None,
            (Render::Masked, Email(e)) => Some(Text(typed::mask_email(e))),
            (Render::Masked, Phone(p)) => Some(Text(typed::mask_phone(p))),
            (Render::Masked, CardNumber(c)) => Some(Text(typed::mask_card(c))),
            (Render::Masked, Iban(i)) => Some(Text(typed::mask_iban(i))),
            (Render::Masked, Date(_)) => Some(Text("****-**-**".into())),
            (Render::Masked, Text(t)) => Some(Text(typed::mask_text(t))),
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

    fn kind_name(&self) -> &'static str {
        match self {
            FieldValue::Text(_) => "Text",
            FieldValue::Bytes(_) => "Bytes",
            FieldValue::Email(_) => "Email",
            FieldValue::Phone(_) => "Phone",
            FieldValue::CardNumber(_) => "CardNumber",
            FieldValue::Iban(_) => "Iban",
            FieldValue::Date(_) => "Date",
        }
    }
}

impl fmt::Debug for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}([redacted; {} bytes])", self.kind_name(), self.len())
    }
}

/// A field as a caller writes it.
#[derive(Clone, Debug)]
pub struct NewField {
    pub name: FieldName,
    pub category: Category,
    pub value: FieldValue,
    /// Index the value for lookup. Email and phone values are always indexed.
    pub indexed: bool,
    /// Keep the field this long instead of its category's retention period.
    pub ttl: Option<std::time::Duration>,
    /// A payment transaction record: kept under a separate subject key for the legal
    /// retention duty after the subject is erased.
    pub transaction_record: bool,
    /// Write only if the stored version is this one (0: the field must not exist yet).
    pub expected_version: Option<u64>,
}

impl NewField {
    /// True when the value gets a blind-index entry.
    pub fn is_indexed(&self) -> bool {
        self.indexed || matches!(self.value, FieldValue::Email(_) | FieldValue::Phone(_))
    }
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
    /// Identity of the caller that wrote this version.
    pub updated_by: String,
}

/// A stored field as a caller may see it.
#[derive(Clone, Debug)]
pub struct Field {
    pub meta: FieldMeta,
    /// The rendered value; `None` when the caller's grant redacts it.
    pub value: Option<FieldValue>,
    /// How the value was rendered for this caller.
    pub render: Render,
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

    #[test]
    fn renderings_follow_the_grant() {
        let card = FieldValue::typed(5, "4242 4242 4242 4242").expect("card");
        assert_eq!(
            card.render(Render::Reveal)
                .and_then(|v| v.as_text().map(str::to_owned))
                .as_deref(),
            Some("4242424242424242")
        );
        assert_eq!(
            card.render(Render::Whole)
                .and_then(|v| v.as_text().map(str::to_owned))
                .as_deref(),
            Some("424242******4242")
        );
        assert_eq!(
            card.render(Render::Masked)
                .and_then(|v| v.as_text().map(str::to_owned))
                .as_deref(),
            Some("**** 4242")
        );
        assert!(card.render(Render::Redacted).is_none());
        let email = FieldValue::typed(3, "Alice@Example.com").expect("email");
        assert_eq!(email.as_text(), Some("alice@example.com"));
        assert_eq!(
            email
                .render(Render::Masked)
                .and_then(|v| v.as_text().map(str::to_owned))
                .as_deref(),
            Some("a***@example.com")
        );
        assert!(FieldValue::typed(3, "not an email").is_err());
    }
}
