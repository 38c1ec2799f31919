//! Unit tests of the envelope: everything that should fail to open does.

use super::*;

fn field_aad(tenant: &str, subject: &str, field: &str) -> Aad {
    Aad::new("field")
        .with(tenant.as_bytes())
        .with(subject.as_bytes())
        .with(field.as_bytes())
}

fn dek() -> Key<Dek> {
    Key::generate(1).expect("rng")
}

#[test]
fn seal_then_open_round_trips() {
    let key = dek();
    let aad = field_aad("t", "s", "email");
    let sealed = key.seal(b"alice@example.com", &aad).expect("seal");
    let back = Sealed::decode(&sealed.encode()).expect("decode");
    assert_eq!(back, sealed);
    assert_eq!(
        &**key.open(&back, &aad).expect("open"),
        b"alice@example.com"
    );
}

#[test]
fn ciphertext_moved_to_another_field_subject_or_tenant_fails() {
    let key = dek();
    let sealed = key
        .seal(b"secret", &field_aad("t", "s", "email"))
        .expect("seal");
    for other in [
        field_aad("t", "s", "phone"),
        field_aad("t", "s2", "email"),
        field_aad("t2", "s", "email"),
        // Length prefixes keep ("ts", "") apart from ("t", "s").
        field_aad("ts", "", "email"),
    ] {
        assert_eq!(key.open(&sealed, &other), Err(CryptoError));
    }
}

#[test]
fn every_flipped_bit_fails() {
    let key = dek();
    let aad = field_aad("t", "s", "f");
    let encoded = key.seal(b"0123456789", &aad).expect("seal").encode();
    for byte in 0..encoded.len() {
        for bit in 0..8 {
            let mut bad = encoded.clone();
            bad[byte] ^= 1 << bit;
            let opened = Sealed::decode(&bad).and_then(|s| key.open(&s, &aad));
            assert!(opened.is_err(), "flip at byte {byte} bit {bit} opened");
        }
    }
}

#[test]
fn wrong_key_or_version_fails() {
    let aad = field_aad("t", "s", "f");
    let sealed = dek().seal(b"x", &aad).expect("seal");
    assert!(dek().open(&sealed, &aad).is_err());
    let key = dek();
    let sealed = key.seal(b"x", &aad).expect("seal");
    let other_version = Key::<Dek>::from_secret_bytes(2, Zeroizing::new(*key.secret_bytes()));
    assert!(other_version.open(&sealed, &aad).is_err());
}

#[test]
fn truncated_envelopes_are_rejected() {
    let key = dek();
    let encoded = key.seal(b"x", &Aad::new("f")).expect("seal").encode();
    for len in 0..encoded.len() {
        let ok = Sealed::decode(&encoded[..len]).and_then(|s| key.open(&s, &Aad::new("f")));
        assert!(ok.is_err(), "truncated to {len} opened");
    }
}

#[test]
fn wrapped_key_is_bound_to_role_context_and_version() {
    let kek: Key<Kek> = Key::generate(3).expect("rng");
    let dek = dek();
    let aad = Aad::new("dek").with(b"tenant").with(b"subject");
    let wrapped = kek.wrap(&dek, &aad).expect("wrap");
    let back: Key<Dek> = kek.unwrap_key(&wrapped, 1, &aad).expect("unwrap");
    assert_eq!(back.secret_bytes(), dek.secret_bytes());
    assert!(kek.unwrap_key::<Dek>(&wrapped, 2, &aad).is_err());
    assert!(kek.unwrap_key::<Kek>(&wrapped, 1, &aad).is_err());
    let other = Aad::new("dek").with(b"tenant").with(b"other");
    assert!(kek.unwrap_key::<Dek>(&wrapped, 1, &other).is_err());
}

#[test]
fn debug_never_prints_key_bytes() {
    let key = dek();
    let shown = format!("{key:?}");
    assert_eq!(shown, "Key<dek>(v1, [secret])");
    assert!(!shown.contains(&*key.secret_hex()));
}

#[test]
fn macs_are_label_separated_and_compare_in_constant_time() {
    let key = dek();
    let a = key.mac("audit", &[b"x"]);
    assert!(mac_eq(&a, &key.mac("audit", &[b"x"])));
    assert!(!mac_eq(&a, &key.mac("index", &[b"x"])));
    assert!(!mac_eq(&a, &key.mac("audit", &[b"", b"x"])));
}

/// The `aes-gcm` crate, which sealed every value the vault stored before it moved to ring.
mod previous {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use aes_gcm::Aes256Gcm;

    pub fn seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], msg: &[u8]) -> Vec<u8> {
        Aes256Gcm::new(key.into())
            .encrypt(nonce.into(), Payload { msg, aad })
            .expect("aes-gcm seal")
    }

    pub fn open(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], msg: &[u8]) -> Option<Vec<u8>> {
        Aes256Gcm::new(key.into())
            .decrypt(nonce.into(), Payload { msg, aad })
            .ok()
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    fill_random(&mut b).expect("rng");
    b
}

#[test]
fn values_sealed_by_the_previous_implementation_open_and_the_reverse() {
    for len in [0usize, 1, 15, 16, 17, 32, 255, 256, 4096, 65536] {
        let key: [u8; KEY_LEN] = random();
        let nonce: [u8; NONCE_LEN] = random();
        let aad: [u8; 40] = random();
        let msg: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let old = previous::seal(&key, &nonce, &aad, &msg);
        let new = aead_seal(&key, &nonce, &aad, &msg).expect("seal");
        assert!(old == new, "ring and aes-gcm disagree at {len} bytes");
        let opened = aead_open(&key, &nonce, &aad, &old).expect("old sealed, new opens");
        assert!(opened[..] == msg[..], "{len} bytes");
        let opened = previous::open(&key, &nonce, &aad, &new).expect("new sealed, old opens");
        assert!(opened == msg, "{len} bytes");
        // A prepared key (what `Key` and the DEK cache keep) is the same primitive.
        let prepared = AeadKey::new(&key).expect("key");
        assert!(prepared.seal(&nonce, &aad, &msg).expect("seal") == old);
        let mut bad = old.clone();
        bad[len / 2] ^= 0x80;
        assert!(prepared.open(&nonce, &aad, &bad).is_err());
        assert!(previous::open(&key, &nonce, &aad, &bad).is_none());
    }
}

#[test]
fn envelopes_sealed_by_the_previous_implementation_open_and_the_reverse() {
    // A key written before purpose subkeys seals under its own bytes, as it always did.
    let key = dek().with_derivation(Derivation::Legacy);
    let aad = field_aad("t", "s", "email");
    let full_aad = aad.bytes_for("dek", key.version());
    // An envelope as the vault wrote it before: same layout, sealed by aes-gcm.
    let nonce: [u8; NONCE_LEN] = random();
    let mut encoded = vec![1u8];
    encoded.extend_from_slice(&key.version().to_be_bytes());
    encoded.extend_from_slice(&nonce);
    encoded.extend_from_slice(&previous::seal(
        key.secret_bytes(),
        &nonce,
        &full_aad,
        b"alice@example.com",
    ));
    let sealed = Sealed::decode(&encoded).expect("decode");
    assert_eq!(
        &**key.open(&sealed, &aad).expect("opens"),
        b"alice@example.com"
    );
    // And one a legacy key seals now opens with aes-gcm under its bytes.
    let encoded = key.seal(b"bob@example.com", &aad).expect("seal").encode();
    let opened = previous::open(
        key.secret_bytes(),
        encoded[5..17].try_into().expect("nonce"),
        &full_aad,
        &encoded[17..],
    )
    .expect("aes-gcm opens the new envelope");
    assert_eq!(opened, b"bob@example.com");
    // A new key seals under its "seal" subkey, never under its bytes.
    let key = key.with_derivation(Derivation::HkdfV1);
    let encoded = key.seal(b"carol@example.com", &aad).expect("seal").encode();
    let nonce: [u8; NONCE_LEN] = encoded[5..17].try_into().expect("nonce");
    assert!(previous::open(key.secret_bytes(), &nonce, &full_aad, &encoded[17..]).is_none());
    let subkey = key.subkey("seal").expect("subkey");
    let opened = previous::open(subkey.secret_bytes(), &nonce, &full_aad, &encoded[17..])
        .expect("aes-gcm opens it under the subkey");
    assert_eq!(opened, b"carol@example.com");
    // So a legacy key does not open what the new one sealed, nor the reverse.
    let sealed = Sealed::decode(&encoded).expect("decode");
    assert!(key
        .duplicate()
        .with_derivation(Derivation::Legacy)
        .open(&sealed, &aad)
        .is_err());
}

#[test]
fn a_prepared_key_never_prints_and_outlives_its_first_use() {
    let key = dek();
    let aad = field_aad("t", "s", "f");
    // The first seal prepares the cipher; later ones reuse it and still draw fresh nonces.
    let a = key.seal(b"same", &aad).expect("seal");
    let b = key.seal(b"same", &aad).expect("seal");
    assert_ne!(a.encode(), b.encode());
    assert_eq!(&**key.open(&a, &aad).expect("open"), b"same");
    let copy = key.duplicate();
    assert_eq!(&**copy.open(&b, &aad).expect("open"), b"same");
    let prepared = AeadKey::new(key.secret_bytes()).expect("key");
    assert_eq!(format!("{prepared:?}"), "AeadKey([secret])");
}

/// HKDF-SHA-256 built by hand from HMAC (RFC 5869 section 2), for one block of output: an
/// independent computation to check the vault's subkeys against.
fn hkdf_by_hand(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    use ring::hmac;
    let prk = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, salt), ikm);
    let mut block = info.to_vec();
    block.push(1);
    let t1 = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref()), &block);
    t1.as_ref().try_into().expect("32 bytes")
}

fn fixed<R: KeyRole>(byte: u8) -> Key<R> {
    Key::from_secret_bytes(1, Zeroizing::new([byte; KEY_LEN]))
}

#[test]
fn hkdf_matches_rfc_5869_test_case_1() {
    let ikm = [0x0bu8; 22];
    let salt: Vec<u8> = (0x00..=0x0c).collect();
    let info: Vec<u8> = (0xf0..=0xf9).collect();
    let mut okm = [0u8; 42];
    subkey::hkdf_sha256(&salt, &ikm, &info, &mut okm).expect("hkdf");
    assert_eq!(
        hex::encode(okm),
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    );
    assert_eq!(okm[..32], hkdf_by_hand(&salt, &ikm, &info));
}

#[test]
fn a_subkey_is_hkdf_of_the_key_with_the_scheme_salt_and_its_purpose() {
    let key: Key<Dek> = fixed(7);
    // info = len("dek") "dek" len("seal") "seal"
    let info = b"\0\0\0\x03dek\0\0\0\x04seal";
    let expected = hkdf_by_hand(b"pii-vault subkey derivation v1", &[7u8; 32], info);
    let subkey = key.subkey("seal").expect("subkey");
    assert_eq!(subkey.secret_bytes(), &expected);
    assert_eq!(
        key.subkey("seal").expect("again").secret_bytes(),
        &expected,
        "deterministic"
    );
    assert_ne!(subkey.secret_bytes(), key.secret_bytes(), "not the key");
    let other = key.subkey("other").expect("subkey");
    assert_ne!(other.secret_bytes(), subkey.secret_bytes(), "per purpose");
    let as_kek: Key<Kek> = fixed(7);
    assert_ne!(
        as_kek.subkey("seal").expect("subkey").secret_bytes(),
        subkey.secret_bytes(),
        "per role"
    );
    assert_eq!(format!("{subkey:?}"), "Subkey([secret])");
}

#[test]
fn macs_run_under_a_subkey_per_label_and_legacy_keys_keep_the_old_formula() {
    use ring::hmac;
    let key: Key<Audit> = fixed(9);
    let parts: [&[u8]; 2] = [b"ab", b"c"];
    let encoded = |bits: &[&[u8]]| -> Vec<u8> {
        bits.iter()
            .flat_map(|p| {
                let mut v = (p.len() as u32).to_be_bytes().to_vec();
                v.extend_from_slice(p);
                v
            })
            .collect()
    };
    // New: HMAC under HKDF(key, info = role, "mac", label) of the length-prefixed parts.
    let info = encoded(&[b"audit", b"mac", b"lbl"]);
    let subkey = hkdf_by_hand(b"pii-vault subkey derivation v1", &[9u8; 32], &info);
    let want = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &subkey),
        &encoded(&parts),
    );
    assert_eq!(&key.mac("lbl", &parts)[..], want.as_ref());
    // Legacy: HMAC under the key bytes of the length-prefixed label and parts.
    let legacy = key.duplicate().with_derivation(Derivation::Legacy);
    let mut msg = encoded(&[b"lbl"]);
    msg.extend_from_slice(&encoded(&parts));
    let want = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &[9u8; 32]), &msg);
    assert_eq!(&legacy.mac("lbl", &parts)[..], want.as_ref());
    assert_ne!(key.check_value(), legacy.check_value());
}

#[test]
fn a_wrap_carries_the_childs_derivation_and_a_rewrap_keeps_it() {
    let parent: Key<Kek> = Key::generate(2).expect("rng");
    let legacy_parent = parent.duplicate().with_derivation(Derivation::Legacy);
    let aad = Aad::new("dek").with(b"t");
    for child_derivation in [Derivation::Legacy, Derivation::HkdfV1] {
        let child = dek().with_derivation(child_derivation);
        for p in [&parent, &legacy_parent] {
            let wrapped = p.wrap(&child, &aad).expect("wrap");
            let back: Key<Dek> = p.unwrap_key(&wrapped, 1, &aad).expect("unwrap");
            assert_eq!(back.derivation(), child_derivation);
            assert_eq!(back.secret_bytes(), child.secret_bytes());
            let again = parent.wrap(&back, &aad).expect("rewrap");
            let back: Key<Dek> = parent.unwrap_key(&again, 1, &aad).expect("unwrap");
            assert_eq!(back.derivation(), child_derivation);
        }
    }
    // A legacy wrap (as the vault wrote it before) is the 32 key bytes under the parent's.
    let child = dek().with_derivation(Derivation::Legacy);
    let wrapped = legacy_parent.wrap(&child, &aad).expect("wrap").encode();
    let full_aad = super::envelope::test_wrap_aad::<Dek>(&aad, 1).bytes_for("kek", 2);
    let opened = previous::open(
        legacy_parent.secret_bytes(),
        wrapped[5..17].try_into().expect("nonce"),
        &full_aad,
        &wrapped[17..],
    )
    .expect("aes-gcm opens the legacy wrap");
    assert_eq!(&opened[..], child.secret_bytes());
}

#[test]
fn derived_keys_inherit_the_derivation_and_legacy_ones_keep_the_old_formula() {
    let audit: Key<Audit> = fixed(5);
    let legacy = audit.duplicate().with_derivation(Derivation::Legacy);
    let new: Key<RecordMac> = audit.derive("lbl", &[b"acme"]).expect("derive");
    let old: Key<RecordMac> = legacy.derive("lbl", &[b"acme"]).expect("derive");
    assert_eq!(new.derivation(), Derivation::HkdfV1);
    assert_eq!(old.derivation(), Derivation::Legacy);
    // Legacy: HKDF with the label as salt and the length-prefixed context as info.
    assert_eq!(
        old.secret_bytes(),
        &hkdf_by_hand(b"lbl", &[5u8; 32], b"\0\0\0\x04acme")
    );
    let info = b"\0\0\0\x05audit\0\0\0\x06derive\0\0\0\x03lbl\0\0\0\x04acme";
    assert_eq!(
        new.secret_bytes(),
        &hkdf_by_hand(b"pii-vault subkey derivation v1", &[5u8; 32], info)
    );
}
