//! Micro-benchmarks of the steps under one put or get: wrapping and unwrapping a subject's
//! DEK under its tenant KEK, sealing and opening one field value under the DEK, encoding
//! and decoding the stored subject and field records, sealing (MAC chain link), encoding
//! and verifying audit events, and getting a subject's DEK with and without the cache.
//!
//! Run (about two minutes on two cores):
//!
//! ```text
//! cargo bench --bench micro -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! Keys are fresh random ones and values are dummy bytes; nothing secret is printed.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pii_vault::audit::{verify, AuditEvent, EventDraft, Operation, Outcome};
use pii_vault::crypto::{Aad, Audit, Dek, Kek, Key, MAC_LEN};
use pii_vault::domain::{Category, FieldMeta, FieldName, SubjectId, TenantId, Timestamp};
use pii_vault::keyring::{Keyring, RootKeys};
use pii_vault::storage::{FieldRecord, SledStore, Store, SubjectRecord, SubjectWrite};

/// The context a wrapped DEK is bound to, shaped like the keyring's.
fn dek_aad() -> Aad {
    Aad::new("subject-dek")
        .with(b"acme-eu-1")
        .with(b"user:42@acme.example")
}

/// The context a field value is bound to, shaped like the service's.
fn field_aad() -> Aad {
    Aad::new("field")
        .with(b"acme-eu-1")
        .with(b"user:42@acme.example")
        .with(b"email")
        .with(&[Category::Account.code(), 1])
}

fn key_wrap(c: &mut Criterion) {
    let kek: Key<Kek> = Key::generate(1).expect("rng");
    let dek: Key<Dek> = Key::generate(1).expect("rng");
    let aad = dek_aad();
    let wrapped = kek.wrap(&dek, &aad).expect("wrap");
    let mut group = c.benchmark_group("dek");
    group.bench_function("wrap", |b| {
        b.iter(|| kek.wrap(black_box(&dek), &aad).expect("wrap"))
    });
    group.bench_function("unwrap", |b| {
        b.iter(|| {
            kek.unwrap_key::<Dek>(black_box(&wrapped), 1, &aad)
                .expect("unwrap")
        })
    });
    group.finish();
}

fn field_crypto(c: &mut Criterion) {
    let dek: Key<Dek> = Key::generate(1).expect("rng");
    let aad = field_aad();
    // A 32-byte value, about an email address.
    let value = [b'x'; 32];
    let sealed = dek.seal(&value, &aad).expect("seal");
    let mut group = c.benchmark_group("field");
    group.throughput(Throughput::Bytes(value.len() as u64));
    group.bench_function("seal_32B", |b| {
        b.iter(|| dek.seal(black_box(&value), &aad).expect("seal"))
    });
    group.bench_function("open_32B", |b| {
        b.iter(|| dek.open(black_box(&sealed), &aad).expect("open"))
    });
    group.finish();
}

fn records(c: &mut Criterion) {
    let kek: Key<Kek> = Key::generate(1).expect("rng");
    let dek: Key<Dek> = Key::generate(1).expect("rng");
    let subject = SubjectRecord {
        created_at: Timestamp(1_700_000_000_000),
        dek_version: 1,
        wrapped_dek: kek.wrap(&dek, &dek_aad()).expect("wrap"),
        categories: 0b110,
        index_entries: vec![vec![7u8; 60]],
        older_deks: Vec::new(),
        dek_reserved: 64,
        state_seq: 0,
    };
    let field = FieldRecord {
        meta: FieldMeta {
            name: FieldName::parse("email").expect("field name"),
            category: Category::Account,
            version: 3,
            created_at: Timestamp(1_700_000_000_000),
            updated_at: Timestamp(1_700_000_100_000),
            updated_by: "spiffe://bench/writer".into(),
        },
        kind: 1,
        sealed: dek.seal(&[b'x'; 32], &field_aad()).expect("seal"),
        index_entry: Vec::new(),
        expires_at: Timestamp(0),
    };
    let subject_bytes = subject.encode();
    let field_bytes = field.encode();
    let mut group = c.benchmark_group("record");
    group.bench_function("subject_encode", |b| {
        b.iter(|| black_box(&subject).encode())
    });
    group.bench_function("subject_decode", |b| {
        b.iter(|| SubjectRecord::decode(black_box(&subject_bytes)).expect("decode"))
    });
    group.bench_function("field_encode", |b| b.iter(|| black_box(&field).encode()));
    group.bench_function("field_decode", |b| {
        b.iter(|| FieldRecord::decode(black_box(&field_bytes)).expect("decode"))
    });
    group.finish();
}

/// An audit event shaped like a one-field read's.
fn read_event() -> EventDraft {
    EventDraft {
        time: Timestamp(1_700_000_000_000_000),
        request_id: "9f1c2a7e-3b4d-4c5e-8f60-718293a4b5c6".into(),
        caller: "spiffe://example.org/ns/prod/sa/accounts".into(),
        operation: Operation::GetFields,
        tenant: "acme-eu-1".into(),
        subject: "user:42@acme.example".into(),
        fields: vec!["email".into()],
        purpose: "support".into(),
        outcome: Outcome::Ok,
        reason: String::new(),
        rule: "accounts-read".into(),
    }
}

fn audit_chain(c: &mut Criterion) {
    let key: Key<Audit> = Key::generate(1).expect("rng");
    let draft = read_event();
    let prev = [7u8; MAC_LEN];
    let event = AuditEvent::seal(&key, 41, draft.clone(), prev);
    let bytes = event.encode();
    let mut group = c.benchmark_group("audit");
    // What the audit writer does per event: canonical encoding and the HMAC-SHA-256 chain
    // link over it and the previous event's MAC.
    group.bench_function("seal_event", |b| {
        b.iter(|| AuditEvent::seal(&key, 42, black_box(&draft).clone(), prev))
    });
    group.bench_function("encode_event", |b| b.iter(|| black_box(&event).encode()));
    group.bench_function("decode_event", |b| {
        b.iter(|| AuditEvent::decode(black_box(&bytes)).expect("decode"))
    });
    group.bench_function("check_mac", |b| {
        b.iter(|| assert!(black_box(&event).mac_is_valid(&key)))
    });
    // Verifying a stored chain of 1,000 events (decode, MAC, link), per event.
    let mut chain = Vec::new();
    let mut mac = [0u8; MAC_LEN];
    for seq in 1..=1000u64 {
        let e = AuditEvent::seal(&key, seq, draft.clone(), mac);
        mac = e.mac;
        chain.push((seq, e.encode()));
    }
    group.throughput(Throughput::Elements(chain.len() as u64));
    group.bench_function("verify_chain_1000", |b| {
        b.iter(|| {
            let events = chain.iter().cloned().map(Ok::<_, ()>);
            let report = verify(&key, None, None, events).expect("verify");
            assert!(report.is_ok());
        })
    });
    group.finish();
}

/// A keyring over a real store holding one tenant and one subject with a 32-byte field.
struct Hot {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    tenant: TenantId,
    subject: SubjectId,
}

fn hot_subject() -> (Hot, pii_vault::crypto::Sealed) {
    let dir = tempfile::TempDir::new().expect("dir");
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(&dir.path().join("store"), 16 << 20).expect("store"));
    let root_file = dir.path().join("root.key");
    RootKeys::generate()
        .expect("root")
        .save(&root_file)
        .expect("save root");
    let keys =
        Keyring::open(RootKeys::load(&root_file).expect("root"), store.clone()).expect("keys");
    let tenant = TenantId::parse("acme-eu-1").expect("id");
    let subject = SubjectId::parse("user-42").expect("id");
    let now = Timestamp(1_700_000_000_000_000);
    let record = keys
        .create_tenant(&tenant, now)
        .expect("tenant")
        .expect("new");
    let (dek, subject_record) = keys
        .new_subject(&record, &subject, now, 1)
        .expect("subject");
    let sealed = dek.seal(&[b'x'; 32], &field_aad()).expect("seal");
    let write = SubjectWrite {
        subject: subject_record,
        fields: Vec::new(),
        now,
        by: "bench".into(),
        may_replace: u32::MAX,
        idempotency: None,
    };
    store.put_fields(&tenant, &subject, &write).expect("store");
    let hot = Hot {
        dir,
        store,
        tenant,
        subject,
    };
    (hot, sealed)
}

fn dek_get(c: &mut Criterion) {
    let (hot, sealed) = hot_subject();
    // Two nodes' keyrings over the same store: one with the cache, one without. Each
    // iteration is the key part of a read after its subject record was loaded: get the
    // current DEK and open one 32-byte field with it.
    let record = hot
        .store
        .subject(&hot.tenant, &hot.subject)
        .expect("read")
        .expect("subject");
    let aad = field_aad();
    let mut group = c.benchmark_group("dek_get");
    for (name, capacity) in [("cached_open_32B", 1024), ("uncached_open_32B", 0)] {
        let root = RootKeys::load(&hot.dir.path().join("root.key")).expect("root");
        let keys = Keyring::open(root, hot.store.clone())
            .expect("keys")
            .with_dek_cache(capacity, None);
        group.bench_function(name, |b| {
            b.iter(|| {
                let dek = keys
                    .subject_dek(&hot.tenant, &hot.subject, black_box(&record))
                    .expect("dek");
                dek.open(black_box(&sealed), &aad).expect("open")
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    key_wrap,
    field_crypto,
    records,
    audit_chain,
    dek_get
);
criterion_main!(benches);
