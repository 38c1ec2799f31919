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
