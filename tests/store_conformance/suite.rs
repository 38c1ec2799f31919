//! The contract of `storage::Store`, as checks any backend must pass unchanged.
//!
//! Each check takes a fresh, empty store. `conformance_tests!` turns every check into one
//! `#[test]` for a backend; a new backend adds one invocation of it and nothing else.
//!
//! The checks state what the layers above rely on: atomicity, the erasure transaction,
//! conditional updates, paging that visits each item once, and tenant isolation. They do
//! not fix an order where the trait does not promise one (subject pages, for instance).

use std::collections::BTreeSet;
use std::sync::Arc;

use pii_vault::crypto::{Aad, Dek, Kek, Key};
use pii_vault::domain::{
    Category, Consent, FieldName, Purpose, SubjectId, SubjectState, TenantId, Timestamp,
};
use pii_vault::storage::{
    category_bit, Erasure, Idempotency, KeyChange, SealedField, StateRecord, Store, StoreError,
    SubjectRecord, SubjectWrite, TenantKeyState, TenantRecord, Tombstone,
};

mod sealed;
pub use sealed::*;

/// A tenant created in the store under test, with its KEK to wrap DEKs.
pub struct Tenant {
    pub id: TenantId,
    pub kek: Key<Kek>,
}

pub fn tenant_id(s: &str) -> TenantId {
    TenantId::parse(s).expect("tenant id")
}

pub fn subject_id(s: &str) -> SubjectId {
    SubjectId::parse(s).expect("subject id")
}

pub fn name(s: &str) -> FieldName {
    FieldName::parse(s).expect("field name")
}

fn tenant_record(id: &TenantId, kek_version: u32) -> TenantRecord {
    TenantRecord {
        id: id.clone(),
        created_at: Timestamp(1_000),
        kek_version,
        shredded_at: None,
    }
}

pub fn create_tenant(store: &dyn Store, id: &str) -> Tenant {
    let id = tenant_id(id);
    let kek = Key::<Kek>::generate(1).expect("kek");
    let root = Key::<Kek>::generate(1).expect("root");
    let wrapped = root.wrap(&kek, &Aad::new("kek")).expect("wrap");
    assert!(store
        .create_tenant(&tenant_record(&id, 1), &wrapped)
        .expect("create tenant"));
    Tenant { id, kek }
}

/// A new subject record with a fresh DEK wrapped under the tenant's KEK.
pub fn new_subject(tenant: &Tenant) -> SubjectRecord {
    let dek = Key::<Dek>::generate(1).expect("dek");
    SubjectRecord {
        created_at: Timestamp(2_000),
        dek_version: 1,
        wrapped_dek: tenant.kek.wrap(&dek, &Aad::new("dek")).expect("wrap"),
        categories: 0,
        index_entries: Vec::new(),
        older_deks: Vec::new(),
        dek_reserved: 0,
        state_seq: 0,
    }
}

pub fn sealed_field(field: &str, category: Category, value: &[u8]) -> SealedField {
    let dek = Key::<Dek>::generate(1).expect("dek");
    SealedField {
        expected: None,
        name: name(field),
        category,
        kind: 1,
        sealed: dek.seal(value, &Aad::new("field")).expect("seal"),
        index_entry: Vec::new(),
        expires_at: Timestamp(0),
    }
}

pub fn write(subject: &SubjectRecord, fields: Vec<SealedField>, now: u64) -> SubjectWrite {
    SubjectWrite {
        subject: subject.clone(),
        fields,
        now: Timestamp(now),
        by: "spiffe://test/writer".into(),
        may_replace: u32::MAX,
        idempotency: None,
    }
}

fn tombstone(now: u64) -> Tombstone {
    Tombstone {
        erased_at: Timestamp(now),
        caller: "spiffe://test/eraser".into(),
        receipt_id: "receipt-1".into(),
        categories: 0,
        purged: false,
        retained_categories: 0,
        retained_until: Timestamp(now + 1_000_000),
        seal: None,
    }
}

/// Stores the tombstone as the rules completed it (a store never sees a sealing key).
pub fn unsealed(t: Tombstone, _seq: u64) -> Tombstone {
    t
}

/// An unsealed state record (the store does not check seals; the keyring does).
pub fn record(state: SubjectState) -> StateRecord {
    StateRecord { state, seal: None }
}

fn field_names(store: &dyn Store, t: &Tenant, s: &SubjectId) -> Vec<String> {
    store
        .fields(&t.id, s)
        .expect("fields")
        .into_iter()
        .map(|f| f.meta.name.as_str().to_owned())
        .collect()
}

pub fn metadata_is_set_once_swapped_conditionally_and_scanned_by_prefix(store: Arc<dyn Store>) {
    assert_eq!(store.meta("a/x").expect("meta"), None);
    assert_eq!(store.meta_init("a/x", b"one").expect("init"), b"one");
    assert_eq!(
        store.meta_init("a/x", b"two").expect("init"),
        b"one",
        "init never replaces"
    );
    assert!(!store
        .meta_swap("a/x", Some(b"two"), b"three")
        .expect("swap"));
    assert!(store
        .meta_swap("a/x", Some(b"one"), b"three")
        .expect("swap"));
    assert!(!store.meta_swap("a/y", Some(b"one"), b"1").expect("swap"));
    assert!(store.meta_swap("a/y", None, b"1").expect("swap"));
    store.meta_init("b/z", b"other").expect("init");
    let scanned = store.meta_scan("a/").expect("scan");
    assert_eq!(
        scanned,
        vec![
            ("a/x".into(), b"three".to_vec()),
            ("a/y".into(), b"1".to_vec())
        ]
    );
    store.meta_remove("a/x").expect("remove");
    assert_eq!(store.meta("a/x").expect("meta"), None);
    assert_eq!(
        store.meta("b/z").expect("meta").as_deref(),
        Some(&b"other"[..])
    );
}

pub fn tenants_are_created_once_and_paged_in_id_order(store: Arc<dyn Store>) {
    let ids = ["delta", "alpha", "charlie", "bravo", "echo"];
    for id in ids {
        create_tenant(store.as_ref(), id);
    }
    let kek = Key::<Kek>::generate(1).expect("kek");
    let wrapped = kek.wrap(&kek.duplicate(), &Aad::new("kek")).expect("wrap");
    assert!(
        !store
            .create_tenant(&tenant_record(&tenant_id("alpha"), 1), &wrapped)
            .expect("create again"),
        "a second create of one id answers false"
    );
    let mut seen = Vec::new();
    let mut after: Option<TenantId> = None;
    loop {
        let page = store.tenants(after.as_ref(), 2).expect("page");
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        seen.extend(page.into_iter().map(|t| t.id.as_str().to_owned()));
    }
    assert_eq!(seen, ["alpha", "bravo", "charlie", "delta", "echo"]);
    let alpha = store
        .tenant(&tenant_id("alpha"))
        .expect("get")
        .expect("alpha");
    assert_eq!(alpha.kek_version, 1);
    assert_eq!(store.tenant(&tenant_id("zulu")).expect("get"), None);
}

pub fn wrapped_keks_are_replaced_only_if_unchanged(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    let stored = store.kek(&t.id, 1).expect("kek").expect("version 1");
    assert_eq!(store.keks(&t.id).expect("keks").len(), 1);
    let other = Key::<Kek>::generate(1).expect("kek");
    let rewrapped = other.wrap(&t.kek, &Aad::new("kek")).expect("wrap");
    assert!(!store
        .replace_kek(&t.id, 1, &rewrapped, &rewrapped)
        .expect("stale expected"));
    assert!(store
        .replace_kek(&t.id, 1, &stored, &rewrapped)
        .expect("replace"));
    assert_eq!(
        store.kek(&t.id, 1).expect("kek").expect("v1").encode(),
        rewrapped.encode()
    );
    assert!(!store
        .replace_kek(&t.id, 7, &stored, &rewrapped)
        .expect("absent version"));
    assert_eq!(
        store.kek(&t.id, 7).expect("kek"),
        None,
        "never created by a replace"
    );
}

pub fn a_key_update_applies_atomically_and_none_changes_nothing(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    assert!(store
        .update_tenant_keys(&t.id, &|_, _| None)
        .expect("no-op")
        .is_none());
    let kek2 = Key::<Kek>::generate(2).expect("kek");
    let wrapped2 = kek2
        .wrap(&kek2.duplicate(), &Aad::new("kek"))
        .expect("wrap");
    let change = store
        .update_tenant_keys(&t.id, &|record, state| {
            let mut tenant = record.clone();
            tenant.kek_version = 2;
            let mut state: TenantKeyState = state.clone();
            state
                .versions
                .push(pii_vault::storage::KeyVersionInfo::new(2, Timestamp(5)));
            let mut change = KeyChange::records(tenant, state);
            change.put_keks.push((2, wrapped2.clone()));
            change.delete_keks.push(1);
            change.mark_epoch = true;
            Some(change)
        })
        .expect("update")
        .expect("applied");
    assert_eq!(change.tenant.kek_version, 2);
    assert_eq!(
        store.tenant(&t.id).expect("tenant").expect("t").kek_version,
        2
    );
    let versions: Vec<u32> = store
        .keks(&t.id)
        .expect("keks")
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert_eq!(versions, [2]);
    let state = store.tenant_keys(&t.id).expect("state").expect("written");
    assert!(state.version(2).is_some());
    assert!(store
        .all_tenant_keys()
        .expect("all")
        .iter()
        .any(|(id, _)| id == &t.id));
    assert!(store
        .epoch_pending()
        .expect("pending")
        .iter()
        .any(|(id, n)| id == &t.id && *n >= 1));
    assert!(matches!(
        store.update_tenant_keys(&tenant_id("ghost"), &|_, _| None),
        Err(StoreError::NoTenant)
    ));
}

pub fn a_put_creates_the_subject_versions_fields_and_is_all_or_nothing(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    let s = subject_id("user-1");
    let rec = new_subject(&t);
    let first = store
        .put_fields(
            &t.id,
            &s,
            &write(
                &rec,
                vec![
                    sealed_field("email", Category::Account, b"a"),
                    sealed_field("city", Category::Profile, b"b"),
                ],
                10,
            ),
        )
        .expect("put");
    assert_eq!(first.len(), 2);
    assert!(first
        .iter()
        .all(|w| w.meta.version == 1 && w.previous.is_none()));
    let stored = store.subject(&t.id, &s).expect("subject").expect("created");
    assert!(stored.same_key(&rec));
    assert_ne!(stored.categories, 0, "categories recorded");

    let second = store
        .put_fields(
            &t.id,
            &s,
            &write(
                &rec,
                vec![sealed_field("email", Category::Account, b"c")],
                20,
            ),
        )
        .expect("overwrite");
    assert_eq!(second[0].meta.version, 2);
    assert_eq!(second[0].meta.created_at, Timestamp(10), "created_at kept");
    assert_eq!(second[0].meta.updated_at, Timestamp(20));
    let previous = second[0].previous.as_ref().expect("previous version");
    assert_eq!(previous.version, 1);
    assert_eq!(previous.updated_by, "spiffe://test/writer");

    // A write sealed for another DEK than the stored one changes nothing.
    let stranger = new_subject(&t);
    assert!(matches!(
        store.put_fields(
            &t.id,
            &s,
            &write(
                &stranger,
                vec![
                    sealed_field("email", Category::Account, b"x"),
                    sealed_field("phone", Category::Account, b"y")
                ],
                30
            )
        ),
        Err(StoreError::Conflict)
    ));
    assert_eq!(field_names(store.as_ref(), &t, &s), ["city", "email"]);
    let email = store
        .field(&t.id, &s, &name("email"))
        .expect("field")
        .expect("email");
    assert_eq!(email.meta.version, 2, "the refused write left no trace");

    assert!(matches!(
        store.put_fields(
            &tenant_id("ghost"),
            &s,
            &write(
                &rec,
                vec![sealed_field("email", Category::Account, b"a")],
                1
            )
        ),
        Err(StoreError::NoTenant)
    ));
}

pub fn a_new_subject_needs_its_dek_wrapped_under_the_current_kek(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    let old = Key::<Kek>::generate(9).expect("kek");
    let mut rec = new_subject(&t);
    rec.wrapped_dek = old
        .wrap(&Key::<Dek>::generate(1).expect("dek"), &Aad::new("dek"))
        .expect("wrap");
    assert!(matches!(
        store.put_fields(
            &t.id,
            &subject_id("u"),
            &write(&rec, vec![sealed_field("n", Category::Usage, b"v")], 1)
        ),
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        store.subject(&t.id, &subject_id("u")).expect("subject"),
        None
    );
}

pub fn field_pages_cover_one_subject_in_name_order(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    // Neighbouring ids, so a page that ran past its subject would show it.
    let ids = ["u", "u1", "u10", "v"];
    for id in ids {
        let rec = new_subject(&t);
        let fields = (0..7)
            .map(|i| sealed_field(&format!("f{i}"), Category::Usage, id.as_bytes()))
            .collect();
        store
            .put_fields(&t.id, &subject_id(id), &write(&rec, fields, 1))
            .expect("put");
    }
    for id in ids {
        let s = subject_id(id);
        let mut names = Vec::new();
        let mut after: Option<FieldName> = None;
        loop {
            let page = store
                .fields_page(&t.id, &s, after.as_ref(), 3)
                .expect("page");
            assert!(page.len() <= 3);
            let Some(last) = page.last() else { break };
            after = Some(last.meta.name.clone());
            names.extend(page.iter().map(|f| f.meta.name.as_str().to_owned()));
        }
        let expected: Vec<String> = (0..7).map(|i| format!("f{i}")).collect();
        assert_eq!(names, expected, "subject {id}");
        assert_eq!(field_names(store.as_ref(), &t, &s), expected);
    }
}

pub fn subject_pages_visit_every_subject_once(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    let mut expected = BTreeSet::new();
    for i in 0..23 {
        let id = format!("s{}", i * 7 % 23);
        let rec = new_subject(&t);
        store
            .put_fields(
                &t.id,
                &subject_id(&id),
                &write(&rec, vec![sealed_field("n", Category::Usage, b"v")], 1),
            )
            .expect("put");
        expected.insert(id);
    }
    let mut ids = Vec::new();
    let mut after: Option<SubjectId> = None;
    loop {
        let page = store.subjects(&t.id, after.as_ref(), 5).expect("page");
        let Some(last) = page.last() else { break };
        after = Some(last.clone());
        ids.extend(page.into_iter().map(|s| s.as_str().to_owned()));
    }
    assert_eq!(ids.len(), expected.len(), "no subject twice");
    assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), expected);

    let mut records = 0;
    let mut after: Option<SubjectId> = None;
    loop {
        let page = store
            .subject_records(&t.id, after.as_ref(), 4)
            .expect("page");
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        records += page.len();
    }
    assert_eq!(records, expected.len());
}

pub fn subject_updates_see_the_current_kek_and_skip_missing_subjects(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    let s = subject_id("u");
    let rec = new_subject(&t);
    store
        .put_fields(
            &t.id,
            &s,
            &write(&rec, vec![sealed_field("n", Category::Usage, b"v")], 1),
        )
        .expect("put");
    let changed = store
        .update_subjects(
            &t.id,
            &[s.clone(), subject_id("absent")],
            &|_, stored, current| {
                assert_eq!(current, 1, "the tenant's current KEK version");
                let mut next = stored.clone();
                next.dek_reserved = 42;
                Some(next)
            },
        )
        .expect("update");
    assert_eq!(changed, [true, false]);
    assert_eq!(
        store
            .subject(&t.id, &s)
            .expect("get")
            .expect("u")
            .dek_reserved,
        42
    );
}

pub fn deleting_fields_counts_what_existed_and_drops_their_index_entries(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    let s = subject_id("u");
    let rec = new_subject(&t);
    let mut email = sealed_field("email", Category::Account, b"a");
    email.index_entry = b"idx/email/aa".to_vec();
    store
        .put_fields(
            &t.id,
            &s,
            &write(
                &rec,
                vec![email, sealed_field("city", Category::Profile, b"b")],
                1,
            ),
        )
        .expect("put");
    assert_eq!(store.index_scan(&t.id, b"idx/").expect("scan").len(), 1);
    let n = store
        .delete_fields(&t.id, &s, &[name("email"), name("nope")])
        .expect("delete");
    assert_eq!(n, 1);
    assert_eq!(field_names(store.as_ref(), &t, &s), ["city"]);
    assert!(store.index_scan(&t.id, b"idx/").expect("scan").is_empty());
    assert!(store
        .subject(&t.id, &s)
        .expect("get")
        .expect("u")
        .index_entries
        .is_empty());
}

pub fn index_entries_follow_rewrites_and_reindexing(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    let s = subject_id("u");
    let rec = new_subject(&t);
    let mut email = sealed_field("email", Category::Account, b"a");
    email.index_entry = b"v1/email/aa".to_vec();
    store
        .put_fields(&t.id, &s, &write(&rec, vec![email], 1))
        .expect("put");
    let mut email = sealed_field("email", Category::Account, b"b");
    email.index_entry = b"v1/email/bb".to_vec();
    store
        .put_fields(&t.id, &s, &write(&rec, vec![email], 2))
        .expect("rewrite");
    assert_eq!(
        store.index_scan(&t.id, b"v1/").expect("scan"),
        [b"v1/email/bb".to_vec()],
        "the replaced value's entry is gone"
    );
    store
        .reindex_field(&t.id, &s, &name("email"), b"v2/email/bb")
        .expect("reindex");
    assert!(store.index_scan(&t.id, b"v1/").expect("scan").is_empty());
    assert_eq!(store.index_scan(&t.id, b"v2/").expect("scan").len(), 1);
    assert_eq!(
        store
            .field(&t.id, &s, &name("email"))
            .expect("get")
            .expect("email")
            .index_entry,
        b"v2/email/bb"
    );
}

pub fn expired_fields_are_listed_and_deleted_only_if_not_rewritten(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    let s = subject_id("u");
    let rec = new_subject(&t);
    let mut a = sealed_field("a", Category::Usage, b"1");
    a.expires_at = Timestamp(100);
    let mut b = sealed_field("b", Category::Usage, b"2");
    b.expires_at = Timestamp(300);
    store
        .put_fields(&t.id, &s, &write(&rec, vec![a, b], 1))
        .expect("put");
    assert!(store
        .expired(&t.id, Timestamp(99), 10)
        .expect("none")
        .is_empty());
    let due = store.expired(&t.id, Timestamp(100), 10).expect("due");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].1.as_str(), "a");
    assert_eq!(due[0].2, Timestamp(100));

    // Rewritten with a later expiry before the sweep: the stale entry deletes nothing.
    let mut a2 = sealed_field("a", Category::Usage, b"3");
    a2.expires_at = Timestamp(500);
    store
        .put_fields(&t.id, &s, &write(&rec, vec![a2], 2))
        .expect("rewrite");
    assert!(!store
        .delete_expired(&t.id, &s, &name("a"), Timestamp(100))
        .expect("stale"));
    assert!(store.field(&t.id, &s, &name("a")).expect("get").is_some());
    assert!(store
        .delete_expired(&t.id, &s, &name("b"), Timestamp(300))
        .expect("due"));
    assert_eq!(field_names(store.as_ref(), &t, &s), ["a"]);
    assert_eq!(
        store.expired(&t.id, Timestamp(400), 10).expect("due").len(),
        0
    );
}

pub fn subject_state_defaults_and_is_replaced(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    let s = subject_id("u");
    assert_eq!(
        store.subject_state(&t.id, &s).expect("state"),
        StateRecord::default()
    );
    let state = record(SubjectState {
        consents: Vec::new(),
        restricted_since: Some(Timestamp(77)),
    });
    let set = |_: &StateRecord| Ok(Some(state.clone()));
    assert_eq!(
        store.update_subject_state(&t.id, &s, &set).expect("set"),
        state
    );
    assert_eq!(store.subject_state(&t.id, &s).expect("state"), state);
    let keep = |_: &StateRecord| Ok(None);
    assert_eq!(
        store.update_subject_state(&t.id, &s, &keep).expect("keep"),
        state
    );
}

/// A write may replace a stored field only if its `may_replace` mask has the stored
/// field's category; otherwise nothing of the write is stored.
pub fn an_overwrite_needs_the_stored_fields_category(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    let s = subject_id("u");
    let rec = new_subject(&t);
    store
        .put_fields(
            &t.id,
            &s,
            &write(&rec, vec![sealed_field("card", Category::Payment, b"p")], 1),
        )
        .expect("put");
    let mut overwrite = write(
        &rec,
        vec![
            sealed_field("nick", Category::Profile, b"n"),
            sealed_field("card", Category::Profile, b"x"),
        ],
        2,
    );
    overwrite.may_replace = category_bit(Category::Profile);
    match store.put_fields(&t.id, &s, &overwrite) {
        Err(StoreError::NotGranted { field, category }) => {
            assert_eq!((field.as_str(), category), ("card", Category::Payment));
        }
        other => panic!("overwrite of a payment field by a profile writer: {other:?}"),
    }
    let card = store
        .field(&t.id, &s, &name("card"))
        .expect("get")
        .expect("kept");
    assert_eq!(
        (card.meta.category, card.meta.version),
        (Category::Payment, 1)
    );
    assert_eq!(
        store.field(&t.id, &s, &name("nick")).expect("get"),
        None,
        "all or nothing"
    );
    overwrite.may_replace |= category_bit(Category::Payment);
    store.put_fields(&t.id, &s, &overwrite).expect("granted");
}

/// A field's expected version is checked inside the put's transaction: a put expecting
/// another version stores nothing of itself, one expecting the stored version goes through,
/// and 0 means "not there yet".
pub fn a_put_expecting_another_version_stores_nothing(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    let s = subject_id("u");
    let rec = new_subject(&t);
    let expecting = |field: &str, value: &[u8], version: u64| SealedField {
        expected: Some(version),
        ..sealed_field(field, Category::Account, value)
    };
    store
        .put_fields(
            &t.id,
            &s,
            &write(&rec, vec![expecting("email", b"a", 0)], 1),
        )
        .expect("new field, expected absent");
    let stale = write(
        &rec,
        vec![expecting("nick", b"n", 0), expecting("email", b"b", 7)],
        2,
    );
    match store.put_fields(&t.id, &s, &stale) {
        Err(StoreError::VersionMismatch { field, stored }) => {
            assert_eq!((field.as_str(), stored), ("email", 1));
        }
        other => panic!("a put expecting version 7 of a version-1 field: {other:?}"),
    }
    assert_eq!(
        store.field(&t.id, &s, &name("nick")).expect("get"),
        None,
        "all or nothing"
    );
    let again = write(&rec, vec![expecting("email", b"c", 0)], 3);
    assert!(matches!(
        store.put_fields(&t.id, &s, &again),
        Err(StoreError::VersionMismatch { stored: 1, .. })
    ));
    store
        .put_fields(
            &t.id,
            &s,
            &write(&rec, vec![expecting("email", b"d", 1)], 4),
        )
        .expect("expected the stored version");
    let email = store
        .field(&t.id, &s, &name("email"))
        .expect("get")
        .expect("there");
    assert_eq!(email.meta.version, 2);
}

/// A write under an idempotency key, scope `scope` (one byte repeated), fingerprint
/// `fingerprint`, its record lasting until `expires`.
fn once(
    rec: &SubjectRecord, fields: Vec<SealedField>, now: u64, scope: u8, fingerprint: u8,
    expires: u64,
) -> SubjectWrite {
    SubjectWrite {
        idempotency: Some(Idempotency {
            scope: [scope; 32],
            fingerprint: [fingerprint; 32],
            expires_at: Timestamp(expires),
        }),
        ..write(rec, fields, now)
    }
}

/// The idempotency record of a put is stored in the put's transaction: the same request
/// again gets the first answer and writes nothing; another request under the key is
/// refused and writes nothing; another scope is another key; an expired record answers
/// nothing, is replaced by the next write, and is pruned; an erased subject's records go
/// with its purge.
pub fn an_idempotent_put_answers_a_resend_and_its_record_expires(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    let s = subject_id("u");
    let rec = new_subject(&t);
    let email = |v: &[u8]| sealed_field("email", Category::Account, v);
    let version = |name_: &str| {
        store
            .field(&t.id, &s, &name(name_))
            .expect("get")
            .map(|f| f.meta.version)
    };

    let first = store
        .put_fields(&t.id, &s, &once(&rec, vec![email(b"a")], 1, 1, 9, 100))
        .expect("first");
    assert!(!first[0].replayed);
    let again = store
        .put_fields(&t.id, &s, &once(&rec, vec![email(b"a")], 2, 1, 9, 100))
        .expect("sent again");
    assert!(again[0].replayed, "{again:?}");
    assert_eq!(again[0].meta, first[0].meta, "the first answer");
    assert_eq!(version("email"), Some(1), "nothing written again");

    let other = once(
        &rec,
        vec![sealed_field("nick", Category::Profile, b"n"), email(b"b")],
        3,
        1,
        8,
        100,
    );
    assert!(matches!(
        store.put_fields(&t.id, &s, &other),
        Err(StoreError::IdempotencyKeyReused)
    ));
    assert_eq!(version("nick"), None, "a refused request writes nothing");
    assert_eq!(version("email"), Some(1));

    store
        .put_fields(&t.id, &s, &once(&rec, vec![email(b"a")], 4, 2, 9, 100))
        .expect("another scope");
    assert_eq!(version("email"), Some(2), "another scope is another key");

    // Expired at 100: answers nothing, the write happens, its record replaces the old.
    let late = store
        .put_fields(&t.id, &s, &once(&rec, vec![email(b"c")], 150, 1, 7, 400))
        .expect("after expiry");
    assert!(!late[0].replayed);
    assert_eq!(version("email"), Some(3));
    assert_eq!(
        store
            .prune_idempotency(&t.id, Timestamp(99), 10)
            .expect("prune"),
        0,
        "nothing expired yet"
    );
    assert_eq!(
        store
            .prune_idempotency(&t.id, Timestamp(300), 10)
            .expect("prune"),
        1,
        "scope 2 expired at 100; scope 1 was replaced, lasting until 400"
    );
    let replayed = store
        .put_fields(&t.id, &s, &once(&rec, vec![email(b"c")], 301, 1, 7, 400))
        .expect("the replacing record answers");
    assert!(replayed[0].replayed);
    assert_eq!(version("email"), Some(3));
    store
        .put_fields(&t.id, &s, &once(&rec, vec![email(b"a")], 302, 2, 9, 400))
        .expect("scope 2 was pruned: written again");
    assert_eq!(version("email"), Some(4));

    // Erasure: the purge drops the subject's records (nothing is left to prune).
    let Erasure::Erased(_) = store
        .erase_subject(&t.id, &s, &tombstone(500), &unsealed)
        .expect("erase")
    else {
        panic!("first erasure erases");
    };
    assert!(matches!(
        store.put_fields(&t.id, &s, &once(&rec, vec![email(b"c")], 501, 1, 7, 400)),
        Err(StoreError::Erased)
    ));
    while store.purge_fields(&t.id, &s, 10).expect("purge") > 0 {}
    assert_eq!(
        store
            .prune_idempotency(&t.id, Timestamp(u64::MAX / 2), 10)
            .expect("prune"),
        0,
        "the erased subject's idempotency records went with its purge"
    );
}

/// `update_subject_state` is a compare-and-swap: concurrent changes of different parts of
/// one subject's state all survive, and an erased subject's state is never written again.
pub fn subject_state_changes_are_atomic(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    let s = subject_id("u");
    let rounds = 50;
    std::thread::scope(|scope| {
        for writer in 0..4u64 {
            let (store, t, s) = (store.clone(), &t, &s);
            scope.spawn(move || {
                for i in 0..rounds {
                    let purpose = Purpose::parse(&format!("p{writer}x{i}")).expect("purpose");
                    let add = |stored: &StateRecord| {
                        let mut next = stored.state.clone();
                        next.set_consent(Consent {
                            purpose: purpose.clone(),
                            granted: true,
                            at: Timestamp(i),
                            source: "test".into(),
                        });
                        Ok(Some(record(next)))
                    };
                    store.update_subject_state(&t.id, s, &add).expect("update");
                }
            });
        }
    });
    let state = store.subject_state(&t.id, &s).expect("state").state;
    assert_eq!(state.consents.len(), 4 * rounds as usize, "no change lost");

    let rec = new_subject(&t);
    store
        .put_fields(
            &t.id,
            &s,
            &write(&rec, vec![sealed_field("a", Category::Usage, b"v")], 1),
        )
        .expect("put");
    store
        .erase_subject(&t.id, &s, &tombstone(5), &unsealed)
        .expect("erase");
    let restrict = |stored: &StateRecord| {
        let mut next = stored.state.clone();
        next.restricted_since = Some(Timestamp(9));
        Ok(Some(record(next)))
    };
    assert!(matches!(
        store.update_subject_state(&t.id, &s, &restrict),
        Err(StoreError::Erased)
    ));
    assert_eq!(
        store.subject_state(&t.id, &s).expect("state"),
        StateRecord::default()
    );
}

pub fn erasure_removes_the_key_once_and_blocks_rewrites(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    let s = subject_id("u");
    let rec = new_subject(&t);
    let mut email = sealed_field("email", Category::Account, b"a");
    email.index_entry = b"idx/email/aa".to_vec();
    let fields = (0..5)
        .map(|i| sealed_field(&format!("f{i}"), Category::Usage, b"v"))
        .chain([email])
        .collect();
    store
        .put_fields(&t.id, &s, &write(&rec, fields, 1))
        .expect("put");
    let restrict = |_: &StateRecord| {
        Ok(Some(record(SubjectState {
            consents: Vec::new(),
            restricted_since: Some(Timestamp(3)),
        })))
    };
    store
        .update_subject_state(&t.id, &s, &restrict)
        .expect("state");

    let Erasure::Erased(written) = store
        .erase_subject(&t.id, &s, &tombstone(50), &unsealed)
        .expect("erase")
    else {
        panic!("first erasure erases");
    };
    assert_ne!(
        written.categories, 0,
        "the receipt's categories come from the record"
    );
    assert_eq!(
        written.retained_until,
        Timestamp(0),
        "no shadow, no retention"
    );
    assert_eq!(
        store.subject(&t.id, &s).expect("get"),
        None,
        "the DEK is gone"
    );
    assert!(store.index_scan(&t.id, b"idx/").expect("scan").is_empty());
    assert_eq!(
        store.subject_state(&t.id, &s).expect("state"),
        StateRecord::default()
    );
    assert_eq!(
        store.tombstone(&t.id, &s).expect("tombstone"),
        Some(written.clone())
    );
    assert!(store
        .epoch_pending()
        .expect("pending")
        .iter()
        .any(|(id, _)| id == &t.id));

    assert_eq!(
        store
            .erase_subject(&t.id, &s, &tombstone(60), &unsealed)
            .expect("again"),
        Erasure::AlreadyErased(written),
        "idempotent: the earlier tombstone"
    );
    assert_eq!(
        store
            .erase_subject(&t.id, &subject_id("never"), &tombstone(60), &unsealed)
            .expect("absent"),
        Erasure::NotFound
    );
    assert!(matches!(
        store.put_fields(
            &t.id,
            &s,
            &write(
                &new_subject(&t),
                vec![sealed_field("n", Category::Usage, b"v")],
                70
            )
        ),
        Err(StoreError::Erased)
    ));

    // Ciphertexts are purged in pages, then the tombstone says so.
    assert!(store
        .unpurged()
        .expect("unpurged")
        .contains(&(t.id.clone(), s.clone())));
    let mut purged = 0;
    loop {
        let n = store.purge_fields(&t.id, &s, 4).expect("purge");
        assert!(n <= 4);
        if n == 0 {
            break;
        }
        purged += n;
    }
    assert_eq!(purged, 6);
    assert!(store.fields(&t.id, &s).expect("fields").is_empty());
    assert!(store.tombstone(&t.id, &s).expect("t").expect("kept").purged);
    assert!(store.unpurged().expect("unpurged").is_empty());
}

pub fn erasing_a_subject_with_a_legal_shadow_schedules_the_shadow(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    let s = subject_id("u");
    let shadow = s.legal_shadow();
    for (id, category) in [(&s, Category::Account), (&shadow, Category::Payment)] {
        store
            .put_fields(
                &t.id,
                id,
                &write(&new_subject(&t), vec![sealed_field("f", category, b"v")], 1),
            )
            .expect("put");
    }
    let until = tombstone(50).retained_until;
    let Erasure::Erased(written) = store
        .erase_subject(&t.id, &s, &tombstone(50), &unsealed)
        .expect("erase")
    else {
        panic!("erased");
    };
    assert_eq!(written.retained_until, until);
    assert_ne!(written.retained_categories, 0);
    assert!(
        store.subject(&t.id, &shadow).expect("shadow").is_some(),
        "kept until due"
    );
    assert!(store
        .legal_holds_due(Timestamp(until.0 - 1))
        .expect("due")
        .is_empty());
    let due = store.legal_holds_due(until).expect("due");
    assert_eq!(due, [(t.id.clone(), shadow.clone(), until)]);
    store
        .clear_legal_hold(&t.id, &shadow, until)
        .expect("clear");
    assert!(store.legal_holds_due(until).expect("due").is_empty());
}

/// An erasure drops the blind-index entries of the subject's legal shadow too (its records
/// stay, findable by no value), and a later re-index leaves them unindexed; clearing a
/// tenant's index deletes its entries and no other tenant's.
pub fn erasure_unindexes_the_shadow_and_a_cleared_index_is_empty(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    let other = create_tenant(store.as_ref(), "other");
    let s = subject_id("u");
    let shadow = s.legal_shadow();
    let indexed = |entry: &[u8], category| SealedField {
        index_entry: entry.to_vec(),
        ..sealed_field("email", category, b"v")
    };
    for (id, entry, category) in [
        (&s, b"idx/live".as_slice(), Category::Account),
        (&shadow, b"idx/shadow".as_slice(), Category::Payment),
    ] {
        store
            .put_fields(
                &t.id,
                id,
                &write(&new_subject(&t), vec![indexed(entry, category)], 1),
            )
            .expect("put");
    }
    store
        .put_fields(
            &other.id,
            &s,
            &write(
                &new_subject(&other),
                vec![indexed(b"idx/o", Category::Account)],
                1,
            ),
        )
        .expect("put in other");
    assert_eq!(store.index_scan(&t.id, b"idx/").expect("scan").len(), 2);

    store
        .erase_subject(&t.id, &s, &tombstone(50), &unsealed)
        .expect("erase");
    assert!(
        store.index_scan(&t.id, b"idx/").expect("scan").is_empty(),
        "neither the subject's nor its shadow's entries are left"
    );
    let kept = store
        .field(&t.id, &shadow, &name("email"))
        .expect("get")
        .expect("the shadow's record stays for its duty");
    assert_eq!(kept.meta.version, 1);
    store
        .reindex_field(&t.id, &shadow, &name("email"), b"idx/shadow-2")
        .expect("reindex");
    assert!(
        store.index_scan(&t.id, b"idx/").expect("scan").is_empty(),
        "a re-index does not bring the shadow's entry back"
    );

    let live = subject_id("v");
    store
        .put_fields(
            &t.id,
            &live,
            &write(
                &new_subject(&t),
                vec![indexed(b"idx/v", Category::Account)],
                2,
            ),
        )
        .expect("put");
    assert_eq!(store.clear_index(&t.id).expect("clear"), 1);
    assert!(store.index_scan(&t.id, b"").expect("scan").is_empty());
    assert_eq!(
        store.index_scan(&other.id, b"idx/").expect("scan"),
        [b"idx/o".to_vec()],
        "another tenant's index is untouched"
    );
}

pub fn an_epoch_mark_is_cleared_only_if_no_erasure_came_after(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    for id in ["a", "b"] {
        store
            .put_fields(
                &t.id,
                &subject_id(id),
                &write(
                    &new_subject(&t),
                    vec![sealed_field("f", Category::Usage, b"v")],
                    1,
                ),
            )
            .expect("put");
    }
    store
        .erase_subject(&t.id, &subject_id("a"), &tombstone(5), &unsealed)
        .expect("erase a");
    let seen = store.epoch_pending().expect("pending")[0].1;
    store
        .erase_subject(&t.id, &subject_id("b"), &tombstone(6), &unsealed)
        .expect("erase b");
    store.clear_epoch_pending(&t.id, seen).expect("clear stale");
    let now = store.epoch_pending().expect("pending");
    assert_eq!(now.len(), 1, "a later erasure keeps the mark");
    store.clear_epoch_pending(&t.id, now[0].1).expect("clear");
    assert!(store.epoch_pending().expect("pending").is_empty());
}

pub fn audit_events_append_scan_and_prune_in_sequence(store: Arc<dyn Store>) {
    assert_eq!(store.audit_last().expect("last"), None);
    let batch: Vec<(u64, Vec<u8>)> = (1..=10).map(|i| (i, vec![i as u8; 3])).collect();
    store.audit_append(&batch[..6], b"head-6").expect("append");
    store.audit_append(&batch[6..], b"head-10").expect("append");
    assert_eq!(store.audit_last().expect("last"), Some((10, vec![10; 3])));
    assert_eq!(
        store.audit_marks().expect("marks").head.as_deref(),
        Some(&b"head-10"[..])
    );
    let page = store.audit_scan(3, 4).expect("scan");
    assert_eq!(
        page.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [4, 5, 6, 7]
    );
    assert_eq!(page[0].1, vec![4; 3]);
    assert_eq!(store.audit_prune(5, b"checkpoint-5").expect("prune"), 5);
    let marks = store.audit_marks().expect("marks");
    assert_eq!(marks.checkpoint.as_deref(), Some(&b"checkpoint-5"[..]));
    let rest = store.audit_scan(0, 100).expect("scan");
    assert_eq!(
        rest.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [6, 7, 8, 9, 10]
    );
    store.flush().expect("flush");
}

pub fn tenants_are_isolated(store: Arc<dyn Store>) {
    let a = create_tenant(store.as_ref(), "acme");
    let b = create_tenant(store.as_ref(), "bcme");
    let s = subject_id("same-id");
    store
        .put_fields(
            &a.id,
            &s,
            &write(
                &new_subject(&a),
                vec![sealed_field("x", Category::Usage, b"a")],
                1,
            ),
        )
        .expect("put a");
    assert_eq!(store.subject(&b.id, &s).expect("b"), None);
    assert!(store.fields(&b.id, &s).expect("b").is_empty());
    store
        .put_fields(
            &b.id,
            &s,
            &write(
                &new_subject(&b),
                vec![sealed_field("y", Category::Usage, b"b")],
                1,
            ),
        )
        .expect("put b");
    store
        .erase_subject(&a.id, &s, &tombstone(9), &unsealed)
        .expect("erase in a");
    assert_eq!(field_names(store.as_ref(), &b, &s), ["y"], "b untouched");
    assert!(store.tombstone(&b.id, &s).expect("b").is_none());
    assert_eq!(store.subjects(&b.id, None, 10).expect("b"), [s]);
}

/// One `#[test]` per check, on stores made by `$open`: a function returning a fresh store
/// and a guard that cleans up after it (a temporary directory, a scratch schema) when the
/// check is done, or `None` when the backend cannot run here.
macro_rules! conformance_tests {
    ($open:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                // `None`: the backend is not available here (the reason was printed).
                let Some((store, _guard)) = ($open)() else { return };
                // The guard outlives the check, which drops the store.
                crate::suite::$check(store);
            }
        )*
    };
    ($open:expr) => {
        conformance_tests!($open;
            metadata_is_set_once_swapped_conditionally_and_scanned_by_prefix,
            tenants_are_created_once_and_paged_in_id_order,
            wrapped_keks_are_replaced_only_if_unchanged,
            a_key_update_applies_atomically_and_none_changes_nothing,
            a_put_creates_the_subject_versions_fields_and_is_all_or_nothing,
            a_new_subject_needs_its_dek_wrapped_under_the_current_kek,
            field_pages_cover_one_subject_in_name_order,
            subject_pages_visit_every_subject_once,
            subject_updates_see_the_current_kek_and_skip_missing_subjects,
            deleting_fields_counts_what_existed_and_drops_their_index_entries,
            index_entries_follow_rewrites_and_reindexing,
            expired_fields_are_listed_and_deleted_only_if_not_rewritten,
            subject_state_defaults_and_is_replaced,
            subject_state_changes_are_atomic,
            the_state_anchor_moves_with_the_state_and_seals_the_tombstone,
            legacy_tombstones_are_sealed_once_page_by_page,
            an_overwrite_needs_the_stored_fields_category,
            a_put_expecting_another_version_stores_nothing,
            an_idempotent_put_answers_a_resend_and_its_record_expires,
            erasure_removes_the_key_once_and_blocks_rewrites,
            erasing_a_subject_with_a_legal_shadow_schedules_the_shadow,
            erasure_unindexes_the_shadow_and_a_cleared_index_is_empty,
            an_epoch_mark_is_cleared_only_if_no_erasure_came_after,
            audit_events_append_scan_and_prune_in_sequence,
            tenants_are_isolated,
        );
    };
}
