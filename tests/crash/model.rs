//! What the client knows about the vault's state: per field the last value the vault
//! acknowledged and the values of writes that were in flight at a kill (each may or may
//! not have landed), per subject whether it is live, erased (acknowledged) or maybe erased
//! (an erasure was in flight). After a restart every subject is read once and the model is
//! checked against what the vault answers, then settled to it: the crashed requests are
//! gone, so whatever landed is now the truth.

use std::collections::BTreeMap;

/// A field as the client knows it.
#[derive(Default)]
pub struct FieldState {
    /// The value of the last acknowledged write; `None` if none was acknowledged.
    pub acked: Option<String>,
    /// Values of unacknowledged writes that may have landed.
    pub maybe: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Life {
    Live,
    /// An acknowledged erasure: reads answer NOT_FOUND ("erased") forever.
    Erased,
    /// An erasure was in flight at a kill.
    MaybeErased,
}

pub struct Subject {
    pub id: String,
    pub life: Life,
    pub fields: BTreeMap<String, FieldState>,
    /// An unacknowledged put of several fields: after the restart either all of them hold
    /// these values or none does (PutFields is atomic).
    pub torn_check: Vec<(String, String)>,
    /// Changed since the last restart (written, erased or in flight): read it after the
    /// next one even if it is erased.
    pub recheck: bool,
}

/// What a read of every field of a subject answered.
pub enum Answer {
    Fields(Vec<(String, String)>),
    /// NOT_FOUND naming an erasure.
    Erased,
    /// NOT_FOUND for a subject that does not exist.
    NotFound,
    /// Any other status: never expected from a running vault.
    Error(String),
}

/// Checks made while settling; every one that failed is a violation.
#[derive(Default)]
pub struct Settled {
    /// Acknowledged field values found intact.
    pub values_checked: u64,
    /// Acknowledged erasures found still erased.
    pub erasures_checked: u64,
    pub violations: Vec<String>,
}

impl Subject {
    pub fn new(id: String) -> Self {
        Self {
            id,
            life: Life::Live,
            fields: BTreeMap::new(),
            torn_check: Vec::new(),
            recheck: true,
        }
    }

    /// True if some write to the subject was acknowledged: it must exist.
    pub fn has_acked(&self) -> bool {
        self.fields.values().any(|f| f.acked.is_some())
    }

    /// Names of the fields with an acknowledged value, in name order.
    pub fn acked_names(&self) -> Vec<String> {
        self.fields
            .iter()
            .filter(|(_, f)| f.acked.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Checks `answer` (a read of every field after a restart) against the model, records
    /// what failed in `out`, and settles the model to what the vault holds.
    pub fn settle(&mut self, answer: Answer, out: &mut Settled) {
        let id = &self.id;
        match (self.life, answer) {
            (Life::Erased, Answer::Erased) => out.erasures_checked += 1,
            (Life::Erased, _) => out
                .violations
                .push(format!("{id}: an acknowledged erasure came back")),
            (Life::MaybeErased, Answer::Erased) => {
                self.life = Life::Erased;
                self.fields.clear();
                self.torn_check.clear();
            }
            (_, Answer::Erased) => out
                .violations
                .push(format!("{id}: erased without an acknowledged erasure")),
            (_, Answer::Error(e)) => out.violations.push(format!("{id}: read failed: {e}")),
            (_, Answer::NotFound) => {
                if self.has_acked() {
                    out.violations.push(format!(
                        "{id}: not found, but writes to it were acknowledged: {:?}",
                        self.acked_names()
                    ));
                }
                self.life = Life::Live;
                self.fields.clear();
                self.torn_check.clear();
            }
            (_, Answer::Fields(got)) => {
                self.life = Life::Live;
                self.check_fields(&got, out);
            }
        }
    }

    fn check_fields(&mut self, got: &[(String, String)], out: &mut Settled) {
        let id = &self.id;
        let got_map: BTreeMap<&str, &str> =
            got.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        for (name, _) in got {
            if !self.fields.contains_key(name) {
                out.violations
                    .push(format!("{id}.{name}: a field nobody wrote"));
            }
        }
        let landed: Vec<bool> = self
            .torn_check
            .iter()
            .map(|(n, v)| got_map.get(n.as_str()) == Some(&v.as_str()))
            .collect();
        if landed.iter().any(|l| *l) && !landed.iter().all(|l| *l) {
            out.violations.push(format!(
                "{id}: an unacknowledged put of {:?} landed in part: {landed:?}",
                self.torn_check
            ));
        }
        self.torn_check.clear();
        for (name, state) in &mut self.fields {
            let now = got_map.get(name.as_str()).map(|v| (*v).to_owned());
            let allowed = now.as_ref() == state.acked.as_ref()
                || now.as_ref().is_some_and(|v| state.maybe.contains(v));
            if allowed {
                if state.acked.is_some() {
                    out.values_checked += 1;
                }
            } else {
                out.violations.push(format!(
                    "{id}.{name}: reads {now:?}, acknowledged {:?}, in flight {:?}",
                    state.acked, state.maybe
                ));
            }
            state.acked = now;
            state.maybe.clear();
        }
        self.fields.retain(|_, f| f.acked.is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(acked: &[(&str, &str)]) -> Subject {
        let mut s = Subject::new("s".into());
        for (n, v) in acked {
            s.fields.insert(
                (*n).into(),
                FieldState {
                    acked: Some((*v).into()),
                    maybe: vec![],
                },
            );
        }
        s
    }

    fn fields(list: &[(&str, &str)]) -> Answer {
        Answer::Fields(
            list.iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
        )
    }

    #[test]
    fn a_lost_or_changed_acknowledged_value_is_a_violation() {
        let mut out = Settled::default();
        subject(&[("a", "1"), ("b", "2")]).settle(fields(&[("a", "1")]), &mut out);
        subject(&[("a", "1")]).settle(fields(&[("a", "9")]), &mut out);
        subject(&[("a", "1")]).settle(Answer::NotFound, &mut out);
        assert_eq!(out.violations.len(), 3, "{:?}", out.violations);
        assert_eq!(out.values_checked, 1);
    }

    #[test]
    fn an_in_flight_write_may_land_whole_but_not_in_part() {
        let mut s = subject(&[("a", "1"), ("b", "2")]);
        for (n, v) in [("a", "x"), ("b", "y")] {
            s.fields.get_mut(n).expect("field").maybe.push(v.into());
            s.torn_check.push((n.into(), v.into()));
        }
        let mut out = Settled::default();
        s.settle(fields(&[("a", "x"), ("b", "2")]), &mut out);
        assert_eq!(out.violations.len(), 1, "{:?}", out.violations);
        assert_eq!(s.fields["a"].acked.as_deref(), Some("x"));
    }

    #[test]
    fn an_erasure_is_forever_and_a_maybe_erasure_settles() {
        let mut out = Settled::default();
        let mut s = subject(&[("a", "1")]);
        s.life = Life::Erased;
        s.settle(fields(&[("a", "1")]), &mut out);
        assert_eq!(out.violations.len(), 1);
        let mut s = subject(&[("a", "1")]);
        s.life = Life::MaybeErased;
        s.settle(Answer::Erased, &mut out);
        assert_eq!(s.life, Life::Erased);
        s.settle(Answer::Erased, &mut out);
        assert_eq!((out.violations.len(), out.erasures_checked), (1, 1));
    }
}
