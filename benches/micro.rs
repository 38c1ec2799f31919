//! Micro-benchmarks of the steps under one put or get: wrapping and unwrapping a subject's
//! DEK under its tenant KEK, sealing and opening one field value under the DEK, and
//! encoding and decoding the stored subject and field records.
//!
//! Run (about a minute on two cores):
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-a cargo bench --bench micro -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! Keys are fresh random ones and values are dummy bytes; nothing secret is printed.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pii_vault::crypto::{Aad, Dek, Kek, Key};
use pii_vault::domain::{Category, FieldMeta, FieldName, Timestamp};
use pii_vault::storage::{FieldRecord, SubjectRecord};

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

criterion_group!(benches, key_wrap, field_crypto, records);
criterion_main!(benches);
