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
