//! Verifying the chain: pure functions over stored bytes, shared by the online RPC and the
//! offline `pii-vault audit verify`.
//!
//! Besides the events, two small signed records take part:
//! - the **checkpoint** left by pruning (sequence number and MAC of the last pruned event):
//!   verification starts after it, so pruned events are not reported missing;
//! - the **head** written with every batch (sequence number and MAC of the newest event):
//!   deleting events at the end of the log is reported too.

use crate::codec::{CodecError, Reader, Writer};
use crate::crypto::{mac_eq, Audit, Key, MAC_LEN};

use super::AuditEvent;

/// A signed (sequence number, event MAC) pair: the head of the log, or a prune checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainMark {
    pub seq: u64,
    pub mac: [u8; MAC_LEN],
    check: [u8; MAC_LEN],
}

impl ChainMark {
    /// Signs a mark; `label` keeps heads and checkpoints apart.
    pub fn new(key: &Key<Audit>, label: &str, seq: u64, mac: [u8; MAC_LEN]) -> Self {
        let check = key.mac(label, &[&seq.to_be_bytes(), &mac]);
        Self { seq, mac, check }
    }

    pub fn is_valid(&self, key: &Key<Audit>, label: &str) -> bool {
        mac_eq(
            &key.mac(label, &[&self.seq.to_be_bytes(), &self.mac]),
            &self.check,
        )
    }

    pub fn encode(&self) -> Vec<u8> {
        Writer::new()
            .u64(self.seq)
            .bytes(&self.mac)
            .bytes(&self.check)
            .finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, CodecError> {
        const WHAT: &str = "audit chain mark";
        let mut r = Reader::new(buf, WHAT);
        let seq = r.u64()?;
        let mac = <[u8; MAC_LEN]>::try_from(r.bytes()?).map_err(|_| CodecError(WHAT))?;
        let check = <[u8; MAC_LEN]>::try_from(r.bytes()?).map_err(|_| CodecError(WHAT))?;
        r.finish()?;
        Ok(Self { seq, mac, check })
    }
}

/// The head record a batch stores: its signed mark, and the sequence numbers of the
/// `Outcome::Intent` events whose ending was not recorded yet (what a start after a crash
/// records as unknown). The list is not signed: the intents themselves are in the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub mark: ChainMark,
    pub open_intents: Vec<u64>,
}

impl Head {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new().bytes(&self.mark.encode());
        w = w.u32(self.open_intents.len() as u32);
        for seq in &self.open_intents {
            w = w.u64(*seq);
        }
        w.finish()
    }

    /// Reads a head record; one written before heads carried intents is its mark alone.
    pub fn decode(buf: &[u8]) -> Result<Self, CodecError> {
        if let Ok(mark) = ChainMark::decode(buf) {
            return Ok(Self {
                mark,
                open_intents: Vec::new(),
            });
        }
        const WHAT: &str = "audit head";
        let mut r = Reader::new(buf, WHAT);
        let mark = ChainMark::decode(r.bytes()?)?;
        let n = r.u32()? as usize;
        let mut open_intents = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            open_intents.push(r.u64()?);
        }
        r.finish()?;
        Ok(Self { mark, open_intents })
    }
}

/// Label of the head mark.
pub const HEAD: &str = "audit-head-v1";
/// Label of the prune checkpoint mark.
pub const CHECKPOINT: &str = "audit-checkpoint-v1";

/// What verification found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events whose MAC and place in the chain were checked.
    pub checked: u64,
    /// The first sequence number checked (1, or one past the prune checkpoint).
    pub first_seq: u64,
    /// The first broken, missing or misplaced sequence number, if any.
    pub first_bad: Option<u64>,
    /// What is wrong there.
    pub problem: Option<String>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// Walks the chain. `events` yields `(key sequence number, stored bytes)` in order.
pub fn verify<E>(
    key: &Key<Audit>, checkpoint: Option<&[u8]>, head: Option<&[u8]>,
    events: impl IntoIterator<Item = Result<(u64, Vec<u8>), E>>,
) -> Result<VerifyReport, E> {
    let mut report = VerifyReport {
        checked: 0,
        first_seq: 1,
        first_bad: None,
        problem: None,
    };
    let fail = |report: &mut VerifyReport, seq: u64, problem: &str| {
        report.first_bad = Some(seq);
        report.problem = Some(problem.to_owned());
    };
    let mut prev = [0u8; MAC_LEN];
    if let Some(bytes) = checkpoint {
        match ChainMark::decode(bytes) {
            Ok(mark) if mark.is_valid(key, CHECKPOINT) => {
                report.first_seq = mark.seq + 1;
                prev = mark.mac;
            }
            _ => {
                fail(&mut report, 0, "the prune checkpoint is altered");
                return Ok(report);
            }
        }
    }
    let mut expect = report.first_seq;
    let mut macs_seen = Vec::new();
    for item in events {
        let (seq, bytes) = item?;
        if seq < expect {
            // Left over from a prune in progress: before the checkpoint, not part of the chain.
            continue;
        }
        if seq > expect {
            fail(&mut report, expect, "event missing");
            return Ok(report);
        }
        let event = match AuditEvent::decode(&bytes) {
            Ok(e) => e,
            Err(_) => {
                fail(&mut report, seq, "event altered (does not decode)");
                return Ok(report);
            }
        };
        if event.seq != seq {
            fail(&mut report, seq, "event out of place (reordered)");
            return Ok(report);
        }
        if !mac_eq(&event.prev_mac, &prev) {
            fail(
                &mut report,
                seq,
                "chain broken: previous event replaced or reordered",
            );
            return Ok(report);
        }
        if !event.mac_is_valid(key) {
            fail(&mut report, seq, "event altered");
            return Ok(report);
        }
        prev = event.mac;
        macs_seen.push((seq, event.mac));
        report.checked += 1;
        expect += 1;
    }
    if let Some(bytes) = head {
        let mark = match Head::decode(bytes) {
            Ok(Head { mark, .. }) if mark.is_valid(key, HEAD) => mark,
            _ => {
                fail(&mut report, expect, "the head record is altered");
                return Ok(report);
            }
        };
        // Events appended after the head was read are fine; events the head vouches for
        // must all be there.
        let vouched = macs_seen
            .iter()
            .find(|(s, _)| *s == mark.seq)
            .is_some_and(|(_, mac)| mac_eq(mac, &mark.mac));
        if mark.seq >= report.first_seq && !vouched {
            fail(
                &mut report,
                expect.min(mark.seq),
                "events missing at the end of the log",
            );
        }
    }
    Ok(report)
}
