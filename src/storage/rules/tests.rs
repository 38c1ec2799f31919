//! The rules on plain records, without a backend: what each write decides.

use super::*;
use crate::crypto::Sealed;
use crate::domain::{Category, SubjectState};
use crate::storage::records::{Seal, SealedField};

/// A sealed envelope under key version `version`.
fn sealed(version: u32) -> Sealed {
    let mut bytes = vec![1u8];
    bytes.extend_from_slice(&version.to_be_bytes());
    bytes.extend_from_slice(&[7u8; 12 + 16 + 32]);
    Sealed::decode(&bytes).expect("envelope")
}

fn subject(kek: u32) -> SubjectRecord {
    SubjectRecord {
        created_at: Timestamp(1),
        dek_version: 1,
        wrapped_dek: sealed(kek),
        categories: 0,
        index_entries: Vec::new(),
        older_deks: Vec::new(),
        dek_reserved: 0,
        state_seq: 0,
    }
}

fn name(s: &str) -> FieldName {
    FieldName::parse(s).expect("field name")
}

fn field(n: &str, entry: &[u8], expires: u64) -> SealedField {
    SealedField {
        expected: None,
        name: name(n),
        category: Category::Profile,
        kind: 0,
        sealed: sealed(1),
        index_entry: entry.to_vec(),
        expires_at: Timestamp(expires),
    }
}

fn write(fields: Vec<SealedField>) -> SubjectWrite {
    SubjectWrite {
        subject: subject(3),
        fields,
        now: Timestamp(10),
        by: "cn:test".into(),
        may_replace: u32::MAX,
        idempotency: None,
    }
}

fn new_subject(kek: Option<u32>, n: usize) -> PutReads {
    PutReads {
        erased: false,
        stored: None,
        current_kek: kek,
        previous: vec![None; n],
        replay: None,
    }
}

#[test]
fn a_new_subject_needs_its_dek_wrapped_under_the_current_kek() {
    let w = write(vec![field("email", b"", 0)]);
    assert!(matches!(
        put(new_subject(Some(4), 1), &w),
        Err(StoreError::Conflict)
    ));
    assert!(matches!(
        put(new_subject(None, 1), &w),
        Err(StoreError::Conflict)
    ));
    let plan = put(new_subject(Some(3), 1), &w).expect("put");
    let stored = plan.changes.subject.expect("a new subject record");
    assert_eq!(stored.categories, category_bit(Category::Profile));
    assert_eq!(plan.written[0].meta.version, 1);
}

#[test]
fn an_erased_subject_or_another_key_is_refused() {
    let w = write(vec![field("email", b"", 0)]);
    let mut reads = new_subject(Some(3), 1);
    reads.erased = true;
    assert!(matches!(put(reads, &w), Err(StoreError::Erased)));
    let mut reads = new_subject(None, 1);
    reads.stored = Some(subject(2));
    assert!(matches!(put(reads, &w), Err(StoreError::Conflict)));
}

#[test]
fn a_rewrite_moves_the_index_and_expiry_entries_and_bumps_the_version() {
    let first = put(
        new_subject(Some(3), 1),
        &write(vec![field("email", b"e1", 50)]),
    )
    .expect("first");
    let stored_subject = first.changes.subject.clone().expect("subject");
    let stored_field = first.changes.put_fields[0].clone();
    let reads = PutReads {
        erased: false,
        stored: Some(stored_subject),
        current_kek: None,
        previous: vec![Some(stored_field)],
        replay: None,
    };
    let plan = put(reads, &write(vec![field("email", b"e2", 60)])).expect("second");
    assert_eq!(plan.changes.index.removed, [b"e1".to_vec()]);
    assert_eq!(plan.changes.index.added, [b"e2".to_vec()]);
    assert_eq!(
        plan.changes.expiry.removed,
        [(Timestamp(50), name("email"))]
    );
    assert_eq!(plan.changes.expiry.added, [(Timestamp(60), name("email"))]);
    assert_eq!(plan.written[0].meta.version, 2);
    let rec = plan.changes.subject.expect("index entries changed");
    assert_eq!(rec.index_entries, [b"e2".to_vec()]);
}

#[test]
fn a_name_written_twice_in_one_write_is_stored_once_as_its_second_version() {
    let w = write(vec![field("email", b"e1", 50), field("email", b"e2", 50)]);
    let plan = put(new_subject(Some(3), 2), &w).expect("put");
    assert_eq!(plan.changes.put_fields.len(), 1);
    assert_eq!(plan.changes.put_fields[0].meta.version, 2);
    assert_eq!(plan.changes.index.added, [b"e2".to_vec()]);
    assert!(plan.changes.index.removed.contains(&b"e1".to_vec()));
    assert_eq!(plan.changes.expiry.added, [(Timestamp(50), name("email"))]);
    assert!(plan.changes.expiry.removed.is_empty());
}

#[test]
fn deleting_fields_drops_their_index_entries_and_counts_each_name_once() {
    let mut rec = subject(3);
    rec.index_entries = vec![b"e1".to_vec()];
    let stored = put(
        new_subject(Some(3), 1),
        &write(vec![field("email", b"e1", 0)]),
    )
    .expect("put")
    .changes
    .put_fields
    .remove(0);
    let names = [name("email"), name("email"), name("phone")];
    let (changes, deleted) = delete_fields(
        Some(rec),
        &names,
        vec![Some(stored.clone()), Some(stored), None],
    );
    assert_eq!(deleted, 1);
    assert_eq!(changes.delete_fields, [name("email")]);
    assert_eq!(changes.index.removed, [b"e1".to_vec()]);
    assert!(changes.subject.expect("record").index_entries.is_empty());
}

#[test]
fn an_expiry_deletes_only_a_field_not_rewritten_since() {
    let stored = put(
        new_subject(Some(3), 1),
        &write(vec![field("email", b"", 60)]),
    )
    .expect("put")
    .changes
    .put_fields
    .remove(0);
    let (changes, deleted) =
        delete_expired(&name("email"), Timestamp(50), Some(stored.clone()), None);
    assert!(!deleted);
    assert_eq!(changes.expiry.removed, [(Timestamp(50), name("email"))]);
    assert!(changes.delete_fields.is_empty());
    let (changes, deleted) = delete_expired(&name("email"), Timestamp(60), Some(stored), None);
    assert!(deleted);
    assert_eq!(changes.delete_fields, [name("email")]);
}

#[test]
fn an_erasure_is_idempotent_and_holds_the_legal_shadow() {
    let template = Tombstone {
        erased_at: Timestamp(5),
        caller: "cn:eraser".into(),
        receipt_id: "r1".into(),
        categories: 0,
        purged: false,
        retained_categories: 0,
        retained_until: Timestamp(99),
        seal: None,
    };
    let unsealed = |t: Tombstone, _| t;
    let erase = |earlier, rec, shadow, t: &Tombstone| erase(earlier, rec, shadow, t, &unsealed);
    let (answer, plan) = erase(Some(template.clone()), Some(subject(3)), None, &template);
    assert_eq!(
        (answer, plan),
        (Erasure::AlreadyErased(template.clone()), None)
    );
    assert_eq!(erase(None, None, None, &template).0, Erasure::NotFound);

    let mut rec = subject(3);
    rec.categories = 0b110;
    rec.index_entries = vec![b"e1".to_vec()];
    let (_, plan) = erase(None, Some(rec.clone()), None, &template);
    let plan = plan.expect("an erasure");
    assert_eq!((plan.tombstone.categories, plan.hold_until), (0b110, None));
    assert_eq!(plan.tombstone.retained_until, Timestamp(0));
    assert_eq!(plan.unindex, [b"e1".to_vec()]);

    let mut shadow = subject(3);
    shadow.categories = 0b1000;
    let (answer, plan) = erase(None, Some(rec), Some(&shadow), &template);
    let plan = plan.expect("an erasure");
    assert_eq!(plan.hold_until, Some(Timestamp(99)));
    assert_eq!(plan.tombstone.retained_categories, 0b1000);
    assert_eq!(answer, Erasure::Erased(plan.tombstone));
}

fn sealed_state(seq: u64, restricted: u64) -> StateRecord {
    StateRecord {
        state: SubjectState {
            consents: Vec::new(),
            restricted_since: Some(Timestamp(restricted)),
        },
        seal: Some(Seal { seq, tag: [0; 32] }),
    }
}

#[test]
fn a_state_record_behind_its_anchor_is_refused_and_a_change_moves_the_anchor() {
    let mut rec = subject(1);
    rec.state_seq = 2;
    let integrity = |r: StoreResult<_>| matches!(r, Err(StoreError::Integrity(_)));
    assert!(check_state_anchor(Some(&rec), &sealed_state(2, 1)).is_ok());
    assert!(
        integrity(check_state_anchor(Some(&rec), &sealed_state(1, 1))),
        "older copy"
    );
    assert!(
        integrity(check_state_anchor(Some(&rec), &StateRecord::default())),
        "deleted"
    );
    assert!(
        check_state_anchor(None, &sealed_state(1, 1)).is_ok(),
        "nothing anchors"
    );

    let next = |_: &StateRecord| Ok(Some(sealed_state(3, 7)));
    let (write, now) =
        update_state(false, Some(rec.clone()), sealed_state(2, 1), &next).expect("update");
    let write = write.expect("a write");
    assert_eq!(write.subject.map(|r| r.state_seq), Some(3));
    assert_eq!((write.state.seq(), now.seq()), (3, 3));
    // An older copy is refused before the update runs.
    let never = |_: &StateRecord| -> StoreResult<Option<StateRecord>> { panic!("not run") };
    assert!(integrity(
        update_state(false, Some(rec.clone()), sealed_state(1, 1), &never).map(|_| ())
    ));
    // A sealed record must move the sequence number forward.
    let same = |_: &StateRecord| Ok(Some(sealed_state(2, 8)));
    assert!(integrity(
        update_state(false, Some(rec.clone()), sealed_state(2, 1), &same).map(|_| ())
    ));
    // Nothing to change writes nothing; an erased subject is not written.
    let keep = |_: &StateRecord| Ok(None);
    let (write, now) =
        update_state(false, Some(rec.clone()), sealed_state(2, 1), &keep).expect("keep");
    assert_eq!((write, now), (None, sealed_state(2, 1)));
    assert!(matches!(
        update_state(true, Some(rec), sealed_state(2, 1), &keep),
        Err(StoreError::Erased)
    ));
}

#[test]
fn an_erasure_seals_its_tombstone_one_past_the_state_sequence() {
    let template = Tombstone {
        erased_at: Timestamp(5),
        caller: "cn:eraser".into(),
        receipt_id: "r1".into(),
        categories: 0,
        purged: false,
        retained_categories: 0,
        retained_until: Timestamp(99),
        seal: None,
    };
    let mut rec = subject(3);
    rec.state_seq = 4;
    rec.categories = 0b10;
    let seal = |t: Tombstone, seq: u64| {
        assert_eq!(t.categories, 0b10, "sealed after it is completed");
        Tombstone {
            seal: Some(Seal { seq, tag: [9; 32] }),
            ..t
        }
    };
    let (answer, plan) = erase(None, Some(rec), None, &template, &seal);
    let plan = plan.expect("an erasure");
    assert_eq!(plan.tombstone.seal.map(|s| s.seq), Some(5));
    assert_eq!(answer, Erasure::Erased(plan.tombstone));
}

fn claimed(fields: Vec<SealedField>, fingerprint: u8) -> SubjectWrite {
    SubjectWrite {
        idempotency: Some(crate::storage::records::Idempotency {
            scope: [1; IDEMPOTENCY_HASH_LEN],
            fingerprint: [fingerprint; IDEMPOTENCY_HASH_LEN],
            expires_at: Timestamp(100),
        }),
        ..write(fields)
    }
}

#[test]
fn a_write_under_an_idempotency_key_stores_its_answer_and_a_resend_gets_it_back() {
    let first = put(
        new_subject(Some(3), 1),
        &claimed(vec![field("email", b"e1", 0)], 9),
    )
    .expect("first");
    let change = first.idempotency.clone().expect("a record to store");
    assert_eq!(change.scope, [1; IDEMPOTENCY_HASH_LEN]);
    assert_eq!(change.record.written, [first.written[0].meta.clone()]);
    assert_eq!(change.replaces, None);

    // Sent again: the stored answer, nothing written, whatever the fields' state now.
    let mut again = new_subject(None, 1);
    again.stored = first.changes.subject.clone();
    again.previous = vec![Some(first.changes.put_fields[0].clone())];
    again.replay = Some(change.record.clone());
    let replayed = put(again, &claimed(vec![field("email", b"e1", 0)], 9)).expect("replay");
    assert_eq!(replayed.changes, Changes::default());
    assert!(replayed.idempotency.is_none());
    assert_eq!(replayed.written.len(), 1);
    assert!(replayed.written[0].replayed);
    assert_eq!(replayed.written[0].meta, first.written[0].meta);

    // Another request under the key: refused, nothing written.
    let mut other = new_subject(None, 1);
    other.stored = first.changes.subject.clone();
    other.replay = Some(change.record.clone());
    assert!(matches!(
        put(other, &claimed(vec![field("email", b"e2", 0)], 8)),
        Err(StoreError::IdempotencyKeyReused)
    ));

    // An expired record answers nothing: the write happens and replaces it.
    let mut late = new_subject(None, 1);
    late.stored = first.changes.subject.clone();
    late.previous = vec![Some(first.changes.put_fields[0].clone())];
    late.replay = Some(IdempotencyRecord {
        expires_at: Timestamp(10),
        ..change.record.clone()
    });
    let rewritten = put(late, &claimed(vec![field("email", b"e2", 0)], 8)).expect("late");
    assert_eq!(rewritten.written[0].meta.version, 2);
    assert!(!rewritten.written[0].replayed);
    assert_eq!(
        rewritten.idempotency.expect("a new record").replaces,
        Some(Timestamp(10))
    );

    // An erased subject is refused even under a key it once wrote with.
    let mut erased = new_subject(None, 1);
    erased.erased = true;
    erased.replay = Some(change.record);
    assert!(matches!(
        put(erased, &claimed(vec![field("email", b"e1", 0)], 9)),
        Err(StoreError::Erased)
    ));
}
