//! Verifying the chain: pure functions over stored bytes, shared by the online RPC and the
//! offline `pii-vault audit verify`.
//!
//! Besides the events, two small signed records take part:
//! - the **checkpoint** left by pruning (sequence number and MAC of the last pruned event):
//!   verification starts after it, so pruned events are not reported missing;
//! - the **head** written with every batch (sequence number and MAC of the newest event):
//!   deleting events at the end of the log is reported too.

use std::collections::{HashMap, HashSet};

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

/// The prune checkpoint: the signed mark of the last pruned event, where verification
/// starts; and, in a log whose nodes keep chains of their own, each chain's last pruned event,
/// where that chain's remaining events link. A checkpoint of the single chain has no node
/// marks (its one mark is where the chain links).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub mark: ChainMark,
    /// (chain, mark of its last pruned event), signed under `node_label(CHECKPOINT, chain)`.
    pub nodes: Vec<(u64, ChainMark)>,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        if self.nodes.is_empty() {
            return self.mark.encode();
        }
        let mut w = Writer::new().bytes(&self.mark.encode());
        w = w.u32(self.nodes.len() as u32);
        for (node, mark) in &self.nodes {
            w = w.u64(*node).bytes(&mark.encode());
        }
        w.finish()
    }

    /// Reads a checkpoint; the single chain's is its mark alone.
    pub fn decode(buf: &[u8]) -> Result<Self, CodecError> {
        if let Ok(mark) = ChainMark::decode(buf) {
            return Ok(Self {
                mark,
                nodes: Vec::new(),
            });
        }
        const WHAT: &str = "audit checkpoint";
        let mut r = Reader::new(buf, WHAT);
        let mark = ChainMark::decode(r.bytes()?)?;
        let n = r.u32()? as usize;
        let mut nodes = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            let node = r.u64()?;
            nodes.push((node, ChainMark::decode(r.bytes()?)?));
        }
        r.finish()?;
        Ok(Self { mark, nodes })
    }

    /// True when the mark and every node mark are signed by `key`.
    pub fn is_valid(&self, key: &Key<Audit>) -> bool {
        self.mark.is_valid(key, CHECKPOINT)
            && self
                .nodes
                .iter()
                .all(|(node, mark)| mark.is_valid(key, &node_label(CHECKPOINT, *node)))
    }

    /// Where each chain's remaining events link: the node marks, or for the single chain
    /// the mark itself.
    pub fn links(&self) -> HashMap<u64, [u8; MAC_LEN]> {
        match self.nodes.is_empty() {
            true => HashMap::from([(0, self.mark.mac)]),
            false => self.nodes.iter().map(|(n, m)| (*n, m.mac)).collect(),
        }
    }
}

/// The label of a mark about one node's chain: a mark cannot be moved to another chain.
pub fn node_label(label: &str, node: u64) -> String {
    format!("{label}/node-{node}")
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
    verify_chains(key, checkpoint, head, &[], events)
}

/// Walks a log whose events may belong to several chains (the single chain, 0, and each
/// node's of a shared log): one merged order without gaps, in which every event links to
/// the previous event of its own chain. `node_heads` are the nodes' records, as (node, head
/// if it appended); `head` is the single chain's.
///
/// Events appended after the heads were read are accepted: they come after every event a
/// head vouches for. An event of a node with no record, placed where the heads vouch, is not.
pub fn verify_chains<E>(
    key: &Key<Audit>, checkpoint: Option<&[u8]>, head: Option<&[u8]>,
    node_heads: &[(u64, Option<Vec<u8>>)],
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
    // Where each chain links next (absent: its first event, linking to zeros).
    let mut prev: HashMap<u64, [u8; MAC_LEN]> = HashMap::new();
    if let Some(bytes) = checkpoint {
        match Checkpoint::decode(bytes) {
            Ok(cp) if cp.is_valid(key) => {
                report.first_seq = cp.mark.seq + 1;
                prev = cp.links();
            }
            _ => {
                fail(&mut report, 0, "the prune checkpoint is altered");
                return Ok(report);
            }
        }
    }
    // What the heads vouch for and the walk has not met yet: sequence number, MACs (one per
    // head naming it), so an event costs one lookup however many nodes there were.
    let mut vouched: HashMap<u64, Vec<[u8; MAC_LEN]>> = HashMap::new();
    let node_records = node_heads.iter().map(|(_, head)| head.as_deref());
    for bytes in std::iter::once(head).chain(node_records).flatten() {
        match Head::decode(bytes) {
            Ok(Head { mark, .. }) if mark.is_valid(key, HEAD) => {
                vouched.entry(mark.seq).or_default().push(mark.mac)
            }
            _ => {
                let at = report.first_seq;
                fail(&mut report, at, "the head record is altered");
                return Ok(report);
            }
        }
    }
    let vouched_to = vouched.keys().copied().max().unwrap_or(0);
    let known: HashSet<u64> = node_heads
        .iter()
        .map(|(node, _)| *node)
        .chain([0])
        .collect();
    let mut expect = report.first_seq;
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
        if !known.contains(&event.node) && seq <= vouched_to {
            fail(&mut report, seq, "event of a node with no record");
            return Ok(report);
        }
        let link = prev.get(&event.node).copied().unwrap_or([0; MAC_LEN]);
        if !mac_eq(&event.prev_mac, &link) {
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
        if let Some(macs) = vouched.get_mut(&seq) {
            macs.retain(|mac| !mac_eq(mac, &event.mac));
            if macs.is_empty() {
                vouched.remove(&seq);
            }
        }
        prev.insert(event.node, event.mac);
        report.checked += 1;
        expect += 1;
    }
    // Events appended after a head was read are fine; events a head vouches for must all
    // be there.
    let missing = vouched
        .keys()
        .copied()
        .filter(|seq| *seq >= report.first_seq)
        .min();
    if let Some(seq) = missing {
        fail(
            &mut report,
            expect.min(seq),
            "events missing at the end of the log",
        );
    }
    Ok(report)
}
