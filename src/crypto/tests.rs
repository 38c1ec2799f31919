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
    let key = dek();
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
    // And one the vault writes now opens with aes-gcm.
    let encoded = key.seal(b"bob@example.com", &aad).expect("seal").encode();
    let opened = previous::open(
        key.secret_bytes(),
        encoded[5..17].try_into().expect("nonce"),
        &full_aad,
        &encoded[17..],
    )
    .expect("aes-gcm opens the new envelope");
    assert_eq!(opened, b"bob@example.com");
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
