//! Retention rules: how long the vault keeps a field of each category, from section 6 of the
//! privacy policy. A pure function of the category, so the access report, the export and
//! (later) the retention sweeper all tell the same story.
//!
//! A rule either has a fixed period, counted from the field's last write, or it has none
//! (the data is kept while it serves its purpose, or until an event the vault does not see,
//! such as the deletion of the person's account): then there is no expiry date to give.

use std::time::Duration;

use super::{Category, Timestamp};

const DAY: u64 = 86_400;

/// How long fields of one category are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The rule in words, as the policy states it; shown to the person in their report.
    pub description: &'static str,
    /// Time after the last write at which the field expires; `None` when the policy sets no
    /// fixed period.
    pub period: Option<Duration>,
}

impl Rule {
    /// When a field last written at `updated_at` expires under this rule, if it does.
    pub fn expiry(&self, updated_at: Timestamp) -> Option<Timestamp> {
        let period = self.period?;
        let micros = u64::try_from(period.as_micros()).unwrap_or(u64::MAX);
        Some(Timestamp(updated_at.0.saturating_add(micros)))
    }

    /// The period in whole days, if there is one.
    pub fn period_days(&self) -> Option<u64> {
        self.period.map(|p| p.as_secs() / DAY)
    }
}

const fn days(n: u64) -> Option<Duration> {
    Some(Duration::from_secs(n * DAY))
}

/// The default retention rule of `category` (section 6 of the privacy policy).
pub fn retention_rule(category: Category) -> Rule {
    match category {
        Category::Conversation => Rule {
            description: "AI conversations are kept 90 days after their last change, then deleted",
            period: days(90),
        },
        Category::Log => Rule {
            description: "log data is kept 12 months for security and analytics, then deleted",
            period: days(365),
        },
        Category::Account => Rule {
            description: "account data is kept while the account is active and deleted within \
                          30 days of the account's deletion; no fixed expiry while it is active",
            period: None,
        },
        Category::Payment => Rule {
            description: "payment and transaction records are kept 7 years, as the law requires",
            period: days(7 * 365),
        },
        Category::Profile
        | Category::Communication
        | Category::Usage
        | Category::Device
        | Category::Model
        | Category::Dataset
        | Category::ApiCallMetadata => Rule {
            description: "kept while needed for the service; no fixed retention period",
            period: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_six_periods() {
        let period = |c| retention_rule(c).period_days();
        assert_eq!(period(Category::Conversation), Some(90));
        assert_eq!(period(Category::Log), Some(365));
        assert_eq!(period(Category::Payment), Some(7 * 365));
        assert_eq!(period(Category::Account), None);
        assert_eq!(period(Category::Profile), None);
        assert!(retention_rule(Category::Account)
            .description
            .contains("30 days"));
    }

    #[test]
    fn expiry_counts_from_the_last_write() {
        let written = Timestamp(1_000_000);
        let rule = retention_rule(Category::Conversation);
        assert_eq!(
            rule.expiry(written),
            Some(Timestamp(1_000_000 + 90 * DAY * 1_000_000))
        );
        assert_eq!(retention_rule(Category::Dataset).expiry(written), None);
    }
}
