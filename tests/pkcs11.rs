//! The PKCS#11 root key source (`keyring::TokenRoot`) against SoftHSM2: versions generated in
//! the token wrap and unwrap through the ordinary envelope, survive a reopen, retire and
//! destroy as recorded on the token, never leave it, and every refusal of `open` says which
//! part is wrong without showing the PIN.
//!
//! `cargo test --release --test pkcs11` (skips, loudly, without SoftHSM2; fails in CI).

#[path = "support/softhsm.rs"]
mod softhsm;

use std::path::PathBuf;
use std::sync::Arc;

use cryptoki::object::{Attribute, AttributeInfo, AttributeType};
use pii_vault::crypto::{
    external_check, external_check_matches, unwrap_external, wrap_external, Aad, Kek, Key, Root,
    Sealed,
};
use pii_vault::domain::Timestamp;
use pii_vault::keyring::{
    KeyringError, PinSource, Pkcs11Settings, TokenKey, TokenRoot, TokenSelector, TokenVersionInfo,
};

/// A fresh SoftHSM2 token, or return from the test (skipped) when there is none.
macro_rules! token_or_skip {
    ($test:expr) => {
        match softhsm::token($test) {
            Some(token) => token,
            None => return,
        }
    };
}

fn open(settings: &Pkcs11Settings) -> TokenRoot {
    TokenRoot::open(settings).expect("open the token")
}

fn kek_aad() -> Aad {
    Aad::new("tenant-kek").with(b"tenant-1")
}

fn wrap(key: &TokenKey, child: &Key<Kek>) -> Sealed {
    wrap_external::<Root, Kek>(key, child, &kek_aad()).expect("wrap in the token")
}

fn unwraps_to(key: &TokenKey, sealed: &Sealed, child: &Key<Kek>) -> bool {
    unwrap_external::<Root, Kek>(key, sealed, child.version(), &kek_aad())
        .is_ok_and(|opened| opened.secret_bytes() == child.secret_bytes())
}

fn live(version: u32) -> TokenVersionInfo {
    TokenVersionInfo {
        version,
        retired_at: None,
    }
}

fn refusal(settings: &Pkcs11Settings) -> String {
    match TokenRoot::open(settings).expect_err("open refused") {
        KeyringError::Token(message) => message,
        other => panic!("not a token error: {other}"),
    }
}

#[test]
fn a_generated_version_wraps_and_unwraps_in_the_token() {
    let token = token_or_skip!("a_generated_version_wraps_and_unwraps_in_the_token");
    let root = open(&token.settings);
    assert_eq!(root.versions().expect("versions"), vec![]);
    let key = root.generate(1).expect("generate v1");
    assert_eq!(format!("{key:?}"), "TokenKey(v1)");
    assert_eq!(root.versions().expect("versions"), vec![live(1)]);

    let child = Key::<Kek>::generate(7).expect("child key");
    let sealed = wrap(&key, &child);
    assert_eq!(sealed.key_version(), 1);
    assert!(unwraps_to(&key, &sealed, &child));
    // The same key found again opens it too.
    let found = root.key(1).expect("key").expect("v1 is there");
    assert!(unwraps_to(&found, &sealed, &child));

    // Another context, another child version, or any modified byte fails.
    let other_aad = Aad::new("tenant-kek").with(b"tenant-2");
    assert!(unwrap_external::<Root, Kek>(&key, &sealed, 7, &other_aad).is_err());
    assert!(unwrap_external::<Root, Kek>(&key, &sealed, 8, &kek_aad()).is_err());
    let bytes = sealed.encode();
    for i in [5, 10, 16, 17, bytes.len() - 1] {
        let mut modified = bytes.clone();
        modified[i] ^= 0x01;
        let modified = Sealed::decode(&modified).expect("still parses");
        assert!(!unwraps_to(&key, &modified, &child), "byte {i} flipped");
    }
    assert!(root.key(2).expect("key").is_none());
}

#[test]
fn generate_refuses_an_existing_version() {
    let token = token_or_skip!("generate_refuses_an_existing_version");
    let root = open(&token.settings);
    root.generate(1).expect("generate v1");
    let err = root.generate(1).expect_err("second v1 refused");
    assert!(
        err.to_string().contains("version 1 already exists"),
        "{err}"
    );
    assert_eq!(root.versions().expect("versions"), vec![live(1)]);
}

#[test]
fn versions_and_retirement_survive_a_reopen_and_a_retired_version_still_decrypts() {
    let token = token_or_skip!("versions_and_retirement_survive_a_reopen");
    let child = Key::<Kek>::generate(3).expect("child key");
    let retired_at = Timestamp(1_700_000_000_123_456);
    let sealed = {
        let root = open(&token.settings);
        let v1 = root.generate(1).expect("generate v1");
        root.generate(2).expect("generate v2");
        root.generate(3).expect("generate v3");
        let sealed = wrap(&v1, &child);
        root.retire(1, retired_at).expect("retire v1");
        // A second retirement keeps the first time.
        root.retire(1, Timestamp(1_800_000_000_000_000))
            .expect("retire again");
        sealed
    };
    // Everything of the first open is dropped: the token logged out, this logs in anew.
    let root = open(&token.settings);
    assert_eq!(
        root.versions().expect("versions"),
        vec![
            TokenVersionInfo {
                version: 1,
                retired_at: Some(retired_at),
            },
            live(2),
            live(3),
        ]
    );
    let v1 = root
        .key(1)
        .expect("key")
        .expect("retired v1 is still there");
    assert!(unwraps_to(&v1, &sealed, &child));
    let err = root.retire(9, retired_at).expect_err("no v9");
    assert!(
        err.to_string().contains("version 9 is not in the token"),
        "{err}"
    );
}

#[test]
fn destroy_removes_the_version_and_what_it_wrapped_stays_closed() {
    let token = token_or_skip!("destroy_removes_the_version");
    let root = open(&token.settings);
    let v1 = root.generate(1).expect("generate v1");
    let v2 = root.generate(2).expect("generate v2");
    let child = Key::<Kek>::generate(1).expect("child key");
    let sealed = wrap(&v1, &child);
    let rewrapped = wrap(&v2, &child);

    root.destroy(1).expect("destroy v1");
    assert!(root.key(1).expect("key").is_none());
    assert_eq!(root.versions().expect("versions"), vec![live(2)]);
    assert!(
        !unwraps_to(&v1, &sealed, &child),
        "a destroyed version opened"
    );
    assert!(wrap_external::<Root, Kek>(&v1, &child, &kek_aad()).is_err());
    assert!(unwraps_to(&v2, &rewrapped, &child));
    // Repeated after a crash: nothing left to destroy is not an error.
    root.destroy(1).expect("destroy v1 again");
    drop(root);
    assert!(open(&token.settings).key(1).expect("key").is_none());
}

#[test]
fn the_key_never_leaves_the_token() {
    let token = token_or_skip!("the_key_never_leaves_the_token");
    let root = open(&token.settings);
    root.generate(1).expect("generate v1");
    // A session of this process on the same token shares the vault's login.
    let ctx = softhsm::context();
    let slot = cryptoki::slot::Slot::try_from(token.slot).expect("slot");
    let session = ctx.open_rw_session(slot).expect("session");
    let handles = session
        .find_objects(&[Attribute::Label(b"pii-vault-root-v1".to_vec())])
        .expect("find");
    assert_eq!(handles.len(), 1);
    let key = handles[0];
    let value = session
        .get_attribute_info(key, &[AttributeType::Value])
        .expect("attribute info");
    assert!(
        matches!(value[0], AttributeInfo::Sensitive),
        "CKA_VALUE readable: {value:?}"
    );
    let attributes = session
        .get_attributes(
            key,
            &[
                AttributeType::Extractable,
                AttributeType::Sensitive,
                AttributeType::Token,
                AttributeType::Private,
                AttributeType::ValueLen,
                AttributeType::Id,
            ],
        )
        .expect("attributes");
    for expected in [
        Attribute::Extractable(false),
        Attribute::Sensitive(true),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::ValueLen(32.into()),
        Attribute::Id(1u32.to_be_bytes().to_vec()),
    ] {
        assert!(
            attributes.contains(&expected),
            "{expected:?} not in {attributes:?}"
        );
    }
    // Nor can it be made extractable afterwards.
    assert!(session
        .update_attributes(key, &[Attribute::Extractable(true)])
        .is_err());
    drop(session);
}

#[test]
fn the_check_value_of_one_version_does_not_match_another() {
    let token = token_or_skip!("the_check_value_of_one_version_does_not_match_another");
    let root = open(&token.settings);
    let v1 = root.generate(1).expect("generate v1");
    let v2 = root.generate(2).expect("generate v2");
    let check = external_check::<Root>(&v1).expect("check value");
    assert!(external_check_matches::<Root>(&v1, &check));
    assert!(!external_check_matches::<Root>(&v2, &check));
    let mut modified = check.clone();
    let last = modified.len() - 1;
    modified[last] ^= 1;
    assert!(!external_check_matches::<Root>(&v1, &modified));
}

#[test]
fn each_refusal_to_open_says_what_is_wrong_and_never_the_pin() {
    let token = token_or_skip!("each_refusal_to_open_says_what_is_wrong");
    let wrong_pin = "wrong-pin-31337";
    let with = |change: &dyn Fn(&mut Pkcs11Settings)| {
        let mut settings = token.settings.clone();
        change(&mut settings);
        settings
    };
    let wrong_pin_file = token.dir.join("wrong-pin");
    softhsm::write_private(&wrong_pin_file, wrong_pin);
    let open_pin_file = token.dir.join("open-pin");
    std::fs::write(&open_pin_file, &token.pin).expect("write");
    // 0644 whatever the umask
    std::fs::set_permissions(
        &open_pin_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let not_a_library = token.dir.join("libnot-pkcs11.so");
    std::fs::write(&not_a_library, "not a library").expect("write");
    let unset_var = format!("PIIVAULT_TEST_UNSET_PIN_{}", std::process::id());

    let cases: Vec<(&str, Pkcs11Settings, &str)> = vec![
        (
            "wrong PIN",
            with(&|s| s.pin = PinSource::File(wrong_pin_file.clone())),
            "CKR_PIN_INCORRECT",
        ),
        (
            "missing module",
            with(&|s| s.module = PathBuf::from("/nonexistent/libpkcs11-missing.so")),
            "module /nonexistent/libpkcs11-missing.so: no such file",
        ),
        (
            "not a PKCS#11 library",
            with(&|s| s.module = not_a_library.clone()),
            "cannot be loaded as a PKCS#11 library",
        ),
        (
            "unknown token label",
            with(&|s| s.token = TokenSelector::Label("pv-no-such-token".to_owned())),
            "has no token labelled pv-no-such-token",
        ),
        (
            "unknown slot",
            with(&|s| s.token = TokenSelector::Slot(u64::from(u32::MAX) - 7)),
            "has no token in slot",
        ),
        (
            "PIN file readable by others",
            with(&|s| s.pin = PinSource::File(open_pin_file.clone())),
            "its mode is 644",
        ),
        (
            "missing PIN file",
            with(&|s| s.pin = PinSource::File(token.dir.join("no-such-pin"))),
            "no-such-pin: no such file",
        ),
        (
            "unset PIN variable",
            with(&|s| s.pin = PinSource::Env(unset_var.clone())),
            "is not set",
        ),
        (
            "empty key label prefix",
            with(&|s| s.key_label_prefix = String::new()),
            "key label prefix is empty",
        ),
    ];
    let mut messages = Vec::new();
    for (case, settings, expected) in &cases {
        let message = refusal(settings);
        assert!(
            message.contains(expected),
            "{case}: {message:?} lacks {expected:?}"
        );
        assert!(
            !message.contains(&token.pin) && !message.contains(wrong_pin),
            "{case}: {message:?} shows a PIN"
        );
        assert!(
            !messages.contains(&message),
            "{case}: same message as another: {message}"
        );
        messages.push(message);
    }
    // The right settings still open (the wrong PIN did not lock the token).
    let root = open(&token.settings);
    assert!(
        root.describe().contains(&token.label),
        "{}",
        root.describe()
    );
    assert!(format!("{root:?}").contains(&token.label));
    assert!(!format!("{root:?}").contains(&token.pin));
}

#[test]
fn a_second_open_with_a_wrong_pin_is_refused_while_the_token_is_logged_in() {
    let token = token_or_skip!("a_second_open_with_a_wrong_pin_is_refused");
    let first = open(&token.settings);
    let wrong = token.dir.join("wrong-pin");
    softhsm::write_private(&wrong, "not-the-pin");
    let mut settings = token.settings.clone();
    settings.pin = PinSource::File(wrong);
    let message = refusal(&settings);
    assert!(message.contains("PIN"), "{message}");
    assert!(!message.contains(&token.pin));
    // The same PIN shares the login, and each root sees what the other made.
    let second = open(&token.settings);
    first.generate(1).expect("generate v1");
    let v1 = second
        .key(1)
        .expect("key")
        .expect("v1 seen by the second root");
    drop(first);
    let child = Key::<Kek>::generate(1).expect("child key");
    assert!(unwraps_to(&v1, &wrap(&v1, &child), &child));
}

#[test]
fn opens_by_slot_with_the_pin_from_the_environment() {
    let token = token_or_skip!("opens_by_slot_with_the_pin_from_the_environment");
    let var = format!("PIIVAULT_TEST_PIN_{}_{}", std::process::id(), token.slot);
    std::env::set_var(&var, format!("{}\n", token.pin));
    let settings = Pkcs11Settings {
        token: TokenSelector::Slot(token.slot),
        pin: PinSource::Env(var.clone()),
        ..token.settings.clone()
    };
    let root = open(&settings);
    std::env::remove_var(&var);
    root.generate(4).expect("generate v4");
    assert_eq!(root.versions().expect("versions"), vec![live(4)]);
    let described = root.describe();
    assert!(
        described.contains(&format!("(slot {})", token.slot))
            && described.contains(softhsm::MODULE),
        "{described}"
    );
}

#[test]
fn vaults_with_other_prefixes_share_a_token_without_seeing_each_other() {
    let token = token_or_skip!("vaults_with_other_prefixes_share_a_token");
    let a = open(&token.settings);
    let b = open(&Pkcs11Settings {
        key_label_prefix: "pii-vault-root-b".to_owned(),
        ..token.settings.clone()
    });
    let a1 = a.generate(1).expect("a v1");
    let b1 = b.generate(1).expect("b v1");
    b.generate(2).expect("b v2");
    assert_eq!(a.versions().expect("versions"), vec![live(1)]);
    assert_eq!(b.versions().expect("versions"), vec![live(1), live(2)]);
    let child = Key::<Kek>::generate(1).expect("child key");
    let sealed = wrap(&a1, &child);
    assert!(!unwraps_to(&b1, &sealed, &child));
    b.destroy(1).expect("destroy b v1");
    assert!(unwraps_to(&a1, &sealed, &child));
}

#[test]
fn many_threads_use_one_token_and_their_own_at_once() {
    let token = token_or_skip!("many_threads_use_one_token_and_their_own_at_once");
    let shared = Arc::new(open(&token.settings));
    shared.generate(1).expect("generate v1");
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let own = softhsm::token("many_threads (own token)").expect("token");
                let own = open(&own.settings);
                let own_key = own.generate(1).expect("own v1");
                let shared_key = shared.key(1).expect("key").expect("shared v1");
                for n in 0..10 {
                    let child = Key::<Kek>::generate(i * 100 + n).expect("child");
                    for key in [&own_key, &shared_key] {
                        assert!(unwraps_to(key, &wrap(key, &child), &child));
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("thread");
    }
}
