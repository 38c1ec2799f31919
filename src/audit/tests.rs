//! Tampering with a chain is caught at the exact sequence number.

use std::convert::Infallible;

use super::*;
use crate::crypto::{Audit, Key};
use crate::domain::Timestamp;

fn key() -> Key<Audit> {
    Key::generate(1).expect("rng")
}

fn draft(i: u64) -> EventDraft {
    EventDraft {
        time: Timestamp(1_000 + i),
        request_id: format!("req-{i}"),
        caller: "spiffe://acme/billing".into(),
        operation: Operation::GetFields,
        tenant: "acme".into(),
        subject: format!("user-{i}"),
        fields: vec!["email".into()],
        purpose: "billing".into(),
        outcome: Outcome::Ok,
        reason: String::new(),
        rule: "r1".into(),
    }
}

/// A chain of `n` events (seq 1..=n) and its head.
fn chain(key: &Key<Audit>, n: u64) -> (Vec<(u64, Vec<u8>)>, Vec<u8>) {
    let mut prev = [0u8; 32];
    let mut rows = Vec::new();
    for seq in 1..=n {
        let e = AuditEvent::seal(key, seq, draft(seq), prev);
        prev = e.mac;
        rows.push((seq, e.encode()));
    }
    (rows, ChainMark::new(key, HEAD, n, prev).encode())
}

fn run(key: &Key<Audit>, cp: Option<&[u8]>, head: &[u8], rows: &[(u64, Vec<u8>)]) -> VerifyReport {
    let items = rows.iter().cloned().map(Ok::<_, Infallible>);
    match verify(key, cp, Some(head), items) {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

#[test]
fn an_untouched_chain_verifies() {
    let key = key();
    let (rows, head) = chain(&key, 20);
    let r = run(&key, None, &head, &rows);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.checked, 20);
}

#[test]
fn a_flipped_byte_fails_at_that_event() {
    let key = key();
    let (rows, head) = chain(&key, 10);
    for byte in [0, 9, 20, rows[6].1.len() / 2, rows[6].1.len() - 1] {
        let mut bad = rows.clone();
        bad[6].1[byte] ^= 0x01;
        let r = run(&key, None, &head, &bad);
        assert_eq!(r.first_bad, Some(7), "byte {byte}: {r:?}");
    }
}

#[test]
fn a_deleted_event_fails_at_its_sequence_number() {
    let key = key();
    let (mut rows, head) = chain(&key, 10);
    rows.remove(3);
    let r = run(&key, None, &head, &rows);
    assert_eq!(r.first_bad, Some(4));
    assert_eq!(r.problem.as_deref(), Some("event missing"));
}

#[test]
fn swapped_events_fail_at_the_first_swapped_place() {
    let key = key();
    let (mut rows, head) = chain(&key, 10);
    let (a, b) = (rows[4].1.clone(), rows[5].1.clone());
    rows[4].1 = b;
    rows[5].1 = a;
    assert_eq!(run(&key, None, &head, &rows).first_bad, Some(5));
}

#[test]
fn a_truncated_tail_is_caught_by_the_head() {
    let key = key();
    let (mut rows, head) = chain(&key, 10);
    rows.truncate(8);
    let r = run(&key, None, &head, &rows);
    assert_eq!(r.first_bad, Some(9), "{r:?}");
}

#[test]
fn a_checkpoint_lets_verification_start_after_pruned_events() {
    let key = key();
    let (rows, head) = chain(&key, 10);
    let pruned = AuditEvent::decode(&rows[3].1).expect("decode");
    let cp = ChainMark::new(&key, CHECKPOINT, 4, pruned.mac).encode();
    let r = run(&key, Some(&cp), &head, &rows[4..]);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!((r.first_seq, r.checked), (5, 6));
    // A forged checkpoint is reported, not trusted.
    let forged =
        ChainMark::new(&Key::generate(1).expect("rng"), CHECKPOINT, 4, pruned.mac).encode();
    assert!(!run(&key, Some(&forged), &head, &rows[4..]).is_ok());
    // Without the checkpoint the gap is tampering.
    assert_eq!(run(&key, None, &head, &rows[4..]).first_bad, Some(1));
}

#[test]
fn a_chain_macd_under_another_key_fails() {
    let (rows, head) = chain(&key(), 3);
    assert!(!run(&key(), None, &head, &rows).is_ok());
}

#[test]
fn events_round_trip_and_debug_hides_macs() {
    let key = key();
    let e = AuditEvent::seal(&key, 1, draft(1), [0; 32]);
    assert_eq!(AuditEvent::decode(&e.encode()).expect("decode"), e);
    assert!(e.mac_is_valid(&key));
}

/// Each node's record: (node, its head).
type Heads = Vec<(u64, Option<Vec<u8>>)>;

/// A log of `n` events merged from the chains of nodes 1, 2 and 3 (event `seq` is node
/// `seq % 3 + 1`'s), with each node's head.
fn nodes_log(key: &Key<Audit>, n: u64) -> (Vec<(u64, Vec<u8>)>, Heads) {
    let mut prev = std::collections::BTreeMap::new();
    let mut heads = std::collections::BTreeMap::new();
    let mut rows = Vec::new();
    for seq in 1..=n {
        let node = seq % 3 + 1;
        let link = prev.get(&node).copied().unwrap_or([0; 32]);
        let e = AuditEvent::seal_on(key, node, seq, draft(seq), link);
        prev.insert(node, e.mac);
        heads.insert(node, Head::encode(&head_of(key, seq, e.mac)));
        rows.push((seq, e.encode()));
    }
    (rows, heads.into_iter().map(|(n, h)| (n, Some(h))).collect())
}

fn head_of(key: &Key<Audit>, seq: u64, mac: [u8; 32]) -> Head {
    Head {
        mark: ChainMark::new(key, HEAD, seq, mac),
        open_intents: Vec::new(),
    }
}

fn run_nodes(
    key: &Key<Audit>, cp: Option<&[u8]>, heads: &[(u64, Option<Vec<u8>>)], rows: &[(u64, Vec<u8>)],
) -> VerifyReport {
    let items = rows.iter().cloned().map(Ok::<_, Infallible>);
    match verify_chains(key, cp, None, heads, items) {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

#[test]
fn node_chains_merged_in_one_order_verify_each_on_its_own() {
    let key = key();
    let (rows, heads) = nodes_log(&key, 30);
    let r = run_nodes(&key, None, &heads, &rows);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.checked, 30);
    let e = AuditEvent::decode(&rows[4].1).expect("decode");
    assert_eq!((e.seq, e.node), (5, 3), "the node is in the stored event");
    // One node's event altered, or moved into another node's chain: caught where it is.
    let mut flipped = rows.clone();
    flipped[10].1[12] ^= 0x01;
    assert_eq!(run_nodes(&key, None, &heads, &flipped).first_bad, Some(11));
    let mut moved = rows.clone();
    let mut e = AuditEvent::decode(&moved[10].1).expect("decode");
    e.node = e.node % 3 + 1;
    moved[10].1 = e.encode();
    assert_eq!(run_nodes(&key, None, &heads, &moved).first_bad, Some(11));
}

#[test]
fn a_nodes_lost_tail_is_caught_by_its_own_head() {
    let key = key();
    let (rows, heads) = nodes_log(&key, 30);
    // Node 1's newest event is 27 (27 % 3 + 1 == 1): cut the log after 26.
    let r = run_nodes(&key, None, &heads, &rows[..26]);
    assert_eq!(r.first_bad, Some(27), "{r:?}");
    assert_eq!(
        r.problem.as_deref(),
        Some("events missing at the end of the log")
    );
    // A node's head altered.
    let mut forged = heads.clone();
    forged[1].1 = Some(Head::encode(&head_of(
        &Key::generate(1).expect("rng"),
        29,
        [1; 32],
    )));
    assert!(!run_nodes(&key, None, &forged, &rows).is_ok());
}

#[test]
fn an_event_of_a_node_without_a_record_is_refused_where_the_heads_vouch() {
    let key = key();
    let (rows, heads) = nodes_log(&key, 30);
    let without_two: Vec<_> = heads.iter().filter(|(n, _)| *n != 2).cloned().collect();
    // Node 2's first event is 1 (1 % 3 + 1 == 2).
    let r = run_nodes(&key, None, &without_two, &rows);
    assert_eq!(r.first_bad, Some(1), "{r:?}");
    assert_eq!(r.problem.as_deref(), Some("event of a node with no record"));
    // A node that started after the heads were read appends after everything they vouch
    // for: accepted.
    let (mut later, mut heads) = nodes_log(&key, 30);
    let last_mac = [0; 32];
    let newcomer = AuditEvent::seal_on(&key, 9, 31, draft(31), last_mac);
    later.push((31, newcomer.encode()));
    heads.retain(|(n, _)| *n != 9);
    assert!(run_nodes(&key, None, &heads, &later).is_ok());
}

#[test]
fn a_checkpoint_with_node_marks_starts_each_chain_after_its_pruned_events() {
    let key = key();
    let (rows, heads) = nodes_log(&key, 30);
    let through = 10;
    let mut nodes = Vec::new();
    for node in 1..=3u64 {
        let (seq, bytes) = rows[..through]
            .iter()
            .rev()
            .find(|(seq, _)| seq % 3 + 1 == node)
            .expect("pruned event of the node");
        let mac = AuditEvent::decode(bytes).expect("decode").mac;
        nodes.push((
            node,
            ChainMark::new(&key, &node_label(CHECKPOINT, node), *seq, mac),
        ));
    }
    let last = AuditEvent::decode(&rows[through - 1].1).expect("decode");
    let cp = Checkpoint {
        mark: ChainMark::new(&key, CHECKPOINT, through as u64, last.mac),
        nodes: nodes.clone(),
    };
    assert_eq!(Checkpoint::decode(&cp.encode()).expect("decode"), cp);
    let r = run_nodes(&key, Some(&cp.encode()), &heads, &rows[through..]);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!((r.first_seq, r.checked), (11, 20));
    // A node mark moved to another chain does not verify.
    let mut swapped = cp.clone();
    swapped.nodes[0].0 = 2;
    swapped.nodes[1].0 = 1;
    assert_eq!(
        run_nodes(&key, Some(&swapped.encode()), &heads, &rows[through..]).first_bad,
        Some(0)
    );
    // Without node 3's mark, its first remaining event links to nothing known.
    let mut dropped = cp.clone();
    dropped.nodes.pop();
    let r = run_nodes(&key, Some(&dropped.encode()), &heads, &rows[through..]);
    assert!(!r.is_ok(), "{r:?}");
}
