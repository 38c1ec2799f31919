//! Card tokens belong to a subject: sealed under the subject's key, found through an index
//! entry of the token, listed (never with the card) in the subject's access report and
//! export, refused while the subject is restricted, and gone with the subject's erasure,
//! also after a restart and across index key rotations and key epochs. The `tok_` field
//! names are the vault's own. A token issued before tokens had subjects is refused with a
//! message saying what to do.

use std::sync::Arc;

use pb::subject_rights_service_client::SubjectRightsServiceClient;
use pb::token_service_client::TokenServiceClient;
use pii_vault::proto::v1 as pb;
use pii_vault::storage::{SledStore, Store};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

use crate::erasure::erase;
use crate::util::{assert_reason, create_tenant, get, put, test_config, text, TestVault};

const ALICE_CARD: &str = "4111111111111111";
const BOB_CARD: &str = "5555555555554444";

async fn tokenize(
    tokens: &mut TokenServiceClient<Channel>, subject: &str, card: &str,
) -> Result<String, tonic::Status> {
    tokens
        .tokenize(pb::TokenizeRequest {
            tenant_id: "acme".into(),
            subject_id: subject.into(),
            card_number: card.into(),
            idempotency_key: String::new(),
        })
        .await
        .map(|r| r.into_inner().token)
}

async fn detokenize(
    tokens: &mut TokenServiceClient<Channel>, token: &str,
) -> Result<String, tonic::Status> {
    tokens
        .detokenize(pb::DetokenizeRequest {
            tenant_id: "acme".into(),
            token: token.into(),
            purpose: "billing".into(),
        })
        .await
        .map(|r| r.into_inner().card_number)
}

/// The subject's access report: its fields' names and kinds, and whether any has a value.
async fn held(channel: &Channel, subject: &str) -> Vec<(String, String, bool)> {
    SubjectRightsServiceClient::new(channel.clone())
        .access_subject(pb::AccessSubjectRequest {
            tenant_id: "acme".into(),
            subject_id: subject.into(),
        })
        .await
        .expect("access report")
        .into_inner()
        .fields
        .into_iter()
        .map(|h| {
            let f = h.field.expect("field");
            (f.name, h.kind, f.value.is_some())
        })
        .collect()
}

async fn export(channel: &Channel, subject: &str) -> String {
    let mut stream = SubjectRightsServiceClient::new(channel.clone())
        .export_subject(pb::ExportSubjectRequest {
            tenant_id: "acme".into(),
            subject_id: subject.into(),
            purpose: "data_subject_request".into(),
        })
        .await
        .expect("export")
        .into_inner();
    let mut doc = Vec::new();
    while let Some(chunk) = stream.next().await {
        doc.extend(chunk.expect("chunk").data);
    }
    String::from_utf8(doc).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_belongs_to_its_subject_and_is_erased_with_them() {
    let (vault, store) = crate::util::vault_with_store().await;
    let acme = pii_vault::domain::TenantId::parse("acme").expect("tenant id");
    create_tenant(&vault, "acme").await;
    let channel = vault.channel().await;
    let mut records = vault.records().await;
    let mut tokens = TokenServiceClient::new(channel.clone());
    put(
        &mut records,
        "acme",
        "alice",
        vec![text("nick", pb::Category::Profile, "al")],
    )
    .await
    .expect("put");

    let alice = tokenize(&mut tokens, "alice", ALICE_CARD)
        .await
        .expect("tokenize");
    let again = tokenize(&mut tokens, "alice", ALICE_CARD)
        .await
        .expect("tokenize");
    assert_ne!(alice, again, "random tokens do not repeat");
    let bob = tokenize(&mut tokens, "bob", BOB_CARD)
        .await
        .expect("tokenize");
    assert_eq!(
        detokenize(&mut tokens, &alice).await.expect("detokenize"),
        ALICE_CARD
    );
    assert_eq!(
        detokenize(&mut tokens, &bob).await.expect("detokenize"),
        BOB_CARD
    );

    // Tokens are read through TokenService only: GetFields lists none, and their names
    // are the vault's.
    let fields = get(&mut records, "acme", "alice", &[]).await.expect("get");
    assert_eq!(
        fields.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        ["nick"]
    );
    let named = get(&mut records, "acme", "alice", &[alice.as_str()])
        .await
        .expect_err("a token is not a field name a caller can use");
    assert_eq!(named.code(), Code::InvalidArgument, "{named:?}");
    assert!(
        named.message().contains("reserved for card tokens"),
        "{named:?}"
    );
    let written = put(
        &mut records,
        "acme",
        "alice",
        vec![text("tok_mine", pb::Category::Profile, "x")],
    )
    .await
    .expect_err("tok_ names are reserved");
    assert_eq!(written.code(), Code::InvalidArgument, "{written:?}");
    let missing = tokenize(&mut tokens, "", ALICE_CARD)
        .await
        .expect_err("a token needs its holder");
    assert_eq!(missing.code(), Code::InvalidArgument, "{missing:?}");
    assert!(missing.message().contains("subject id"), "{missing:?}");

    // The access report and the export list the tokens, never the card.
    let report = held(&channel, "alice").await;
    let mut listed: Vec<_> = report
        .iter()
        .filter(|(_, kind, _)| kind == "card_token")
        .map(|(name, _, has_value)| {
            assert!(!has_value, "a token is listed without its card: {report:?}");
            name.clone()
        })
        .collect();
    listed.sort();
    let mut issued = vec![alice.clone(), again.clone()];
    issued.sort();
    assert_eq!(listed, issued, "{report:?}");
    let doc = export(&channel, "alice").await;
    assert!(
        doc.contains(&alice) && doc.contains("\"card_token\""),
        "{doc}"
    );
    assert!(!doc.contains(ALICE_CARD) && !doc.contains("1111"), "{doc}");

    // Restricted, the holder's tokens are refused as reads of their data are.
    let mut rights = SubjectRightsServiceClient::new(channel.clone());
    rights
        .restrict_subject(pb::RestrictSubjectRequest {
            tenant_id: "acme".into(),
            subject_id: "bob".into(),
        })
        .await
        .expect("restrict");
    let refused = detokenize(&mut tokens, &bob).await.expect_err("restricted");
    assert_reason(&refused, Code::FailedPrecondition, "SUBJECT_RESTRICTED");
    rights
        .lift_restriction(pb::LiftRestrictionRequest {
            tenant_id: "acme".into(),
            subject_id: "bob".into(),
        })
        .await
        .expect("lift");

    // The reveal is a disclosure of Bob's data: his access report names it.
    let recipients = SubjectRightsServiceClient::new(channel.clone())
        .access_subject(pb::AccessSubjectRequest {
            tenant_id: "acme".into(),
            subject_id: "bob".into(),
        })
        .await
        .expect("bob's report")
        .into_inner()
        .recipients;
    assert!(
        recipients
            .iter()
            .any(|r| r.operation == "detokenize" && r.field_names == [bob.clone()]),
        "{recipients:?}"
    );

    // DeleteFields with a token's name deletes the token (and its index entry).
    let spare = tokenize(&mut tokens, "bob", BOB_CARD)
        .await
        .expect("tokenize");
    records
        .delete_fields(pb::DeleteFieldsRequest {
            tenant_id: "acme".into(),
            subject_id: "bob".into(),
            field_names: vec![spare.clone()],
        })
        .await
        .expect("delete the token");
    let deleted = detokenize(&mut tokens, &spare).await.expect_err("deleted");
    assert_reason(&deleted, Code::NotFound, "TOKEN_NOT_FOUND");

    // Erased, Alice's tokens are gone, their index entries too; Bob's stay.
    let entries = || store.index_scan(&acme, b"").expect("scan").len();
    assert_eq!(entries(), 3);
    erase(channel.clone(), "acme", "alice")
        .await
        .expect("erase");
    for token in [&alice, &again] {
        let gone = detokenize(&mut tokens, token).await.expect_err("erased");
        assert_reason(&gone, Code::NotFound, "TOKEN_NOT_FOUND");
    }
    assert_eq!(entries(), 1, "only Bob's token entry is left");
    let erased = tokenize(&mut tokens, "alice", ALICE_CARD)
        .await
        .expect_err("no new token for an erased subject");
    assert_reason(&erased, Code::NotFound, "SUBJECT_ERASED");

    // Index key rotations and key epochs re-index the tokens that are left.
    let mut index = vault.records().await;
    index
        .rotate_index_key(pb::RotateIndexKeyRequest {
            tenant_id: "acme".into(),
        })
        .await
        .expect("rotate index key");
    assert_eq!(
        detokenize(&mut tokens, &bob).await.expect("after rotation"),
        BOB_CARD
    );
    pb::key_service_client::KeyServiceClient::new(channel.clone())
        .run_key_epoch(pb::RunKeyEpochRequest {})
        .await
        .expect("epoch");
    assert_eq!(
        detokenize(&mut tokens, &bob).await.expect("after epoch"),
        BOB_CARD
    );

    drop((records, tokens, index, rights, channel, store));
    let vault = vault.restart().await;
    let mut tokens = TokenServiceClient::new(vault.channel().await);
    let gone = detokenize(&mut tokens, &alice)
        .await
        .expect_err("still erased");
    assert_reason(&gone, Code::NotFound, "TOKEN_NOT_FOUND");
    assert_eq!(detokenize(&mut tokens, &bob).await.expect("bob"), BOB_CARD);
    vault.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_before_tokens_had_subjects_is_refused_with_what_to_do() {
    use pii_vault::authz::{Authz, PeerIdentity, Policy, PurposeRules};
    use pii_vault::domain::{Category, FieldName, FieldValue, NewField, SubjectId, TenantId};
    let dir = tempfile::TempDir::new().expect("dir");
    let config = test_config(dir.path(), |_| {});
    let legacy = "tok_00112233445566778899aabbccddeeff";
    {
        // A token as an earlier version stored it: a field of one reserved subject of the
        // tenant, with no index entry to a holder.
        let store: Arc<dyn Store> = Arc::new(
            SledStore::open(&config.store_dir(), config.cache_capacity_bytes).expect("open"),
        );
        let root = config.root_source.load_for(store.as_ref()).expect("root");
        let keys = pii_vault::keyring::Keyring::open(root, store.clone()).expect("keys");
        let policy =
            Policy::parse(&Policy::dev_default_text("spiffe://test/admin")).expect("policy");
        let authz = Arc::new(Authz::fixed(policy, PurposeRules::default()));
        let vault = pii_vault::service::Vault::open(
            store.clone(),
            keys,
            authz,
            Arc::new(pii_vault::domain::SystemClock),
            pii_vault::service::VaultSettings::default(),
        )
        .expect("vault");
        let call = pii_vault::service::Call {
            caller: PeerIdentity::parse("uri:spiffe://test/admin").expect("identity"),
            request_id: "r".into(),
        };
        let acme = TenantId::parse("acme").expect("id");
        vault.create_tenant(&call, &acme).await.expect("tenant");
        vault
            .put_fields(
                &call,
                &acme,
                &SubjectId::parse("pii-vault:card-tokens").expect("id"),
                &[NewField {
                    name: FieldName::parse(legacy).expect("name"),
                    category: Category::Payment,
                    value: FieldValue::typed(5, ALICE_CARD).expect("card"),
                    indexed: false,
                    ttl: None,
                    transaction_record: false,
                    expected_version: Some(0),
                }],
            )
            .await
            .expect("put");
        store.clear_index(&acme).expect("no index entry, as then");
        store.flush().expect("flush");
    }
    let vault = TestVault::start_on(dir, config, None).await;
    let mut tokens = TokenServiceClient::new(vault.channel().await);
    let refused = detokenize(&mut tokens, legacy).await.expect_err("refused");
    assert_reason(&refused, Code::FailedPrecondition, "TOKEN_WITHOUT_SUBJECT");
    assert!(refused.message().contains("subject_id"), "{refused:?}");
    assert!(!refused.message().contains("1111"), "{refused:?}");
    let unknown = detokenize(&mut tokens, "tok_ffeeddccbbaa99887766554433221100")
        .await
        .expect_err("unknown");
    assert_reason(&unknown, Code::NotFound, "TOKEN_NOT_FOUND");
    vault.stop().await;
}

fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0') * if i % 2 == 1 { 2 } else { 1 };
            if d > 9 {
                d - 9
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

async fn tokenize_in(
    tokens: &mut TokenServiceClient<Channel>, tenant: &str, subject: &str, card: &str,
) -> String {
    tokens
        .tokenize(pb::TokenizeRequest {
            tenant_id: tenant.into(),
            subject_id: subject.into(),
            card_number: card.into(),
            idempotency_key: String::new(),
        })
        .await
        .expect("tokenize")
        .into_inner()
        .token
}

async fn detokenize_in(
    tokens: &mut TokenServiceClient<Channel>, tenant: &str, token: &str,
) -> Result<String, tonic::Status> {
    tokens
        .detokenize(pb::DetokenizeRequest {
            tenant_id: tenant.into(),
            token: token.into(),
            purpose: "billing".into(),
        })
        .await
        .map(|r| r.into_inner().card_number)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_may_choose_deterministic_and_card_shaped_tokens() {
    let vault = TestVault::start_with(|raw| {
        raw.tokens.deterministic_tenants = Some(vec!["acme".into(), "initech".into()]);
        raw.tokens.card_shaped_tenants = Some(vec!["acme".into(), "globex".into()]);
    })
    .await;
    for tenant in ["acme", "globex", "initech"] {
        create_tenant(&vault, tenant).await;
    }
    let channel = vault.channel().await;
    let mut tokens = TokenServiceClient::new(channel.clone());
    let card_shaped = |token: &str| {
        token.len() == 16
            && token.starts_with('9')
            && token.ends_with(&ALICE_CARD[12..])
            && token != ALICE_CARD
            && luhn(token)
    };

    // Deterministic and card-shaped: the same card, the same token, for every holder.
    let first = tokenize_in(&mut tokens, "acme", "alice", ALICE_CARD).await;
    assert!(card_shaped(&first), "{first}");
    assert_eq!(
        tokenize_in(&mut tokens, "acme", "alice", ALICE_CARD).await,
        first
    );
    assert_eq!(
        tokenize_in(&mut tokens, "acme", "bob", ALICE_CARD).await,
        first
    );
    let other = tokenize_in(&mut tokens, "acme", "alice", BOB_CARD).await;
    assert_ne!(other, first);
    assert!(other.ends_with(&BOB_CARD[12..]) && luhn(&other), "{other}");
    assert_eq!(
        detokenize_in(&mut tokens, "acme", &first)
            .await
            .expect("detokenize"),
        ALICE_CARD
    );
    // Held by two people, the token lives as long as one of them.
    erase(channel.clone(), "acme", "alice")
        .await
        .expect("erase");
    assert_eq!(
        detokenize_in(&mut tokens, "acme", &first)
            .await
            .expect("bob's"),
        ALICE_CARD
    );
    let gone = detokenize_in(&mut tokens, "acme", &other)
        .await
        .expect_err("alice's only");
    assert_reason(&gone, Code::NotFound, "TOKEN_NOT_FOUND");
    erase(channel.clone(), "acme", "bob").await.expect("erase");
    let gone = detokenize_in(&mut tokens, "acme", &first)
        .await
        .expect_err("no holder left");
    assert_reason(&gone, Code::NotFound, "TOKEN_NOT_FOUND");

    // Card-shaped but random: a new token each time.
    let a = tokenize_in(&mut tokens, "globex", "carol", ALICE_CARD).await;
    let b = tokenize_in(&mut tokens, "globex", "carol", ALICE_CARD).await;
    assert!(card_shaped(&a) && card_shaped(&b), "{a} {b}");
    assert_ne!(a, b, "random tokens do not repeat");
    assert_eq!(
        detokenize_in(&mut tokens, "globex", &b).await.expect("b"),
        ALICE_CARD
    );

    // Deterministic, the default shape; a new index key makes new tokens, the old one
    // still opens.
    let t = tokenize_in(&mut tokens, "initech", "dave", ALICE_CARD).await;
    assert!(t.starts_with("tok_") && t.len() == 36, "{t}");
    assert_eq!(
        tokenize_in(&mut tokens, "initech", "dave", ALICE_CARD).await,
        t
    );
    let mut records = vault.records().await;
    records
        .rotate_index_key(pb::RotateIndexKeyRequest {
            tenant_id: "initech".into(),
        })
        .await
        .expect("rotate index key");
    let after = tokenize_in(&mut tokens, "initech", "dave", ALICE_CARD).await;
    assert_ne!(after, t, "the token key rotated");
    for token in [&t, &after] {
        assert_eq!(
            detokenize_in(&mut tokens, "initech", token)
                .await
                .expect("opens"),
            ALICE_CARD
        );
    }
    vault.stop().await;
}
