//! Wycheproof known-answer vectors for the vault's one AEAD primitive.
//!
//! Runs every AES-GCM vector that matches the vault's parameters (256-bit key, 96-bit
//! nonce, 128-bit tag) through `pii_vault::crypto::aead_seal` / `aead_open`, which prepare
//! the same `AeadKey` (ring's AES-256-GCM) that `Key::seal` and `Key::open` use:
//!
//! - a valid vector must open to its plaintext, seal back to its exact ciphertext and tag,
//!   and fail to open once one bit of its tag is flipped;
//! - an invalid vector must be rejected by `aead_open`.
//!
//! Vectors with other key, nonce or tag sizes are counted as skipped: the vault cannot
//! produce them (its types fix the sizes). Failure messages name the test case id only,
//! never key or plaintext bytes. Run with `cargo test --test wycheproof -- --nocapture` to
//! see the counts.

use pii_vault::crypto::{aead_open, aead_seal, KEY_LEN, NONCE_LEN, TAG_LEN};
use wycheproof::aead::{TestName, TestSet};
use wycheproof::TestResult;

/// What ran, so a reader of the test output sees that the vectors were not silently empty.
#[derive(Debug, Default)]
struct Counts {
    valid: usize,
    invalid: usize,
    acceptable: usize,
    skipped: usize,
}

#[test]
fn aes_256_gcm_vectors() {
    let set = TestSet::load(TestName::AesGcm).expect("Wycheproof AES-GCM set loads");
    let mut counts = Counts::default();
    for group in &set.test_groups {
        let fits = group.key_size == KEY_LEN * 8
            && group.nonce_size == NONCE_LEN * 8
            && group.tag_size == TAG_LEN * 8;
        if !fits {
            counts.skipped += group.tests.len();
            continue;
        }
        for test in &group.tests {
            let id = test.tc_id;
            let key: &[u8; KEY_LEN] = test.key[..].try_into().expect("key size of the group");
            let nonce: &[u8; NONCE_LEN] =
                test.nonce[..].try_into().expect("nonce size of the group");
            let mut sealed = test.ct.to_vec();
            sealed.extend_from_slice(&test.tag);
            let opened = aead_open(key, nonce, &test.aad, &sealed);
            match test.result {
                TestResult::Valid => {
                    counts.valid += 1;
                    let opened =
                        opened.unwrap_or_else(|_| panic!("tc {id}: valid vector rejected"));
                    assert!(opened[..] == test.pt[..], "tc {id}: wrong plaintext");
                    let resealed = aead_seal(key, nonce, &test.aad, &test.pt)
                        .unwrap_or_else(|_| panic!("tc {id}: seal failed"));
                    assert!(resealed == sealed, "tc {id}: wrong ciphertext or tag");
                    let mut modified = sealed.clone();
                    let last = modified.len() - 1;
                    modified[last] ^= 0x01;
                    assert!(
                        aead_open(key, nonce, &test.aad, &modified).is_err(),
                        "tc {id}: modified tag accepted"
                    );
                }
                TestResult::Invalid => {
                    counts.invalid += 1;
                    assert!(opened.is_err(), "tc {id}: invalid vector accepted");
                }
                // Either outcome is allowed; none exist for these parameters today.
                TestResult::Acceptable => counts.acceptable += 1,
            }
        }
    }
    println!(
        "wycheproof aes_gcm (256-bit key, 96-bit nonce, 128-bit tag): {} valid, {} invalid, \
         {} acceptable run; {} vectors of other sizes skipped",
        counts.valid, counts.invalid, counts.acceptable, counts.skipped
    );
    assert!(counts.valid > 0, "no valid vector ran: {counts:?}");
    assert!(counts.invalid > 0, "no invalid vector ran: {counts:?}");
}
