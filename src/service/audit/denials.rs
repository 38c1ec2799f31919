//! Repeated denials of one identity, summarised instead of one durable event each.
//!
//! A caller with a certificate but no grant could otherwise fill the audit log with
//! "denied" events as fast as it can send (100,000 in 8 s were seen, 49 MB). Within a window
//! (`DenialSettings::window`, a minute by default) the first `events_per_window` denials of
//! an identity are recorded one by one, as before; the further ones are only counted, per
//! operation. When the window has ended, one `denials_summary` event says how many there
//! were, of what, from when to when. The count is never dropped: a window is summarised when
//! the identity is next denied after it, by the server's periodic sweep, and at shutdown.
//! What a crash loses is at most the counts of the windows still open (a minute's worth),
//! never an individual event that was recorded.
//!
//! The table holds one entry per identity denied in the current window; past
//! `MAX_IDENTITIES` every open window is closed early (summarised), so its size is bounded
//! whatever the number of identities.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use crate::audit::{EventDraft, Operation, Outcome};
use crate::domain::Timestamp;

/// Past this many identities with an open window, all windows are summarised at once.
const MAX_IDENTITIES: usize = 4096;

/// How denials are summarised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenialSettings {
    /// How long one identity's window lasts.
    pub window: Duration,
    /// Denials of one identity recorded one by one per window before the rest are counted.
    pub events_per_window: u32,
}

impl Default for DenialSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            events_per_window: 10,
        }
    }
}

/// One identity's current window.
#[derive(Debug)]
struct Tally {
    since: Timestamp,
    last: Timestamp,
    recorded: u32,
    counted: BTreeMap<&'static str, u64>,
}

/// The denials counted but not recorded in one ended window: one summary event.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::service) struct Summary {
    pub caller: String,
    pub since: Timestamp,
    pub until: Timestamp,
    /// Operation name and how many of its denials were counted, by name.
    pub counted: Vec<(&'static str, u64)>,
}

impl Summary {
    pub fn total(&self) -> u64 {
        self.counted.iter().map(|(_, n)| n).sum()
    }

    /// The summary's audit event, recorded at `time` under `request_id`.
    pub fn event(&self, time: Timestamp, request_id: String) -> EventDraft {
        let by_operation = self
            .counted
            .iter()
            .map(|(op, n)| format!("{op} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        EventDraft {
            time,
            request_id,
            caller: self.caller.clone(),
            operation: Operation::DenialsSummary,
            tenant: String::new(),
            subject: String::new(),
            fields: Vec::new(),
            purpose: String::new(),
            outcome: Outcome::Denied,
            reason: format!(
                "{} further denials of this identity in {} s, not recorded one by one: \
                 {by_operation}",
                self.total(),
                (self.until.0 - self.since.0).div_ceil(1_000_000),
            ),
            rule: String::new(),
        }
    }
}

/// Whether a denial gets its own event.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::service) enum Noted {
    Record,
    Counted,
}

/// See the module documentation.
#[derive(Debug)]
pub(in crate::service) struct Denials {
    settings: DenialSettings,
    table: Mutex<HashMap<String, Tally>>,
}

impl Denials {
    pub fn new(settings: DenialSettings) -> Self {
        Self {
            settings,
            table: Mutex::new(HashMap::new()),
        }
    }

    fn ended(&self, tally: &Tally, now: Timestamp) -> bool {
        let window = u64::try_from(self.settings.window.as_micros()).unwrap_or(u64::MAX);
        now.0 >= tally.since.0.saturating_add(window.max(1))
    }

    /// Notes a denial of `caller` doing `operation` at `now`: whether it gets its own event,
    /// and the summaries of windows it closed (this identity's ended one; every open window
    /// if the table is full).
    pub fn note(
        &self, caller: &str, operation: Operation, now: Timestamp,
    ) -> (Noted, Vec<Summary>) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = Vec::new();
        if table.get(caller).is_some_and(|t| self.ended(t, now)) {
            let tally = table.remove(caller).expect("just seen");
            closed.extend(summary(caller.to_owned(), tally));
        }
        if !table.contains_key(caller) && table.len() >= MAX_IDENTITIES {
            closed.extend(table.drain().filter_map(|(c, t)| summary(c, t)));
        }
        let tally = table.entry(caller.to_owned()).or_insert_with(|| Tally {
            since: now,
            last: now,
            recorded: 0,
            counted: BTreeMap::new(),
        });
        tally.last = now;
        let noted = if tally.recorded < self.settings.events_per_window {
            tally.recorded += 1;
            Noted::Record
        } else {
            *tally.counted.entry(operation.name()).or_insert(0) += 1;
            Noted::Counted
        };
        (noted, closed)
    }

    /// Takes out the windows that have ended by `now` (every window, for `None`: shutdown),
    /// with the summaries of those that counted anything.
    pub fn take_due(&self, now: Option<Timestamp>) -> Vec<Summary> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let due: Vec<String> = table
            .iter()
            .filter(|(_, t)| now.is_none_or(|now| self.ended(t, now)))
            .map(|(c, _)| c.clone())
            .collect();
        due.into_iter()
            .filter_map(|caller| {
                let tally = table.remove(&caller)?;
                summary(caller, tally)
            })
            .collect()
    }
}

/// The summary of an ended window, if it counted any denial.
fn summary(caller: String, tally: Tally) -> Option<Summary> {
    (!tally.counted.is_empty()).then(|| Summary {
        caller,
        since: tally.since,
        until: tally.last,
        counted: tally.counted.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denials(window: u64, per_window: u32) -> Denials {
        Denials::new(DenialSettings {
            window: Duration::from_secs(window),
            events_per_window: per_window,
        })
    }

    #[test]
    fn the_first_denials_of_a_window_are_recorded_then_counted() {
        let d = denials(60, 2);
        let t = Timestamp(1_000_000_000);
        assert_eq!(d.note("uri:a", Operation::GetFields, t).0, Noted::Record);
        assert_eq!(d.note("uri:a", Operation::GetFields, t).0, Noted::Record);
        for _ in 0..5 {
            assert_eq!(d.note("uri:a", Operation::GetFields, t).0, Noted::Counted);
        }
        assert_eq!(d.note("uri:a", Operation::PutFields, t).0, Noted::Counted);
        // Another identity has a window of its own.
        assert_eq!(d.note("uri:b", Operation::GetFields, t).0, Noted::Record);
        assert!(
            d.take_due(Some(Timestamp(1_059_000_000))).is_empty(),
            "window still open"
        );
        let due = d.take_due(Some(Timestamp(1_060_000_000)));
        assert_eq!(
            due,
            vec![Summary {
                caller: "uri:a".into(),
                since: t,
                until: t,
                counted: vec![("get_fields", 5), ("put_fields", 1)],
            }],
            "uri:b counted nothing, so it has no summary"
        );
        assert_eq!(due[0].total(), 6);
    }

    #[test]
    fn the_next_denial_after_a_window_closes_it_and_starts_another() {
        let d = denials(60, 1);
        d.note("uri:a", Operation::GetFields, Timestamp(0));
        d.note("uri:a", Operation::GetFields, Timestamp(10_000_000));
        let (noted, closed) = d.note("uri:a", Operation::GetFields, Timestamp(61_000_000));
        assert_eq!(noted, Noted::Record, "a new window records again");
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].total(), 1);
        assert_eq!(closed[0].until, Timestamp(10_000_000));
    }

    #[test]
    fn shutdown_takes_every_open_window_and_a_full_table_is_summarised() {
        let d = denials(3600, 0);
        d.note("uri:a", Operation::GetFields, Timestamp(5));
        assert_eq!(d.take_due(None).len(), 1, "shutdown loses no count");
        assert!(d.take_due(None).is_empty());
        for i in 0..MAX_IDENTITIES {
            d.note(&format!("uri:{i}"), Operation::GetFields, Timestamp(5));
        }
        let (_, closed) = d.note("uri:one-more", Operation::GetFields, Timestamp(5));
        assert_eq!(closed.len(), MAX_IDENTITIES);
        assert_eq!(
            closed.iter().map(Summary::total).sum::<u64>(),
            MAX_IDENTITIES as u64
        );
    }

    #[test]
    fn a_summary_names_counts_never_values() {
        let s = Summary {
            caller: "uri:spiffe://x/probe".into(),
            since: Timestamp(1),
            until: Timestamp(9),
            counted: vec![("get_fields", 7)],
        };
        let draft = s.event(Timestamp(10), "req-1".into());
        assert_eq!(draft.operation, Operation::DenialsSummary);
        assert_eq!(draft.outcome, Outcome::Denied);
        assert_eq!(draft.caller, "uri:spiffe://x/probe");
        assert!(
            draft.reason.starts_with("7 further denials"),
            "{}",
            draft.reason
        );
        assert!(draft.reason.ends_with("get_fields 7"), "{}", draft.reason);
    }
}
