//! AES-256-GCM seal and open: ring against the aes-gcm crate (the vault's own
//! `crypto::aead_seal` / `aead_open`), at field-sized and larger inputs.
//!
//! Run (about two minutes on two cores):
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-a cargo bench --bench aead -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! Without the CPU's AES and carry-less-multiply instructions: aes-gcm picks AES-NI and
//! CLMUL at run time unless its `aes` and `polyval` dependencies are built with their
//! force-soft cfgs (names as in aes 0.8 `src/lib.rs` and polyval 0.6 `src/backend.rs`):
//!
//! ```text
//! RUSTFLAGS="--cfg aes_force_soft --cfg polyval_force_soft" \
//!   CARGO_TARGET_DIR=/work/target-a-soft cargo bench --bench aead -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! (a separate target directory keeps the normal build from being thrown away). ring has
//! no such switch: it always uses the hardware instructions when the CPU has them, so its
//! figures do not change in that run.
//!
//! Variants, each with throughput in plaintext bytes:
//! - `aes-gcm`: `aead_seal` / `aead_open`, which expand the key on every call, exactly as
//!   `Key::seal` / `Key::open` do;
//! - `ring`: `LessSafeKey` built from the key bytes on every call, the like-for-like
//!   replacement for the above;
//! - `ring-prekeyed`: one `LessSafeKey` reused, the floor a key cache could reach.
//!
//! The key, nonce and data are fixed dummy bytes: a benchmark needs no secrecy, and the
//! same nonce is reused only because nothing here is ever stored or sent.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pii_vault::crypto::{aead_open, aead_seal, KEY_LEN, NONCE_LEN};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

/// 32 B is a typical field (an email), 64 KiB the server's default value limit.
const SIZES: [usize; 4] = [32, 256, 4 * 1024, 64 * 1024];
const KEY: [u8; KEY_LEN] = [0x42; KEY_LEN];
const NONCE: [u8; NONCE_LEN] = [0x24; NONCE_LEN];
/// About the length of a field's context (labels, tenant, subject, field name, version).
const AAD: [u8; 48] = [0x5a; 48];

fn ring_key(key: &[u8; KEY_LEN]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key"))
}

fn ring_seal(key: &LessSafeKey, plaintext: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(plaintext.len() + AES_256_GCM.tag_len());
    buf.extend_from_slice(plaintext);
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(NONCE),
        Aad::from(&AAD[..]),
        &mut buf,
    )
    .expect("ring seal");
    buf
}

fn ring_open(key: &LessSafeKey, sealed: &[u8]) -> usize {
    let mut buf = sealed.to_vec();
    key.open_in_place(
        Nonce::assume_unique_for_key(NONCE),
        Aad::from(&AAD[..]),
        &mut buf,
    )
    .expect("ring open")
    .len()
}

fn seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal");
    let prekeyed = ring_key(&KEY);
    for size in SIZES {
        let plaintext = vec![0xa5u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("aes-gcm", size), &plaintext, |b, pt| {
            b.iter(|| aead_seal(black_box(&KEY), &NONCE, &AAD, black_box(pt)).expect("seal"))
        });
        group.bench_with_input(BenchmarkId::new("ring", size), &plaintext, |b, pt| {
            b.iter(|| ring_seal(&ring_key(black_box(&KEY)), black_box(pt)))
        });
        group.bench_with_input(
            BenchmarkId::new("ring-prekeyed", size),
            &plaintext,
            |b, pt| b.iter(|| ring_seal(&prekeyed, black_box(pt))),
        );
    }
    group.finish();
}

fn open(c: &mut Criterion) {
    let mut group = c.benchmark_group("open");
    let prekeyed = ring_key(&KEY);
    for size in SIZES {
        let sealed = aead_seal(&KEY, &NONCE, &AAD, &vec![0xa5u8; size]).expect("seal");
        // Both libraries must agree on the bytes, or the comparison means nothing.
        assert!(
            ring_seal(&prekeyed, &vec![0xa5u8; size]) == sealed,
            "ring and aes-gcm disagree at {size} bytes"
        );
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("aes-gcm", size), &sealed, |b, ct| {
            b.iter(|| aead_open(black_box(&KEY), &NONCE, &AAD, black_box(ct)).expect("open"))
        });
        group.bench_with_input(BenchmarkId::new("ring", size), &sealed, |b, ct| {
            b.iter(|| ring_open(&ring_key(black_box(&KEY)), black_box(ct)))
        });
        group.bench_with_input(BenchmarkId::new("ring-prekeyed", size), &sealed, |b, ct| {
            b.iter(|| ring_open(&prekeyed, black_box(ct)))
        });
    }
    group.finish();
}

criterion_group!(benches, seal, open);
criterion_main!(benches);
