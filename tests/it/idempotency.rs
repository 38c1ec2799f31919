//! Idempotency keys on PutFields and Tokenize: the same request sent again under its key
//! (a retry after a lost answer, racing copies, a batch that repeats an item, a restart in
//! between) is done once and answered the same; another request under the key is refused
//! and does nothing; keys of different callers, subjects or operations never meet.

use pb::batch_put_fields_response::Result as Written;
use pb::record_service_client::RecordServiceClient;
use pb::token_service_client::TokenServiceClient;
use pii_vault::proto::v1 as pb;
use tonic::transport::Channel;
use tonic::Code;

use crate::erasure::erase;
use crate::util::{
    all_audit_events, assert_reason, channel_as, client_for, create_tenant, get, start_with_policy,
    text, TestVault,
};

fn put_req(subject: &str, value: &str, key: &str) -> pb::PutFieldsRequest {
    pb::PutFieldsRequest {
        tenant_id: "acme".into(),
        subject_id: subject.into(),
        fields: vec![text("nick", pb::Category::Profile, value)],
        idempotency_key: key.into(),
    }
}

async fn put_once(
    records: &mut RecordServiceClient<Channel>, subject: &str, value: &str, key: &str,
) -> Result<Vec<u64>, tonic::Status> {
    records
        .put_fields(put_req(subject, value, key))
        .await
        .map(|r| r.into_inner().fields.iter().map(|f| f.version).collect())
}

async fn tokenize(
    tokens: &mut TokenServiceClient<Channel>, card: &str, key: &str,
) -> Result<String, tonic::Status> {
    tokens
        .tokenize(pb::TokenizeRequest {
            tenant_id: "acme".into(),
            subject_id: "alice".into(),
            card_number: card.into(),
            idempotency_key: key.into(),
        })
        .await
        .map(|r| r.into_inner().token)
}

async fn nick_version(records: &mut RecordServiceClient<Channel>, subject: &str) -> u64 {
    get(records, "acme", subject, &["nick"])
        .await
        .expect("read")[0]
        .version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_sent_again_under_its_key_is_written_once_and_answered_the_same() {
    // The dev policy, granting a second service everything too.
    let policy = pii_vault::authz::Policy::dev_default_text(pii_vault::certs::DEV_CLIENT_ID)
        .replace(
            "admin = [",
            "admin = [\"uri:spiffe://test/other-service\", ",
        );
    let vault = start_with_policy(&policy).await;
    create_tenant(&vault, "acme").await;
    let mut records = vault.records().await;

    assert_eq!(
        put_once(&mut records, "alice", "al", "req-1")
            .await
            .expect("first"),
        [1]
    );
    assert_eq!(
        put_once(&mut records, "alice", "al", "req-1")
            .await
            .expect("again"),
        [1],
        "the first answer"
    );
    assert_eq!(nick_version(&mut records, "alice").await, 1, "written once");

    // Another request under the key: refused, nothing written, no value in the message.
    let err = put_once(&mut records, "alice", "allie", "req-1")
        .await
        .expect_err("another request under req-1");
    assert_reason(&err, Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED");
    assert!(!err.message().contains("allie") && !err.message().contains("req-1"));
    let read = get(&mut records, "acme", "alice", &["nick"])
        .await
        .expect("read");
    assert_eq!((read[0].version, crate::util::text_of(&read[0])), (1, "al"));

    // The key is the caller's, for one subject: another subject, another caller, or
    // another key writes anew.
    assert_eq!(
        put_once(&mut records, "bob", "al", "req-1")
            .await
            .expect("bob"),
        [1]
    );
    assert_eq!(
        put_once(&mut records, "alice", "al", "req-2")
            .await
            .expect("req-2"),
        [2]
    );
    let other = client_for(&vault, "other", "spiffe://test/other-service");
    let mut other = RecordServiceClient::new(channel_as(&vault, &other).await);
    assert_eq!(
        put_once(&mut other, "alice", "al", "req-1")
            .await
            .expect("other caller"),
        [3]
    );
    // Without a key, every request writes.
    assert_eq!(
        put_once(&mut records, "alice", "al", "")
            .await
            .expect("no key"),
        [4]
    );
    assert_eq!(
        put_once(&mut records, "alice", "al", "")
            .await
            .expect("no key"),
        [5]
    );

    // A malformed key is named, never echoed.
    let err = put_once(&mut records, "alice", "al", "has space")
        .await
        .expect_err("bad key");
    let details = assert_reason(&err, Code::InvalidArgument, "INVALID_INPUT");
    let violations = details
        .bad_request()
        .expect("BadRequest")
        .field_violations
        .clone();
    assert_eq!(violations[0].field, "idempotency_key", "{violations:?}");
    assert!(!err.message().contains("has space"), "{}", err.message());

    // The answer survives a restart: it is stored with the write.
    let vault = vault.restart().await;
    let mut records = vault.records().await;
    assert_eq!(
        put_once(&mut records, "alice", "al", "req-1")
            .await
            .expect("after restart"),
        [1]
    );
    assert_eq!(nick_version(&mut records, "alice").await, 5);

    // The sent-again writes are audited as such.
    let replays = all_audit_events(&vault)
        .await
        .into_iter()
        .filter(|e| e.operation == "put_fields" && e.outcome == pb::Outcome::Ok as i32)
        .filter(|e| e.reason.contains("sent again under its idempotency key"))
        .count();
    assert_eq!(replays, 2, "one event per answer sent again");
    vault.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_copies_of_one_put_and_a_batch_repeating_it_write_it_once() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let records = vault.records().await;
    let copies: Vec<_> = (0..16)
        .map(|_| {
            let mut records = records.clone();
            tokio::spawn(async move { put_once(&mut records, "carol", "c", "race").await })
        })
        .collect();
    for copy in copies {
        assert_eq!(copy.await.expect("task").expect("put"), [1]);
    }
    let mut records = records;
    assert_eq!(nick_version(&mut records, "carol").await, 1);

    let items: Vec<pb::BatchPutFieldsRequest> = (0..40)
        .map(|i| pb::BatchPutFieldsRequest {
            put: Some(put_req(&format!("d{}", i % 4), "d", "batch")),
        })
        .collect();
    let mut stream = records
        .batch_put_fields(tokio_stream::iter(items))
        .await
        .expect("stream")
        .into_inner();
    let mut answered = 0;
    while let Some(r) = stream.message().await.expect("item") {
        match r.result {
            Some(Written::Written(w)) => assert_eq!(w.fields[0].version, 1, "{}", r.index),
            other => panic!("item {}: {other:?}", r.index),
        }
        answered += 1;
    }
    assert_eq!(answered, 40);
    for d in 0..4 {
        assert_eq!(nick_version(&mut records, &format!("d{d}")).await, 1);
    }
    vault.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_tokenized_again_under_its_key_gets_the_first_token() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut tokens = TokenServiceClient::new(vault.channel().await);
    const CARD: &str = "4242424242424242";

    let first = tokenize(&mut tokens, CARD, "tok-1").await.expect("first");
    assert_eq!(
        tokenize(&mut tokens, CARD, "tok-1").await.expect("again"),
        first
    );
    let err = tokenize(&mut tokens, "5555555555554444", "tok-1")
        .await
        .expect_err("another card under tok-1");
    assert_reason(&err, Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED");
    assert!(!err.message().contains("5555"), "{}", err.message());

    // Without a key, or with another, a new token each time.
    let a = tokenize(&mut tokens, CARD, "").await.expect("no key");
    let b = tokenize(&mut tokens, CARD, "").await.expect("no key");
    let c = tokenize(&mut tokens, CARD, "tok-2").await.expect("tok-2");
    let all = [&first, &a, &b, &c];
    for (i, x) in all.iter().enumerate() {
        for y in &all[i + 1..] {
            assert_ne!(x, y);
        }
    }
    // A PutFields key never answers a Tokenize request.
    let mut records = vault.records().await;
    put_once(&mut records, "alice", "al", "shared")
        .await
        .expect("put");
    tokenize(&mut tokens, CARD, "shared")
        .await
        .expect("the same key for another operation");

    let card = tokens
        .detokenize(pb::DetokenizeRequest {
            tenant_id: "acme".into(),
            token: first,
            purpose: "billing".into(),
        })
        .await
        .expect("detokenize")
        .into_inner()
        .card_number;
    assert_eq!(card, CARD);
    vault.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_subject_is_not_answered_from_its_idempotency_record() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut records = vault.records().await;
    put_once(&mut records, "erin", "e", "req-e")
        .await
        .expect("put");
    erase(vault.channel().await, "acme", "erin")
        .await
        .expect("erase");
    let err = put_once(&mut records, "erin", "e", "req-e")
        .await
        .expect_err("sent again after the erasure");
    assert_reason(&err, Code::NotFound, "SUBJECT_ERASED");
    vault.stop().await;
}

#[tokio::test]
async fn the_retention_sweep_prunes_records_past_their_24_hours_only() {
    use pii_vault::domain::{
        Category, FieldValue, IdempotencyKey, NewField, SubjectId, TenantId, Timestamp,
    };
    const HOUR: u64 = 3_600_000_000;
    let dir = tempfile::TempDir::new().expect("dir");
    let (vault, clock, store, call) = crate::util::clocked_vault(&dir);
    let acme = TenantId::parse("acme").expect("id");
    vault.create_tenant(&call, &acme).await.expect("tenant");
    let nick = [NewField {
        name: pii_vault::domain::FieldName::parse("nick").expect("name"),
        category: Category::Profile,
        value: FieldValue::Text("n".into()),
        indexed: false,
        ttl: None,
        transaction_record: false,
        expected_version: None,
    }];
    let put = |subject: &'static str, key: &'static str| {
        let (vault, call, acme, nick) = (&vault, &call, &acme, &nick);
        async move {
            let subject = SubjectId::parse(subject).expect("id");
            let key = IdempotencyKey::parse(key).expect("key");
            vault
                .put_fields_once(call, acme, &subject, nick, Some(&key))
                .await
                .expect("put")[0]
                .version
        }
    };

    assert_eq!(put("alice", "k1").await, 1);
    clock.advance_micros(23 * HOUR);
    vault.sweep_retention().await.expect("sweep");
    assert_eq!(put("alice", "k1").await, 1, "still answered after 23 hours");
    assert_eq!(put("bob", "k2").await, 1);
    clock.advance_micros(2 * HOUR);
    vault.sweep_retention().await.expect("sweep");
    // Alice's record (24 hours old) was pruned by the sweep; Bob's (2 hours) is left.
    assert_eq!(
        store
            .prune_idempotency(&acme, Timestamp(u64::MAX / 2), 10)
            .expect("prune"),
        1
    );
    assert_eq!(
        put("alice", "k1").await,
        2,
        "past 24 hours the key writes anew"
    );
}
