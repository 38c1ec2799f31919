//! Any bytes handed to the audit log's stored formats, as a damaged or hostile data
//! directory could hold them. An event or a chain mark either fails to decode or encodes
//! back to exactly those bytes; and the chain verifier, fed the input cut into a checkpoint,
//! a head and a run of events, answers with a report (most likely "altered") and never
//! panics: `pii-vault audit verify` runs it on whatever is on disk.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pii_vault::audit::{verify, AuditEvent, ChainMark};
use pii_vault::crypto::{Audit, Key, Zeroizing};

/// Splits `data` at 0xFF bytes: piece 0 is the checkpoint, piece 1 the head, the rest are
/// events numbered from 1 (so valid event bytes from the corpus line up with their seq).
fn pieces(data: &[u8]) -> (Option<&[u8]>, Option<&[u8]>, Vec<(u64, Vec<u8>)>) {
    let mut parts = data.split(|b| *b == 0xFF);
    let checkpoint = parts.next().filter(|p| !p.is_empty());
    let head = parts.next().filter(|p| !p.is_empty());
    let events = (1..).zip(parts.map(<[u8]>::to_vec)).collect();
    (checkpoint, head, events)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = AuditEvent::decode(data) {
        assert!(event.encode() == data, "audit event did not round-trip");
    }
    if let Ok(mark) = ChainMark::decode(data) {
        assert!(mark.encode() == data, "audit chain mark did not round-trip");
    }
    let key: Key<Audit> = Key::from_secret_bytes(1, Zeroizing::new([7u8; 32]));
    let (checkpoint, head, events) = pieces(data);
    let count = events.len() as u64;
    let report = verify(
        &key,
        checkpoint,
        head,
        events.into_iter().map(Ok::<_, std::convert::Infallible>),
    )
    .unwrap_or_else(|never| match never {});
    assert!(report.checked <= count, "verified more events than given");
    assert!(
        report.is_ok() == report.problem.is_none(),
        "a report names a problem exactly when it is not ok"
    );
});
