//! A client worker: writes, reads and erases its own subjects one request at a time, so
//! the order of its acknowledgements is the order of its writes. Several workers run at
//! once (their writes share the vault's group commits). A worker stops at its first
//! failed request: the vault was killed (or answered UNAVAILABLE), and the request is left
//! in flight in the model.

use std::sync::atomic::{AtomicBool, Ordering};

use tonic::{Code, Status};

use crate::model::{FieldState, Life, Subject};
use crate::rng::Rng;
use crate::rpc::{self, Clients};

/// Live subjects each worker keeps; an erasure is replaced by a new subject.
const POOL: usize = 5;
const NAMES: [&str; 5] = ["alpha", "bravo", "charlie", "delta", "echo"];

/// Switches the driver flips around a kill.
#[derive(Default)]
pub struct Flags {
    /// Set just before SIGKILL: from then on a failed request is expected.
    pub killed: AtomicBool,
    /// Set after the kill: workers start nothing new.
    pub stop: AtomicBool,
}

/// A read the client received: its audit event must exist.
pub struct ReadSeen {
    pub request_id: String,
    pub subject: String,
    /// Names of the fields it returned, in name order.
    pub fields: Vec<String>,
    /// The request ids of the writes whose values it returned (a value is written as
    /// `<request id>.<name>`): changes visible in the store, each of which must have its
    /// audit event.
    pub writers: Vec<String>,
}

impl ReadSeen {
    pub fn new(request_id: String, subject: String, got: &[(String, String)]) -> Self {
        let mut writers: Vec<String> = got
            .iter()
            .filter_map(|(_, v)| v.rsplit_once('.').map(|(id, _)| id.to_owned()))
            .collect();
        writers.sort();
        writers.dedup();
        Self {
            request_id,
            subject,
            fields: got.iter().map(|(n, _)| n.clone()).collect(),
            writers,
        }
    }
}

/// Acknowledged operations and what went wrong, summed over a run.
#[derive(Default)]
pub struct Tally {
    pub puts: u64,
    pub reads: u64,
    pub erasures: u64,
    /// Writes to erased subjects the vault refused, as it must.
    pub refused_writes: u64,
    /// Requests that failed with UNAVAILABLE, CANCELLED or DEADLINE_EXCEEDED before any
    /// kill (allowed for a loaded vault, but reported).
    pub transient: u64,
    pub violations: Vec<String>,
    pub reads_seen: Vec<ReadSeen>,
}

pub struct Worker {
    pub index: usize,
    rng: Rng,
    /// Every subject this worker ever wrote, erased ones included (erased is forever).
    pub subjects: Vec<Subject>,
    serial: u64,
    pub tally: Tally,
}

impl Worker {
    pub fn new(index: usize, rng: Rng) -> Self {
        Self {
            index,
            rng,
            subjects: Vec::new(),
            serial: 0,
            tally: Tally::default(),
        }
    }

    /// A fresh id for a request or a subject of this worker in `cycle`.
    pub fn next_id(&mut self, kind: &str, cycle: usize) -> String {
        self.serial += 1;
        format!("{kind}{cycle}w{}n{}", self.index, self.serial)
    }

    /// Runs requests until `flags.stop` or the first failure.
    pub async fn run(mut self, mut c: Clients, cycle: usize, flags: &Flags) -> Self {
        while !flags.stop.load(Ordering::SeqCst) {
            if !self.step(&mut c, cycle, flags).await {
                break;
            }
        }
        self
    }

    fn live(&self) -> Vec<usize> {
        (0..self.subjects.len())
            .filter(|i| self.subjects[*i].life == Life::Live)
            .collect()
    }

    /// One request; false when it failed.
    async fn step(&mut self, c: &mut Clients, cycle: usize, flags: &Flags) -> bool {
        let mut live = self.live();
        if live.len() < POOL {
            let id = self.next_id("s", cycle);
            self.subjects.push(Subject::new(id));
            live.push(self.subjects.len() - 1);
        }
        let at = *self.rng.pick(&live);
        let readable = self.subjects[at].has_acked();
        match self.rng.below(100) {
            0..=49 => self.put(c, cycle, at, flags).await,
            50..=89 if readable => self.get(c, cycle, at, flags).await,
            90..=93 if readable => self.erase(c, cycle, at, flags).await,
            94..=99 => self.touch_erased(c, cycle, flags).await,
            _ => self.put(c, cycle, at, flags).await,
        }
    }

    async fn put(&mut self, c: &mut Clients, cycle: usize, at: usize, flags: &Flags) -> bool {
        let id = self.next_id("p", cycle);
        let count = 1 + self.rng.below(3) as usize;
        let mut fields: Vec<(String, String)> = Vec::new();
        while fields.len() < count {
            let name = *self.rng.pick(&NAMES);
            if fields.iter().all(|(n, _)| n != name) {
                fields.push((name.to_owned(), format!("{id}.{name}")));
            }
        }
        let subject = self.subjects[at].id.clone();
        let result = rpc::put(c, &id, &subject, &fields).await;
        let s = &mut self.subjects[at];
        match result {
            Ok(()) => {
                self.tally.puts += 1;
                for (n, v) in fields {
                    s.fields.entry(n).or_default().acked = Some(v);
                }
                true
            }
            Err(status) => {
                for (n, v) in &fields {
                    let f: &mut FieldState = s.fields.entry(n.clone()).or_default();
                    f.maybe.push(v.clone());
                }
                if fields.len() > 1 {
                    s.torn_check = fields;
                }
                self.failed(flags, "PutFields", &status)
            }
        }
    }

    async fn get(&mut self, c: &mut Clients, cycle: usize, at: usize, flags: &Flags) -> bool {
        let id = self.next_id("g", cycle);
        let acked = self.subjects[at].acked_names();
        // Half the reads name some fields, half read every field.
        let names: Vec<String> = if self.rng.percent(50) {
            acked
                .iter()
                .filter(|_| self.rng.percent(60))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let subject = self.subjects[at].id.clone();
        match rpc::get(c, &id, &subject, &names).await {
            Ok(got) => {
                self.tally.reads += 1;
                let expect: Vec<(String, String)> = self.subjects[at]
                    .fields
                    .iter()
                    .filter(|(n, _)| names.is_empty() || names.contains(n))
                    .filter_map(|(n, f)| f.acked.clone().map(|v| (n.clone(), v)))
                    .collect();
                if got != expect {
                    self.tally
                        .violations
                        .push(format!("{subject}: read {got:?}, acknowledged {expect:?}"));
                }
                self.tally.reads_seen.push(ReadSeen::new(id, subject, &got));
                true
            }
            Err(status) => self.failed(flags, "GetFields", &status),
        }
    }

    async fn erase(&mut self, c: &mut Clients, cycle: usize, at: usize, flags: &Flags) -> bool {
        let id = self.next_id("e", cycle);
        let subject = self.subjects[at].id.clone();
        let result = rpc::erase(c, &id, &subject).await;
        let s = &mut self.subjects[at];
        match result {
            Ok(()) => {
                self.tally.erasures += 1;
                s.life = Life::Erased;
                s.fields.clear();
                s.recheck = true;
                true
            }
            Err(status) => {
                s.life = Life::MaybeErased;
                self.failed(flags, "EraseSubject", &status)
            }
        }
    }

    /// Writes to or reads an erased subject: both must answer NOT_FOUND ("erased").
    async fn touch_erased(&mut self, c: &mut Clients, cycle: usize, flags: &Flags) -> bool {
        let erased: Vec<usize> = (0..self.subjects.len())
            .filter(|i| self.subjects[*i].life == Life::Erased)
            .collect();
        if erased.is_empty() {
            return true;
        }
        let subject = self.subjects[*self.rng.pick(&erased)].id.clone();
        let write = self.rng.percent(50);
        let id = self.next_id("x", cycle);
        let result = if write {
            let value = vec![("alpha".to_owned(), format!("{id}.resurrect"))];
            rpc::put(c, &id, &subject, &value)
                .await
                .map(|()| Vec::new())
        } else {
            rpc::get(c, &id, &subject, &[]).await
        };
        match result {
            Ok(_) => {
                self.tally.violations.push(format!(
                    "{subject}: erased, yet {} succeeded",
                    if write { "a write" } else { "a read" }
                ));
                true
            }
            Err(s) if s.code() == Code::NotFound && s.message().contains("erased") => {
                self.tally.refused_writes += u64::from(write);
                true
            }
            Err(status) => self.failed(flags, "a request to an erased subject", &status),
        }
    }

    /// Notes a failed request; always false (the worker stops).
    fn failed(&mut self, flags: &Flags, what: &str, s: &Status) -> bool {
        if flags.killed.load(Ordering::SeqCst) {
            return false;
        }
        match s.code() {
            Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded => {
                self.tally.transient += 1;
            }
            code => self.tally.violations.push(format!(
                "{what} failed while the vault was up: {code:?}: {}",
                s.message()
            )),
        }
        false
    }
}
