//! AES-256-GCM seal and open: ring (the vault's primitive, `crypto::AeadKey`) against the
//! `aes-gcm` crate (the vault's primitive before), at field-sized and larger inputs, with
//! the key schedule built on every call and built once.
//!
//! Run (about three minutes on two cores):
//!
//! ```text
//! cargo bench --bench aead -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! Variants, each with throughput in plaintext bytes:
//! - `aes-gcm`: `Aes256Gcm::new` on every call, as the vault's `aead_seal` / `aead_open` did;
//! - `aes-gcm-prekeyed`: one `Aes256Gcm` reused;
//! - `ring`: `crypto::aead_seal` / `aead_open`, which prepare an `AeadKey` on every call;
//! - `ring-prekeyed`: one `crypto::AeadKey` reused: what `Key::seal` / `Key::open` do once a
//!   key has been used, and so what a read served from the DEK cache does.
//!
//! **CPU features.** Both libraries pick their AES-NI and carry-less-multiply code at run
//! time, so a default build already uses the hardware on a CPU that has it: `aes` 0.8 and
//! `polyval` 0.6 (under `aes-gcm`) ask `cpufeatures` once and fall back to constant-time
//! software otherwise; ring asks CPUID itself and runs its assembly (AES-NI, CLMUL, AVX).
//! The bench prints what the CPU offers and whether the build assumed it. Two other builds
//! change what `aes-gcm` does (ring's assembly is the same in all three):
//!
//! ```text
//! # compile-time CPU features: the runtime checks become constants, and the compiler may use
//! # AVX2/AVX-512 in the generic code around the intrinsics
//! RUSTFLAGS="-C target-cpu=native" CARGO_TARGET_DIR=target-native \
//!   cargo bench --bench aead -- --warm-up-time 1 --measurement-time 2
//! # no hardware AES or CLMUL in aes-gcm: the force-soft cfgs of aes 0.8 (`src/lib.rs`) and
//! # polyval 0.6 (`src/backend.rs`) select the portable fixsliced AES and software POLYVAL
//! RUSTFLAGS="--cfg aes_force_soft --cfg polyval_force_soft" CARGO_TARGET_DIR=target-soft \
//!   cargo bench --bench aead -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! (a separate target directory each keeps the normal build from being thrown away).
//!
//! The key, nonce and data are fixed dummy bytes: a benchmark needs no secrecy, and the
//! same nonce is reused only because nothing here is ever stored or sent.

use std::hint::black_box;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pii_vault::crypto::{aead_open, aead_seal, AeadKey, Zeroizing, KEY_LEN, NONCE_LEN};

/// 32 B is a typical field (an email), 64 KiB the server's default value limit.
const SIZES: [usize; 4] = [32, 256, 4 * 1024, 64 * 1024];
const KEY: [u8; KEY_LEN] = [0x42; KEY_LEN];
const NONCE: [u8; NONCE_LEN] = [0x24; NONCE_LEN];
/// About the length of a field's context (labels, tenant, subject, field name, version).
const AAD: [u8; 48] = [0x5a; 48];

fn gcm_seal(cipher: &Aes256Gcm, msg: &[u8]) -> Vec<u8> {
    cipher
        .encrypt((&NONCE).into(), Payload { msg, aad: &AAD })
        .expect("aes-gcm seal")
}

/// Returns the plaintext in zeroizing memory, as the vault's `aead_open` did with aes-gcm
/// and does with ring, so that every open variant pays for clearing it on drop.
fn gcm_open(cipher: &Aes256Gcm, msg: &[u8]) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(
        cipher
            .decrypt((&NONCE).into(), Payload { msg, aad: &AAD })
            .expect("aes-gcm open"),
    )
}

/// What the CPU offers and what the build assumed, so a result says which code ran.
// The force-soft cfgs are the dependencies' own, set only through RUSTFLAGS.
#[allow(unexpected_cfgs)]
fn print_cpu_features() {
    #[cfg(target_arch = "x86_64")]
    eprintln!(
        "cpu: aes={} pclmulqdq={} avx2={} vaes={}; built assuming aes={} pclmulqdq={}; \
         aes-gcm force-soft: aes={} polyval={}",
        std::arch::is_x86_feature_detected!("aes"),
        std::arch::is_x86_feature_detected!("pclmulqdq"),
        std::arch::is_x86_feature_detected!("avx2"),
        std::arch::is_x86_feature_detected!("vaes"),
        cfg!(target_feature = "aes"),
        cfg!(target_feature = "pclmulqdq"),
        cfg!(aes_force_soft),
        cfg!(polyval_force_soft),
    );
}

fn seal(c: &mut Criterion) {
    print_cpu_features();
    let mut group = c.benchmark_group("seal");
    let gcm = Aes256Gcm::new((&KEY).into());
    let ring = AeadKey::new(&KEY).expect("key");
    for size in SIZES {
        let plaintext = vec![0xa5u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("aes-gcm", size), &plaintext, |b, pt| {
            b.iter(|| gcm_seal(&Aes256Gcm::new(black_box(&KEY).into()), black_box(pt)))
        });
        group.bench_with_input(
            BenchmarkId::new("aes-gcm-prekeyed", size),
            &plaintext,
            |b, pt| b.iter(|| gcm_seal(&gcm, black_box(pt))),
        );
        group.bench_with_input(BenchmarkId::new("ring", size), &plaintext, |b, pt| {
            b.iter(|| aead_seal(black_box(&KEY), &NONCE, &AAD, black_box(pt)).expect("seal"))
        });
        group.bench_with_input(
            BenchmarkId::new("ring-prekeyed", size),
            &plaintext,
            |b, pt| b.iter(|| ring.seal(&NONCE, &AAD, black_box(pt)).expect("seal")),
        );
    }
    group.finish();
}

fn open(c: &mut Criterion) {
    let mut group = c.benchmark_group("open");
    let gcm = Aes256Gcm::new((&KEY).into());
    let ring = AeadKey::new(&KEY).expect("key");
    for size in SIZES {
        let sealed = gcm_seal(&gcm, &vec![0xa5u8; size]);
        // Both libraries must agree on the bytes, or the comparison means nothing.
        assert!(
            ring.seal(&NONCE, &AAD, &vec![0xa5u8; size]).expect("seal") == sealed,
            "ring and aes-gcm disagree at {size} bytes"
        );
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("aes-gcm", size), &sealed, |b, ct| {
            b.iter(|| gcm_open(&Aes256Gcm::new(black_box(&KEY).into()), black_box(ct)))
        });
        group.bench_with_input(
            BenchmarkId::new("aes-gcm-prekeyed", size),
            &sealed,
            |b, ct| b.iter(|| gcm_open(&gcm, black_box(ct))),
        );
        group.bench_with_input(BenchmarkId::new("ring", size), &sealed, |b, ct| {
            b.iter(|| aead_open(black_box(&KEY), &NONCE, &AAD, black_box(ct)).expect("open"))
        });
        group.bench_with_input(BenchmarkId::new("ring-prekeyed", size), &sealed, |b, ct| {
            b.iter(|| ring.open(&NONCE, &AAD, black_box(ct)).expect("open"))
        });
    }
    group.finish();
}

criterion_group!(benches, seal, open);
criterion_main!(benches);
