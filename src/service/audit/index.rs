//! Indexes of the audit log by tenant and by (tenant, subject): the sequence numbers of each
//! one's events, so a query for one subject (an access report's recipients, say) reads the
//! events it asks for instead of the whole log.
//!
//! Kept in memory: built from the log when the vault starts (one pass), extended by the
//! writer after each durable batch, trimmed by pruning. A vault node whose store other nodes
//! append to (PostgreSQL) has none: its queries scan, as each would miss the others' events.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::audit::{AuditEvent, AuditFilter};

/// Sequence numbers, ascending, per key.
#[derive(Default)]
struct Lists {
    by_tenant: HashMap<String, Vec<u64>>,
    by_subject: HashMap<(String, String), Vec<u64>>,
}

/// The indexes of one log.
#[derive(Default)]
pub(super) struct AuditIndex {
    lists: RwLock<Lists>,
}

impl AuditIndex {
    /// Adds events (in ascending sequence order, after every event added before).
    pub fn add<'e>(&self, events: impl IntoIterator<Item = &'e AuditEvent>) {
        let mut lists = self.lists.write().expect("audit index lock");
        for e in events {
            let d = &e.draft;
            if d.tenant.is_empty() {
                continue;
            }
            lists
                .by_tenant
                .entry(d.tenant.clone())
                .or_default()
                .push(e.seq);
            if !d.subject.is_empty() {
                lists
                    .by_subject
                    .entry((d.tenant.clone(), d.subject.clone()))
                    .or_default()
                    .push(e.seq);
            }
        }
    }

    /// Forgets events up to `through` (pruned).
    pub fn prune(&self, through: u64) {
        let mut lists = self.lists.write().expect("audit index lock");
        let Lists {
            by_tenant,
            by_subject,
        } = &mut *lists;
        let cut = |list: &mut Vec<u64>| {
            let keep = list.partition_point(|s| *s <= through);
            list.drain(..keep);
            !list.is_empty()
        };
        by_tenant.retain(|_, l| cut(l));
        by_subject.retain(|_, l| cut(l));
    }

    /// For a filter naming a tenant (and perhaps a subject): up to `limit` sequence numbers
    /// after `after` of the events about it, ascending, and whether they are the last ones.
    /// `None` when the filter names no tenant (the index cannot narrow it).
    pub fn candidates(
        &self, filter: &AuditFilter, after: u64, limit: usize,
    ) -> Option<(Vec<u64>, bool)> {
        let tenant = filter.tenant.as_ref()?;
        let lists = self.lists.read().expect("audit index lock");
        let list = match &filter.subject {
            Some(subject) => lists.by_subject.get(&(tenant.clone(), subject.clone())),
            None => lists.by_tenant.get(tenant),
        };
        let Some(list) = list else {
            return Some((Vec::new(), true));
        };
        let from = list.partition_point(|s| *s <= after);
        let page: Vec<u64> = list[from..].iter().take(limit).copied().collect();
        let last = from + page.len() == list.len();
        Some((page, last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{EventDraft, Operation, Outcome};
    use crate::crypto::Key;
    use crate::domain::Timestamp;

    fn event(seq: u64, tenant: &str, subject: &str) -> AuditEvent {
        let draft = EventDraft {
            time: Timestamp(seq),
            request_id: String::new(),
            caller: "c".into(),
            operation: Operation::GetFields,
            tenant: tenant.into(),
            subject: subject.into(),
            fields: Vec::new(),
            purpose: String::new(),
            outcome: Outcome::Ok,
            reason: String::new(),
            rule: String::new(),
        };
        AuditEvent::seal(&Key::generate(1).expect("key"), seq, draft, [0; 32])
    }

    fn about(tenant: &str, subject: Option<&str>) -> AuditFilter {
        AuditFilter {
            tenant: Some(tenant.into()),
            subject: subject.map(Into::into),
            ..AuditFilter::default()
        }
    }

    #[test]
    fn lists_each_tenant_and_subject_in_order_pages_and_prunes() {
        let index = AuditIndex::default();
        let events: Vec<AuditEvent> = (1..=10)
            .map(|s| {
                event(
                    s,
                    if s % 2 == 0 { "a" } else { "b" },
                    if s % 3 == 0 { "x" } else { "y" },
                )
            })
            .collect();
        index.add(&events);
        index.add([&event(11, "", "")]);
        assert_eq!(
            index.candidates(&about("a", None), 0, 100),
            Some((vec![2, 4, 6, 8, 10], true))
        );
        assert_eq!(
            index.candidates(&about("a", Some("x")), 0, 100),
            Some((vec![6], true))
        );
        assert_eq!(
            index.candidates(&about("b", None), 1, 2),
            Some((vec![3, 5], false))
        );
        assert_eq!(
            index.candidates(&about("c", None), 0, 2),
            Some((Vec::new(), true))
        );
        assert_eq!(index.candidates(&AuditFilter::default(), 0, 2), None);
        index.prune(6);
        assert_eq!(
            index.candidates(&about("a", None), 0, 100),
            Some((vec![8, 10], true))
        );
        assert_eq!(
            index.candidates(&about("a", Some("x")), 0, 100),
            Some((Vec::new(), true))
        );
    }
}
