//! The checks after each restart: every subject read back and settled against the model,
//! every read the client received found in the audit log, the audit chain verified online
//! (VerifyAuditLog) and offline (`pii-vault audit verify` on the stopped vault), the
//! tenant's key version never behind an acknowledged rotation.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use pii_vault::proto::v1 as pb;

use crate::model::{Answer, Life, Settled, Subject};
use crate::rng::Rng;
use crate::rpc::{self, Clients, TENANT};
use crate::workload::ReadSeen;

/// Erased subjects re-read per worker and cycle, besides those erased in the last run;
/// the final check reads them all.
const ERASED_SAMPLE: usize = 16;

/// Reads every live subject of `subjects` (and erased ones: the newly erased, a sample of
/// the rest, or all when `full`), settling the model. The reads it received are returned
/// for the audit check.
pub async fn settle_all(
    c: &mut Clients, subjects: &mut [Subject], rng: &mut Rng, full: bool, id_prefix: &str,
) -> (Settled, Vec<ReadSeen>) {
    let mut out = Settled::default();
    let mut seen = Vec::new();
    let erased: Vec<usize> = (0..subjects.len())
        .filter(|i| subjects[*i].life == Life::Erased)
        .collect();
    let mut sampled: Vec<usize> = Vec::new();
    if full || erased.len() <= ERASED_SAMPLE {
        sampled = erased;
    } else {
        for _ in 0..ERASED_SAMPLE {
            sampled.push(*rng.pick(&erased));
        }
    }
    for (i, s) in subjects.iter_mut().enumerate() {
        let settled_erasure = s.life == Life::Erased && !s.recheck;
        if settled_erasure && !sampled.contains(&i) {
            continue;
        }
        let id = format!("{id_prefix}n{i}");
        let answer = rpc::read_all(c, &id, &s.id).await;
        if let Answer::Fields(got) = &answer {
            seen.push(ReadSeen::new(id, s.id.clone(), got));
        }
        s.settle(answer, &mut out);
        s.recheck = false;
    }
    (out, seen)
}

/// The reads received but not yet found in the audit log, and where the search resumes.
#[derive(Default)]
pub struct AuditCheck {
    pending: Vec<ReadSeen>,
    /// Last `get_fields` sequence number seen by a query made right after a restart: every
    /// event up to it was on disk then, so later reads have larger numbers.
    cursor: u64,
    /// Reads whose audit event was found.
    pub found: u64,
    /// Request ids of every `put_fields` event seen so far (intents and endings), and the
    /// sequence number the next query of them resumes after.
    writes_logged: HashSet<String>,
    write_cursor: u64,
    /// Writes whose values were read back (visible changes) and whose event was found.
    pub writes_found: u64,
}

impl AuditCheck {
    pub fn expect(&mut self, reads: Vec<ReadSeen>) {
        self.pending.extend(reads);
    }

    /// Queries the new `get_fields` events and matches every pending read to one; a read
    /// without its event (or with one that does not describe it) is a violation.
    pub async fn check(&mut self, c: &mut Clients, id: &str, violations: &mut Vec<String>) {
        match rpc::read_events(c, &format!("{id}w"), "put_fields", self.write_cursor).await {
            Ok(events) => {
                self.write_cursor = events
                    .iter()
                    .map(|e| e.seq)
                    .max()
                    .unwrap_or(self.write_cursor);
                self.writes_logged
                    .extend(events.into_iter().map(|e| e.request_id));
            }
            Err(s) => violations.push(format!("QueryAuditLog of writes failed: {s}")),
        }
        for read in &self.pending {
            for writer in &read.writers {
                if self.writes_logged.contains(writer) {
                    self.writes_found += 1;
                } else {
                    violations.push(format!(
                        "{}: a value written by {writer} is visible, but that write has no audit event",
                        read.subject
                    ));
                }
            }
        }
        let events = match rpc::read_events(c, id, "get_fields", self.cursor).await {
            Ok(e) => e,
            Err(s) => {
                violations.push(format!("QueryAuditLog failed: {s}"));
                return;
            }
        };
        self.cursor = events.iter().map(|e| e.seq).max().unwrap_or(self.cursor);
        let by_id: HashMap<&str, &pb::AuditEvent> =
            events.iter().map(|e| (e.request_id.as_str(), e)).collect();
        for read in self.pending.drain(..) {
            match by_id.get(read.request_id.as_str()) {
                None => violations.push(format!(
                    "read {} of {} was received but has no audit event",
                    read.request_id, read.subject
                )),
                Some(e)
                    if e.tenant_id != TENANT
                        || e.subject_id != read.subject
                        || e.field_names != read.fields
                        || e.outcome != pb::Outcome::Ok as i32 =>
                {
                    violations.push(format!(
                        "read {} of {} {:?}: its audit event says {e:?}",
                        read.request_id, read.subject, read.fields
                    ));
                }
                Some(_) => self.found += 1,
            }
        }
    }
}

/// `pii-vault audit verify --data-dir` on the stopped vault: the store opens and the chain
/// verifies. `Err` holds its output.
pub fn offline_verify(data_dir: &Path) -> Result<(), String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pii-vault"))
        .args(["audit", "verify", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run pii-vault audit verify");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "pii-vault audit verify exited with {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
