//! Validated identifiers. Every id that crosses the API is parsed into one of these
//! types first, so the layers below never see an empty, over-long or odd id.
//!
//! The charsets are deliberately narrow (printable ASCII, no `/`, no whitespace, no
//! control characters): ids end up in storage keys, log lines and audit events.

use std::fmt;

use super::InvalidInput;

/// Defines a string newtype with a charset check and a length bound.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, $first:expr, $rest:expr, $charset:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Longest accepted id, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Parses and validates an id.
            pub fn parse(s: &str) -> Result<Self, InvalidInput> {
                check_id(s, $what, Self::MAX_LEN, $first, $rest, $charset)?;
                Ok(Self(s.to_owned()))
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

fn lower_or_digit(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn lower_alpha(c: char) -> bool {
    c.is_ascii_lowercase()
}

fn alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

fn tenant_char(c: char) -> bool {
    lower_or_digit(c) || c == '-'
}

fn subject_char(c: char) -> bool {
    alnum(c) || matches!(c, '.' | '_' | '-' | ':' | '@')
}

fn idempotency_char(c: char) -> bool {
    alnum(c) || matches!(c, '.' | '_' | '-' | ':')
}

fn name_char(c: char) -> bool {
    lower_or_digit(c) || matches!(c, '_' | '-' | '.')
}

fn check_id(
    s: &str, what: &'static str, max: usize, first: fn(char) -> bool, rest: fn(char) -> bool,
    charset: &'static str,
) -> Result<(), InvalidInput> {
    if s.is_empty() {
        return Err(InvalidInput::new(format!("{what} is empty")));
    }
    if s.len() > max {
        return Err(InvalidInput::new(format!(
            "{what} is {} bytes long; the limit is {max}",
            s.len()
        )));
    }
    let mut chars = s.chars();
    let ok_first = chars.next().is_some_and(first);
    if !ok_first || !chars.all(rest) {
        // Never echo the id: it may be (or contain) personal data.
        return Err(InvalidInput::new(format!(
            "{what} has a character outside {charset}"
        )));
    }
    Ok(())
}

id_type!(
    /// A tenant: 1 to 63 characters of `a-z`, `0-9`, `-`, starting with a letter or digit.
    TenantId, "tenant id", 63, lower_or_digit, tenant_char, "[a-z0-9-] (starting with a letter or digit)"
);
id_type!(
    /// A subject (a person) within a tenant: 1 to 128 characters of `A-Za-z0-9._-:@` for
    /// callers (`parse_external`); the vault's own internal ids may be longer.
    SubjectId, "subject id", 160, alnum, subject_char, "[A-Za-z0-9._:@-] (starting with a letter or digit)"
);
id_type!(
    /// A field name: 1 to 64 characters of `a-z0-9_-.`, starting with a letter.
    FieldName, "field name", 64, lower_alpha, name_char, "[a-z0-9_.-] (starting with a letter)"
);
id_type!(
    /// A caller's idempotency key for a write (a UUID, say): 1 to 128 characters of
    /// `A-Za-z0-9._:-`. The same request sent again under it is answered as the first time.
    IdempotencyKey, "idempotency key", 128, alnum, idempotency_char, "[A-Za-z0-9._:-] (starting with a letter or digit)"
);
id_type!(
    /// The declared purpose of a read, such as `billing` or `support`.
    Purpose, "purpose", 64, lower_alpha, name_char, "[a-z0-9_.-] (starting with a letter)"
);

impl FieldName {
    /// Prefix of the field names the vault gives card tokens: a token is stored as a field
    /// of its subject, named by the token itself.
    pub const TOKEN_PREFIX: &'static str = "tok_";

    /// True for a card token's field.
    pub fn is_token(&self) -> bool {
        self.0.starts_with(Self::TOKEN_PREFIX)
    }

    /// Parses a field name given by a caller: not in the token space.
    pub fn parse_external(s: &str) -> Result<Self, InvalidInput> {
        let name = Self::parse(s)?;
        if name.is_token() {
            return Err(InvalidInput::new(
                "field names starting with tok_ are reserved for card tokens (TokenService)",
            ));
        }
        Ok(name)
    }
}

impl SubjectId {
    /// Prefix of subject ids the vault keeps for itself (the card token store).
    pub const RESERVED_PREFIX: &'static str = "pii-vault:";

    /// Longest id a caller may use.
    pub const MAX_EXTERNAL_LEN: usize = 128;

    /// True for ids callers may not use directly.
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with(Self::RESERVED_PREFIX)
    }

    /// Parses an id given by a caller: at most 128 characters, not in the reserved space.
    pub fn parse_external(s: &str) -> Result<Self, InvalidInput> {
        let id = Self::parse(s)?;
        if s.len() > Self::MAX_EXTERNAL_LEN {
            return Err(InvalidInput::new(format!(
                "subject id is {} bytes long; the limit is {}",
                s.len(),
                Self::MAX_EXTERNAL_LEN
            )));
        }
        if id.is_reserved() {
            return Err(InvalidInput::new(
                "subject ids starting with pii-vault: are reserved for the vault",
            ));
        }
        Ok(id)
    }

    /// The internal subject that holds this subject's records under a legal retention duty,
    /// under a key of its own.
    pub fn legal_shadow(&self) -> SubjectId {
        SubjectId(format!("{}legal:{}", Self::RESERVED_PREFIX, self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_documented_charsets() {
        assert!(TenantId::parse("acme-eu-1").is_ok());
        assert!(SubjectId::parse("user:42@acme.example").is_ok());
        assert!(FieldName::parse("email.primary_2").is_ok());
    }

    #[test]
    fn rejects_bad_ids_without_echoing_them() {
        for bad in ["", "Acme", "a/b", "a b", "-x", "x\u{7}", "é"] {
            let err = TenantId::parse(bad).expect_err(bad);
            if !bad.is_empty() {
                assert!(!err.to_string().contains(bad), "{err}");
            }
        }
        assert!(TenantId::parse(&"a".repeat(64)).is_err());
        assert!(SubjectId::parse_external(&"a".repeat(128)).is_ok());
        assert!(SubjectId::parse_external(&"a".repeat(129)).is_err());
        assert!(SubjectId::parse_external("pii-vault:x").is_err());
        let long = SubjectId::parse_external(&"a".repeat(128)).expect("id");
        assert!(
            SubjectId::parse(long.legal_shadow().as_str()).is_ok(),
            "shadows round-trip"
        );
        assert!(FieldName::parse("1abc").is_err());
    }
}
