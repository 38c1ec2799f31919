//! Typed personal values: validation, normalisation and the renderings callers may see.
//!
//! Validation errors name the problem and never contain the value.

use super::InvalidInput;

/// How much of a value a caller sees (decided by its grant). Ordered: higher shows more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Render {
    /// No value at all.
    Redacted,
    /// A masked rendering (`a***@example.com`, `**** 4242`).
    Masked,
    /// The value; payment card numbers still shown at most as first six and last four.
    Whole,
    /// Everything, card numbers included.
    Reveal,
}

fn digits_only(s: &str, allowed_separators: &[char]) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_digit() {
            out.push(c);
        } else if !allowed_separators.contains(&c) {
            return None;
        }
    }
    Some(out)
}

/// Lower-cases and checks an email address.
pub fn normalize_email(s: &str) -> Result<String, InvalidInput> {
    let e = s.trim().to_ascii_lowercase();
    let bad = || InvalidInput::new("email is not a valid address");
    if e.len() > 254
        || e.chars()
            .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        return Err(bad());
    }
    let (local, domain) = e.split_once('@').ok_or_else(bad)?;
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && domain
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if local.is_empty()
        || local.len() > 64
        || !domain_ok
        || local.contains(['<', '>', '(', ')', '[', ']', ',', ';', ':', '"', '\\'])
    {
        return Err(bad());
    }
    Ok(e)
}

/// Normalises a phone number to E.164 (`+` and 8 to 15 digits).
pub fn normalize_phone(s: &str) -> Result<String, InvalidInput> {
    let t = s.trim();
    let rest = t
        .strip_prefix('+')
        .or_else(|| t.strip_prefix("00"))
        .ok_or_else(|| {
            InvalidInput::new("phone must be in international form (+ and country code)")
        })?;
    let digits = digits_only(rest, &[' ', '-', '.', '(', ')']).ok_or_else(|| {
        InvalidInput::new("phone has characters other than digits and separators")
    })?;
    if !(8..=15).contains(&digits.len()) || digits.starts_with('0') {
        return Err(InvalidInput::new(
            "phone is not a valid E.164 number (8 to 15 digits, no leading 0)",
        ));
    }
    Ok(format!("+{digits}"))
}

/// True if a string of ASCII digits passes the Luhn check.
pub(crate) fn luhn_ok(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Strips separators from a payment card number and checks its length and Luhn digit.
pub fn normalize_card(s: &str) -> Result<String, InvalidInput> {
    let digits = digits_only(s.trim(), &[' ', '-'])
        .ok_or_else(|| InvalidInput::new("card number has characters other than digits"))?;
    if !(12..=19).contains(&digits.len()) {
        return Err(InvalidInput::new("card number must have 12 to 19 digits"));
    }
    if !luhn_ok(&digits) {
        return Err(InvalidInput::new("card number fails the Luhn check"));
    }
    Ok(digits)
}

/// Upper-cases an IBAN, strips spaces and checks its mod-97 digits.
pub fn normalize_iban(s: &str) -> Result<String, InvalidInput> {
    let iban: String = s
        .chars()
        .filter(|c| *c != ' ')
        .collect::<String>()
        .to_ascii_uppercase();
    let bad = |why: &str| InvalidInput::new(format!("IBAN {why}"));
    if !(15..=34).contains(&iban.len()) || !iban.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(bad("must be 15 to 34 letters and digits"));
    }
    let b = iban.as_bytes();
    if !b[0].is_ascii_alphabetic()
        || !b[1].is_ascii_alphabetic()
        || !b[2].is_ascii_digit()
        || !b[3].is_ascii_digit()
    {
        return Err(bad("must start with a country code and two check digits"));
    }
    let rearranged = iban[4..].chars().chain(iban[..4].chars());
    let mut rem: u32 = 0;
    for c in rearranged {
        let v = c
            .to_digit(36)
            .ok_or_else(|| bad("has an invalid character"))?;
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    if rem != 1 {
        return Err(bad("fails the mod-97 check"));
    }
    Ok(iban)
}

/// Checks a calendar date written `YYYY-MM-DD`.
pub fn normalize_date(s: &str) -> Result<String, InvalidInput> {
    let bad = || InvalidInput::new("date must be a valid YYYY-MM-DD");
    let t = s.trim();
    let parts: Vec<&str> = t.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return Err(bad());
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return Err(bad());
    }
    let (y, m, d): (u32, u32, u32) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    let leap = (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if d == 0 || d > days {
        return Err(bad());
    }
    Ok(t.to_owned())
}

/// Field names that would hold a card verification code, which PCI DSS forbids storing.
pub fn is_card_verification_name(name: &str) -> bool {
    ["cvv", "cvc", "cvn", "security_code", "card_verification"]
        .iter()
        .any(|bad| name.contains(bad))
        || name
            .split(['_', '-', '.'])
            .any(|part| part == "cav2" || part == "cid")
}

pub fn mask_email(e: &str) -> String {
    match e.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

fn keep_last(s: &str, n: usize) -> &str {
    &s[s.len().saturating_sub(n)..]
}

pub fn mask_phone(p: &str) -> String {
    let digits = p.trim_start_matches('+');
    format!(
        "+{}{}",
        "*".repeat(digits.len().saturating_sub(4)),
        keep_last(digits, 4)
    )
}

pub fn mask_card(c: &str) -> String {
    format!("**** {}", keep_last(c, 4))
}

/// The most a non-reveal grant shows of a card: first six and last four.
pub fn truncate_card(c: &str) -> String {
    if c.len() <= 10 {
        return mask_card(c);
    }
    format!("{}{}{}", &c[..6], "*".repeat(c.len() - 10), keep_last(c, 4))
}

pub fn mask_iban(i: &str) -> String {
    format!("{}****{}", &i[..i.len().min(4)], keep_last(i, 4))
}

pub fn mask_text(t: &str) -> String {
    let first: String = t.chars().take(1).collect();
    format!("{first}***")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            normalize_email("  Alice.B@Example.COM ").ok().as_deref(),
            Some("alice.b@example.com")
        );
        for bad in [
            "alice",
            "a@b",
            "@example.com",
            "a b@example.com",
            "a@exa mple.com",
            "a@@example.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
        assert_eq!(mask_email("alice@example.com"), "a***@example.com");
    }

    #[test]
    fn phones_become_e164() {
        assert_eq!(
            normalize_phone("+49 (151) 234-5678").ok().as_deref(),
            Some("+491512345678")
        );
        assert_eq!(
            normalize_phone("0044 20 7946 0958").ok().as_deref(),
            Some("+442079460958")
        );
        for bad in [
            "0151 2345678",
            "+12",
            "+0123456789",
            "+49 151 abc",
            "+1234567890123456",
        ] {
            assert!(normalize_phone(bad).is_err(), "{bad}");
        }
        assert_eq!(mask_phone("+491512345678"), "+********5678");
    }

    #[test]
    fn cards_are_luhn_checked_and_masked() {
        assert_eq!(
            normalize_card("4242 4242 4242 4242").ok().as_deref(),
            Some("4242424242424242")
        );
        assert!(normalize_card("4242 4242 4242 4241").is_err());
        assert!(normalize_card("123").is_err());
        assert!(normalize_card("4242-4242-4242-424x").is_err());
        assert_eq!(truncate_card("4242424242424242"), "424242******4242");
        assert_eq!(mask_card("4242424242424242"), "**** 4242");
        let err = normalize_card("4242 4242 4242 4241")
            .expect_err("luhn")
            .to_string();
        assert!(!err.contains("4242"), "{err}");
    }

    #[test]
    fn ibans_pass_mod_97() {
        assert_eq!(
            normalize_iban("de89 3704 0044 0532 0130 00")
                .ok()
                .as_deref(),
            Some("DE89370400440532013000")
        );
        assert!(normalize_iban("DE88370400440532013000").is_err());
        assert!(normalize_iban("GB82WEST12345698765432").is_ok());
        assert!(normalize_iban("1234").is_err());
        assert_eq!(mask_iban("DE89370400440532013000"), "DE89****3000");
    }

    #[test]
    fn dates_are_real_calendar_days() {
        assert!(normalize_date("2024-02-29").is_ok());
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-04-31",
            "24-01-01",
            "2024/01/01",
            "2024-01-00",
        ] {
            assert!(normalize_date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn card_verification_names_are_recognised() {
        for name in ["cvv", "card_cvc", "cvv2", "security_code", "payment.cvc"] {
            assert!(is_card_verification_name(name), "{name}");
        }
        for name in ["email", "card_number", "civic_address"] {
            assert!(!is_card_verification_name(name), "{name}");
        }
    }
}
