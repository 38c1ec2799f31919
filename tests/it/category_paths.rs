//! Issue 16, "every path checks the categories it touches": one named regression test per
//! failure the issue quotes. Each sets up its callers under `POLICY`.

use pii_vault::proto::v1 as pb;
use tonic::transport::Channel;
use tonic::Code;

use crate::rights::rights;
use crate::util::{channel_as, client_for, put, start_with_policy, text, TestVault};

const POLICY: &str = r#"
[[rules]]
name = "admin"
who = ["uri:spiffe://test/admin"]
actions = ["tenant_admin", "restrict", "consent"]

[[rules]]
name = "billing"
who = ["uri:spiffe://test/billing"]
actions = ["read", "write", "delete", "find"]
categories = ["payment", "account"]
purposes = ["billing"]
render = "reveal"

[[rules]]
name = "profile-writer"
who = ["uri:spiffe://test/profile"]
actions = ["read", "write", "delete"]
categories = ["profile"]
purposes = ["support"]

[[rules]]
name = "profile-finder"
who = ["uri:spiffe://test/profile-finder"]
actions = ["find"]
categories = ["profile"]
purposes = ["support"]

[[rules]]
name = "finder"
who = ["uri:spiffe://test/finder"]
actions = ["find"]
purposes = ["support", "marketing"]

[[rules]]
name = "reader"
who = ["uri:spiffe://test/reader"]
actions = ["read"]
purposes = ["support"]

[[rules]]
name = "lister"
who = ["uri:spiffe://test/lister"]
actions = ["list"]
"#;

/// The vault under `POLICY`, tenant `acme` created, and a channel for a named caller.
struct Setup {
    vault: TestVault,
}

impl Setup {
    async fn new() -> Self {
        let vault = start_with_policy(POLICY).await;
        let s = Self { vault };
        pb::tenant_service_client::TenantServiceClient::new(s.as_("admin").await)
            .create_tenant(pb::CreateTenantRequest {
                tenant_id: "acme".into(),
            })
            .await
            .expect("create tenant");
        s
    }

    async fn as_(&self, who: &str) -> Channel {
        let certs = client_for(&self.vault, who, &format!("spiffe://test/{who}"));
        channel_as(&self.vault, &certs).await
    }
}

fn records(c: &Channel) -> pb::record_service_client::RecordServiceClient<Channel> {
    pb::record_service_client::RecordServiceClient::new(c.clone())
}

fn typed(
    name: &str, category: pb::Category, kind: pb::value::Kind, indexed: bool,
) -> pb::FieldInput {
    pb::FieldInput {
        expected_version: None,
        indexed,
        ttl_seconds: 0,
        transaction_record: false,
        name: name.into(),
        category: category as i32,
        value: Some(pb::Value { kind: Some(kind) }),
    }
}

fn email(category: pb::Category, address: &str) -> pb::FieldInput {
    typed(
        "email",
        category,
        pb::value::Kind::Email(address.into()),
        true,
    )
}

async fn find(
    c: &Channel, field: &str, kind: pb::value::Kind, purpose: &str,
) -> Result<Vec<String>, tonic::Status> {
    records(c)
        .find_subjects(pb::FindSubjectsRequest {
            tenant_id: "acme".into(),
            field_name: field.into(),
            value: Some(pb::Value { kind: Some(kind) }),
            purpose: purpose.into(),
        })
        .await
        .map(|r| r.into_inner().subject_ids)
}

async fn billing_card_field(billing: &Channel) -> pb::Field {
    let fields = records(billing)
        .get_fields(pb::GetFieldsRequest {
            tenant_id: "acme".into(),
            subject_id: "alice".into(),
            field_names: vec!["iban".into()],
            purpose: "billing".into(),
        })
        .await
        .expect("billing reads")
        .into_inner()
        .fields;
    fields.into_iter().next().expect("the field is there")
}

/// The setup, the billing and profile-writer channels, and alice's payment field `iban`
/// written by billing.
async fn with_payment_field() -> (Setup, Channel, Channel) {
    let s = Setup::new().await;
    let (billing, profile) = (s.as_("billing").await, s.as_("profile").await);
    let iban = text("iban", pb::Category::Payment, "DE89370400440532013000");
    put(&mut records(&billing), "acme", "alice", vec![iban])
        .await
        .expect("billing writes");
    (s, billing, profile)
}

/// Postmortem: `PutFields` checked only the new value's category, so a profile-only writer
/// replaced a payment field by writing a profile field of the same name.
#[tokio::test]
async fn overwrite_of_a_payment_field_by_a_profile_only_writer_is_refused() {
    let (_s, billing, profile) = with_payment_field().await;
    let err = put(
        &mut records(&profile),
        "acme",
        "alice",
        vec![text("iban", pb::Category::Profile, "attacker-value")],
    )
    .await
    .expect_err("a profile writer may not replace a payment field");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("payment"), "{}", err.message());
    assert!(!err.message().contains("attacker-value"));
    let field = billing_card_field(&billing).await;
    assert_eq!(field.category, pb::Category::Payment as i32);
    assert_eq!(field.version, 1, "the field is unchanged");
    assert_eq!(crate::util::text_of(&field), "DE89370400440532013000");
}

/// Postmortem: after the overwrite above the attacker deleted the field; `DeleteFields`
/// must refuse a payment field to a profile-only writer.
#[tokio::test]
async fn delete_of_a_payment_field_by_a_profile_only_writer_is_refused() {
    let (_s, billing, profile) = with_payment_field().await;
    let err = records(&profile)
        .delete_fields(pb::DeleteFieldsRequest {
            tenant_id: "acme".into(),
            subject_id: "alice".into(),
            field_names: vec!["iban".into()],
        })
        .await
        .expect_err("a profile writer may not delete a payment field");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        billing_card_field(&billing).await.version,
        1,
        "the field is unchanged"
    );
}

/// Postmortem: `FindSubjects` ignored categories, so a caller who may not read a payment
/// field confirmed guessed values of it. It now confirms nothing: a match in a category
/// the caller's grant does not cover is never returned (a refusal only on a match would
/// itself confirm the guess).
#[tokio::test]
async fn find_subjects_by_a_caller_without_the_category_grant_confirms_nothing() {
    let s = Setup::new().await;
    let billing = s.as_("billing").await;
    put(
        &mut records(&billing),
        "acme",
        "alice",
        vec![email(pb::Category::Payment, "alice@example.com")],
    )
    .await
    .expect("billing writes");
    let guess = || pb::value::Kind::Email("alice@example.com".into());
    let found = find(&s.as_("profile-finder").await, "email", guess(), "support")
        .await
        .expect("find answers");
    assert!(
        found.is_empty(),
        "a profile-only finder confirmed a payment value: {found:?}"
    );
    let found = find(&s.as_("finder").await, "email", guess(), "support")
        .await
        .expect("find answers");
    assert_eq!(found, ["alice"], "a finder granted every category finds it");
}

/// Postmortem: `FindSubjects` ignored restriction and consent.
#[tokio::test]
async fn find_subjects_skips_restricted_and_consent_withdrawn_subjects() {
    let s = Setup::new().await;
    let (billing, admin, finder) = (
        s.as_("billing").await,
        s.as_("admin").await,
        s.as_("finder").await,
    );
    for subject in ["restricted", "withdrawn", "plain"] {
        put(
            &mut records(&billing),
            "acme",
            subject,
            vec![email(pb::Category::Account, "shared@example.com")],
        )
        .await
        .expect("put");
    }
    for subject in ["withdrawn", "plain"] {
        rights(&admin)
            .set_consent(pb::SetConsentRequest {
                tenant_id: "acme".into(),
                subject_id: subject.into(),
                purpose: "marketing".into(),
                granted: subject == "plain",
                source: "form-1".into(),
            })
            .await
            .expect("consent");
    }
    rights(&admin)
        .restrict_subject(pb::RestrictSubjectRequest {
            tenant_id: "acme".into(),
            subject_id: "restricted".into(),
        })
        .await
        .expect("restrict");
    let value = || pb::value::Kind::Email("shared@example.com".into());
    let found = find(&finder, "email", value(), "support")
        .await
        .expect("find");
    assert_eq!(
        found,
        ["plain", "withdrawn"],
        "the restricted subject is left out"
    );
    let found = find(&finder, "email", value(), "marketing")
        .await
        .expect("find");
    assert_eq!(
        found,
        ["plain"],
        "only the subject that consented to marketing"
    );
}

/// Postmortem: an indexed card number plus the `whole` render left ~10^5 guesses.
#[tokio::test]
async fn card_numbers_cannot_be_indexed_or_looked_up() {
    let s = Setup::new().await;
    let billing = s.as_("billing").await;
    let card = || pb::value::Kind::CardNumber("4242 4242 4242 4242".into());
    let err = put(
        &mut records(&billing),
        "acme",
        "alice",
        vec![typed("card", pb::Category::Payment, card(), true)],
    )
    .await
    .expect_err("an indexed card number is refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(!err.message().contains("4242"), "{}", err.message());
    put(
        &mut records(&billing),
        "acme",
        "alice",
        vec![typed("card", pb::Category::Payment, card(), false)],
    )
    .await
    .expect("an unindexed card number is stored");
    let err = find(&billing, "card", card(), "billing")
        .await
        .expect_err("card numbers cannot be looked up");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

/// Postmortem: lookups returned reserved ids, such as a subject's legal shadow
/// (`pii-vault:legal:<id>`) that holds its payment transaction records.
#[tokio::test]
async fn lookups_never_return_reserved_ids() {
    let s = Setup::new().await;
    let billing = s.as_("billing").await;
    let mut record = email(pb::Category::Payment, "payer@example.com");
    record.transaction_record = true;
    put(&mut records(&billing), "acme", "alice", vec![record])
        .await
        .expect("a transaction record goes to the legal shadow");
    let found = find(
        &billing,
        "email",
        pb::value::Kind::Email("payer@example.com".into()),
        "billing",
    )
    .await
    .expect("find");
    assert!(
        found.iter().all(|s| !s.starts_with("pii-vault:")),
        "a reserved id was returned: {found:?}"
    );
}

/// Postmortem: `ListSubjects` (subject ids may be email addresses) needed only `read`.
#[tokio::test]
async fn list_subjects_needs_the_list_action() {
    let s = Setup::new().await;
    put(
        &mut records(&s.as_("billing").await),
        "acme",
        "alice@example.com",
        vec![text("iban", pb::Category::Payment, "x")],
    )
    .await
    .expect("put");
    let list = |c: Channel| async move {
        records(&c)
            .list_subjects(pb::ListSubjectsRequest {
                tenant_id: "acme".into(),
                page_size: 10,
                page_token: String::new(),
            })
            .await
            .map(|r| r.into_inner().subject_ids)
    };
    let err = list(s.as_("reader").await)
        .await
        .expect_err("read is not list");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let listed = list(s.as_("lister").await).await.expect("list lists");
    assert_eq!(listed, ["alice@example.com"]);
}

/// Postmortem: an unknown tenant answered NOT_FOUND before the policy decided, telling a
/// caller without any grant which tenants exist.
#[tokio::test]
async fn an_unknown_tenant_answers_permission_denied_to_a_caller_without_a_grant() {
    let s = Setup::new().await;
    let nobody = s.as_("nobody").await;
    for tenant in ["acme", "no-such-tenant"] {
        let err = records(&nobody)
            .get_fields(pb::GetFieldsRequest {
                tenant_id: tenant.into(),
                subject_id: "alice".into(),
                field_names: vec![],
                purpose: "support".into(),
            })
            .await
            .expect_err("no grant");
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "get_fields on {tenant}: {err:?}"
        );
        let err = records(&nobody)
            .list_subjects(pb::ListSubjectsRequest {
                tenant_id: tenant.into(),
                page_size: 10,
                page_token: String::new(),
            })
            .await
            .expect_err("no grant");
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "list_subjects on {tenant}: {err:?}"
        );
        let err = rights(&nobody)
            .list_consents(pb::ListConsentsRequest {
                tenant_id: tenant.into(),
                subject_id: "alice".into(),
            })
            .await
            .expect_err("no grant");
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "list_consents on {tenant}: {err:?}"
        );
    }
}
