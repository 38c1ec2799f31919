//! Consent, restriction and tombstone records are MACed under a tenant key, with a sequence
//! number anchored in the subject record: a stopped vault's store is edited directly (one
//! record rolled back to an older copy, swapped for another subject's, forged or flipped)
//! and the restarted vault must refuse the record (DATA_LOSS, "failed its integrity check")
//! instead of acting on it.

use std::path::Path;

use pii_vault::proto::v1 as pb;
use pii_vault::storage::{open_waiting_for_lock, StateRecord, SubjectRecord, Tombstone};
use tonic::Code;

use crate::erasure::erase;
use crate::rights::{consent, read, rights};
use crate::util::{assert_reason, create_tenant, put, text, TestVault};

/// The raw value of `subject`'s entry in the tenant tree `tree` ("state", "tombstones") of
/// a stopped vault's store.
fn raw(dir: &Path, tree: &str, subject: &str) -> Option<Vec<u8>> {
    let db = open_waiting_for_lock(&sled::Config::new().path(dir.join("store"))).expect("sled");
    let tree = db.open_tree(format!("t/acme/{tree}")).expect("tree");
    let value = tree.get(subject_key(subject)).expect("get");
    value.map(|v| v.to_vec())
}

/// Replaces (or with `None` deletes) `subject`'s entry in the tenant tree `tree`.
fn set_raw(dir: &Path, tree: &str, subject: &str, value: Option<&[u8]>) {
    let db = open_waiting_for_lock(&sled::Config::new().path(dir.join("store"))).expect("sled");
    let tree = db.open_tree(format!("t/acme/{tree}")).expect("tree");
    match value {
        Some(v) => tree.insert(subject_key(subject), v).expect("insert"),
        None => tree.remove(subject_key(subject)).expect("remove"),
    };
    db.flush().expect("flush");
}

/// The store's key of a subject: its id, length-prefixed (`codec::Writer::str`).
fn subject_key(subject: &str) -> Vec<u8> {
    let mut key = u32::try_from(subject.len())
        .expect("short")
        .to_be_bytes()
        .to_vec();
    key.extend_from_slice(subject.as_bytes());
    key
}

fn assert_integrity_failure(err: &tonic::Status) {
    assert_reason(err, Code::DataLoss, "INTEGRITY_CHECK_FAILED");
    assert!(
        err.message()
            .contains("subject state record failed its integrity check"),
        "{err:?}"
    );
}

/// A vault with tenant acme and subject alice holding one field.
async fn vault_with_alice() -> TestVault {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    for who in ["alice", "bob"] {
        put(
            &mut vault.records().await,
            "acme",
            who,
            vec![text("email", pb::Category::Account, "a@example.com")],
        )
        .await
        .expect("put");
    }
    vault
}

async fn list_consents(c: &tonic::transport::Channel) -> Result<pb::SubjectStatus, tonic::Status> {
    rights(c)
        .list_consents(pb::ListConsentsRequest {
            tenant_id: "acme".into(),
            subject_id: "alice".into(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn a_consent_record_rolled_back_to_an_older_copy_is_refused_not_acted_on() {
    let vault = vault_with_alice().await;
    let c = vault.channel().await;
    consent(&c, "marketing", true).await;
    assert_eq!(read(&c, "marketing").await.expect("consented"), 1);
    drop(c);
    let config = vault.config.clone();
    let dir = vault.stop().await;
    let granted = raw(dir.path(), "state", "alice").expect("state stored");

    let vault = TestVault::start_on(dir, config.clone(), None).await;
    let c = vault.channel().await;
    consent(&c, "marketing", false).await;
    assert_eq!(
        read(&c, "marketing").await.expect_err("withdrawn").code(),
        Code::FailedPrecondition
    );
    drop(c);
    let dir = vault.stop().await;
    assert_ne!(raw(dir.path(), "state", "alice").as_ref(), Some(&granted));

    // The older copy has a valid MAC of its own; its sequence number is behind the
    // subject record's.
    set_raw(dir.path(), "state", "alice", Some(&granted));
    let vault = TestVault::start_on(dir, config.clone(), None).await;
    let c = vault.channel().await;
    assert_integrity_failure(&read(&c, "marketing").await.expect_err("rolled back"));
    assert_integrity_failure(&list_consents(&c).await.expect_err("rolled back"));
    // A change is not made on top of the rolled-back record either.
    let err = rights(&c)
        .set_consent(pb::SetConsentRequest {
            tenant_id: "acme".into(),
            subject_id: "alice".into(),
            purpose: "support".into(),
            granted: true,
            source: "web-form-7".into(),
        })
        .await
        .expect_err("no change on a rolled-back record");
    assert_integrity_failure(&err);
    drop(c);

    // Deleting the record (back to "never set") is a rollback too.
    let dir = vault.stop().await;
    set_raw(dir.path(), "state", "alice", None);
    let vault = TestVault::start_on(dir, config, None).await;
    let c = vault.channel().await;
    assert_integrity_failure(&read(&c, "support").await.expect_err("deleted"));
    // Another subject is untouched.
    assert_eq!(
        pb::record_service_client::RecordServiceClient::new(c.clone())
            .get_fields(pb::GetFieldsRequest {
                tenant_id: "acme".into(),
                subject_id: "bob".into(),
                field_names: vec![],
                purpose: "support".into(),
            })
            .await
            .expect("bob reads")
            .into_inner()
            .fields
            .len(),
        1
    );
}

#[tokio::test]
async fn a_state_record_with_a_flipped_byte_or_swapped_in_from_another_subject_is_refused() {
    let vault = vault_with_alice().await;
    let c = vault.channel().await;
    consent(&c, "marketing", false).await;
    rights(&c)
        .restrict_subject(pb::RestrictSubjectRequest {
            tenant_id: "acme".into(),
            subject_id: "bob".into(),
        })
        .await
        .expect("restrict bob");
    drop(c);
    let config = vault.config.clone();
    let dir = vault.stop().await;
    let stored = raw(dir.path(), "state", "alice").expect("state stored");

    // Withdrawn turned into granted: the byte after the purpose is the decision.
    let purpose = b"marketing";
    let at = stored
        .windows(purpose.len())
        .position(|w| w == purpose)
        .expect("purpose stored")
        + purpose.len();
    assert_eq!(stored[at], 0, "withdrawn");
    let mut flipped = stored.clone();
    flipped[at] = 1;
    set_raw(dir.path(), "state", "alice", Some(&flipped));
    let vault = TestVault::start_on(dir, config.clone(), None).await;
    let c = vault.channel().await;
    assert_integrity_failure(&read(&c, "marketing").await.expect_err("flipped"));
    drop(c);

    // The last byte (the tag).
    let dir = vault.stop().await;
    let mut flipped = stored.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    set_raw(dir.path(), "state", "alice", Some(&flipped));
    let vault = TestVault::start_on(dir, config.clone(), None).await;
    let c = vault.channel().await;
    assert_integrity_failure(&list_consents(&c).await.expect_err("flipped tag"));
    drop(c);

    // Bob's record (a valid MAC, for another subject) under alice's key.
    let dir = vault.stop().await;
    let bob = raw(dir.path(), "state", "bob").expect("bob's state");
    set_raw(dir.path(), "state", "alice", Some(&bob));
    let vault = TestVault::start_on(dir, config.clone(), None).await;
    let c = vault.channel().await;
    assert_integrity_failure(&list_consents(&c).await.expect_err("swapped"));
    drop(c);

    // Put back, the record reads again.
    let dir = vault.stop().await;
    set_raw(dir.path(), "state", "alice", Some(&stored));
    let vault = TestVault::start_on(dir, config, None).await;
    let c = vault.channel().await;
    let status = list_consents(&c).await.expect("intact again");
    assert!(!status.consents[0].granted);
}

#[tokio::test]
async fn a_forged_or_swapped_tombstone_is_refused() {
    let vault = vault_with_alice().await;
    let first = erase(vault.channel().await, "acme", "alice")
        .await
        .expect("erase alice");
    erase(vault.channel().await, "acme", "bob")
        .await
        .expect("erase bob");
    let config = vault.config.clone();
    let dir = vault.stop().await;
    let stored = raw(dir.path(), "tombstones", "alice").expect("tombstone");
    let bob = raw(dir.path(), "tombstones", "bob").expect("bob's tombstone");

    // A forged receipt: a well-formed record whose content no longer matches its MAC.
    let mut forged = Tombstone::decode(&stored).expect("decodes");
    forged.receipt_id = "er-forged".into();
    set_raw(dir.path(), "tombstones", "alice", Some(&forged.encode()));
    let vault = TestVault::start_on(dir, config.clone(), None).await;
    let err = erase(vault.channel().await, "acme", "alice")
        .await
        .expect_err("forged receipt");
    assert_integrity_failure(&err);
    let c = vault.channel().await;
    assert_integrity_failure(&read(&c, "support").await.expect_err("forged"));
    drop(c);

    // Bob's tombstone (a valid MAC of its own) under alice's key.
    let dir = vault.stop().await;
    set_raw(dir.path(), "tombstones", "alice", Some(&bob));
    let vault = TestVault::start_on(dir, config.clone(), None).await;
    let err = erase(vault.channel().await, "acme", "alice")
        .await
        .expect_err("swapped");
    assert_integrity_failure(&err);

    // A flipped byte.
    let dir = vault.stop().await;
    let mut flipped = stored.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    set_raw(dir.path(), "tombstones", "alice", Some(&flipped));
    let vault = TestVault::start_on(dir, config.clone(), None).await;
    let c = vault.channel().await;
    assert_integrity_failure(&read(&c, "support").await.expect_err("flipped"));
    drop(c);

    // Put back, the erasure answers its first receipt again.
    let dir = vault.stop().await;
    set_raw(dir.path(), "tombstones", "alice", Some(&stored));
    let vault = TestVault::start_on(dir, config, None).await;
    let again = erase(vault.channel().await, "acme", "alice")
        .await
        .expect("intact again");
    assert_eq!(again.receipt_id, first.receipt_id);
}

/// Removes the store's "seals are required" mark, as a store an earlier version wrote
/// lacks it.
fn forget_seals_required(dir: &Path) {
    let db = open_waiting_for_lock(&sled::Config::new().path(dir.join("store"))).expect("sled");
    let meta = db.open_tree("meta").expect("meta");
    assert!(meta.remove("record_seals").expect("remove").is_some());
    db.flush().expect("flush");
}

/// Makes alice's state record and anchor, and bob's tombstone, what a version before seals
/// wrote: no seal, anchor 0. Returns alice's unsealed state record.
fn make_legacy(dir: &Path) -> Vec<u8> {
    let mut state =
        StateRecord::decode(&raw(dir, "state", "alice").expect("state")).expect("state");
    state.seal = None;
    let legacy = state.encode();
    set_raw(dir, "state", "alice", Some(&legacy));
    let mut alice =
        SubjectRecord::decode(&raw(dir, "subjects", "alice").expect("subject")).expect("subject");
    alice.state_seq = 0;
    set_raw(dir, "subjects", "alice", Some(&alice.encode()));
    let mut bob =
        Tombstone::decode(&raw(dir, "tombstones", "bob").expect("tombstone")).expect("tombstone");
    bob.seal = None;
    set_raw(dir, "tombstones", "bob", Some(&bob.encode()));
    forget_seals_required(dir);
    legacy
}

/// On a store an earlier version wrote, unsealed consent records and tombstones were
/// accepted, so a rollback to a pre-upgrade copy went unnoticed. The first start seals
/// them: the data reads as before, and the same unsealed copies put back afterwards are
/// refused.
#[tokio::test]
async fn the_first_start_on_an_older_store_seals_its_records_and_then_refuses_unsealed_ones() {
    let vault = vault_with_alice().await;
    let c = vault.channel().await;
    consent(&c, "marketing", true).await;
    erase(c.clone(), "acme", "bob").await.expect("erase bob");
    drop(c);
    let config = vault.config.clone();
    let dir = vault.stop().await;
    let legacy_state = make_legacy(dir.path());
    let legacy_alice = raw(dir.path(), "subjects", "alice").expect("subject");
    let legacy_bob = raw(dir.path(), "tombstones", "bob").expect("tombstone");

    // The upgrade: everything reads as it did, and is sealed now.
    let vault = TestVault::start_on(dir, config.clone(), None).await;
    let c = vault.channel().await;
    assert_eq!(read(&c, "marketing").await.expect("consent kept"), 1);
    let bob = erase(c.clone(), "acme", "bob")
        .await
        .expect("erased before");
    assert!(!bob.receipt_id.is_empty());
    drop(c);
    let dir = vault.stop().await;
    let state =
        StateRecord::decode(&raw(dir.path(), "state", "alice").expect("state")).expect("state");
    assert_eq!(
        state.seal.map(|s| s.seq),
        Some(1),
        "sealed as the first record"
    );
    let stone = Tombstone::decode(&raw(dir.path(), "tombstones", "bob").expect("tombstone"))
        .expect("tombstone");
    assert!(stone.seal.is_some(), "the tombstone is sealed");

    // The pre-upgrade copies, put back: refused now.
    set_raw(dir.path(), "state", "alice", Some(&legacy_state));
    set_raw(dir.path(), "subjects", "alice", Some(&legacy_alice));
    set_raw(dir.path(), "tombstones", "bob", Some(&legacy_bob));
    let vault = TestVault::start_on(dir, config, None).await;
    let c = vault.channel().await;
    assert_integrity_failure(&read(&c, "marketing").await.expect_err("unsealed copy"));
    let err = erase(c.clone(), "acme", "bob")
        .await
        .expect_err("unsealed tombstone");
    assert_integrity_failure(&err);
}
