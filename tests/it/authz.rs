//! Authorization: a matrix of roles and RPCs, reloads on open connections, masking by
//! grant, typed validation, blind-index lookup and card tokens.

use pii_vault::client::ClientCerts;
use pii_vault::proto::v1 as pb;
use tonic::transport::Channel;
use tonic::Code;

use crate::erasure::erase;
use crate::util::{
    audit_events, by_operation, channel_as, client_for, put, start_with_policy,
    start_with_policy_and, text, TestVault,
};

const POLICY: &str = r#"
[roles]
billing = ["uri:spiffe://test/billing"]
support = ["uri:spiffe://test/support"]
analyst = ["uri:spiffe://test/analyst"]
eraser = ["uri:spiffe://test/eraser"]
security = ["uri:spiffe://test/security"]

[[rules]]
name = "billing"
who = ["role:billing"]
actions = ["read", "write", "delete", "tokenize", "detokenize", "list"]
categories = ["payment", "account"]
purposes = ["billing"]
render = "reveal"

[[rules]]
name = "support"
who = ["role:support"]
actions = ["read", "find", "list"]
purposes = ["support"]
render = "masked"

[[rules]]
name = "analyst"
who = ["role:analyst"]
actions = ["read", "detokenize", "list"]
categories = ["payment"]
purposes = ["analysis"]
render = "whole"

[[rules]]
name = "eraser"
who = ["role:eraser"]
actions = ["erase"]

[[rules]]
name = "security"
who = ["role:security"]
actions = ["tenant_admin", "key_admin", "audit_read", "policy_admin"]
"#;

struct Roles {
    billing: ClientCerts,
    support: ClientCerts,
    analyst: ClientCerts,
    eraser: ClientCerts,
    security: ClientCerts,
}

fn roles(vault: &TestVault) -> Roles {
    Roles {
        billing: client_for(vault, "billing", "spiffe://test/billing"),
        support: client_for(vault, "support", "spiffe://test/support"),
        analyst: client_for(vault, "analyst", "spiffe://test/analyst"),
        eraser: client_for(vault, "eraser", "spiffe://test/eraser"),
        security: client_for(vault, "security", "spiffe://test/security"),
    }
}

fn records(c: &Channel) -> pb::record_service_client::RecordServiceClient<Channel> {
    pb::record_service_client::RecordServiceClient::new(c.clone())
}

fn value(kind: pb::value::Kind) -> Option<pb::Value> {
    Some(pb::Value { kind: Some(kind) })
}

fn card_field() -> pb::FieldInput {
    pb::FieldInput {
        expected_version: None,
        indexed: false,
        ttl_seconds: 0,
        transaction_record: false,
        name: "card".into(),
        category: pb::Category::Payment as i32,
        value: value(pb::value::Kind::CardNumber("4242 4242 4242 4242".into())),
    }
}

fn email_field(email: &str) -> pb::FieldInput {
    pb::FieldInput {
        expected_version: None,
        indexed: false,
        ttl_seconds: 0,
        transaction_record: false,
        name: "email".into(),
        category: pb::Category::Account as i32,
        value: value(pb::value::Kind::Email(email.into())),
    }
}

async fn get_as(
    c: &Channel, subject: &str, names: &[&str], purpose: &str,
) -> Result<Vec<pb::Field>, tonic::Status> {
    records(c)
        .get_fields(pb::GetFieldsRequest {
            tenant_id: "acme".into(),
            subject_id: subject.into(),
            field_names: names.iter().map(|s| (*s).to_owned()).collect(),
            purpose: purpose.into(),
        })
        .await
        .map(|r| r.into_inner().fields)
}

fn shown(f: &pb::Field) -> String {
    match f.value.as_ref().and_then(|v| v.kind.clone()) {
        Some(
            pb::value::Kind::Text(s) | pb::value::Kind::CardNumber(s) | pb::value::Kind::Email(s),
        ) => s,
        other => format!("{other:?}"),
    }
}

/// One RPC of the matrix: returns the status code it got (Ok on success).
async fn run(call: &str, c: &Channel, n: usize) -> Code {
    use pb::*;
    let t = "acme".to_owned();
    let r = match call {
        "create_tenant" => tenant_service_client::TenantServiceClient::new(c.clone())
            .create_tenant(CreateTenantRequest {
                tenant_id: format!("t{n}"),
            })
            .await
            .map(drop),
        "get_tenant" => tenant_service_client::TenantServiceClient::new(c.clone())
            .get_tenant(GetTenantRequest { tenant_id: t })
            .await
            .map(drop),
        "list_tenants" => tenant_service_client::TenantServiceClient::new(c.clone())
            .list_tenants(ListTenantsRequest::default())
            .await
            .map(drop),
        "put_fields" => put(&mut records(c), "acme", "alice", vec![card_field()])
            .await
            .map(drop),
        "get_fields_billing" => get_as(c, "alice", &["card"], "billing").await.map(drop),
        "get_fields_support" => get_as(c, "alice", &["card"], "support").await.map(drop),
        "delete_fields" => records(c)
            .delete_fields(DeleteFieldsRequest {
                tenant_id: t,
                subject_id: "alice".into(),
                field_names: vec!["nothing_here".into()],
            })
            .await
            .map(drop),
        "list_subjects" => records(c)
            .list_subjects(ListSubjectsRequest {
                tenant_id: t,
                ..Default::default()
            })
            .await
            .map(drop),
        "find_subjects" => records(c)
            .find_subjects(FindSubjectsRequest {
                tenant_id: t,
                field_name: "email".into(),
                value: value(value::Kind::Email("alice@example.com".into())),
                purpose: "support".into(),
            })
            .await
            .map(drop),
        "rotate_index_key" => records(c)
            .rotate_index_key(RotateIndexKeyRequest { tenant_id: t })
            .await
            .map(drop),
        "erase_subject" => erase(c.clone(), "acme", &format!("victim{n}"))
            .await
            .map(drop),
        "query_audit" => audit_service_client::AuditServiceClient::new(c.clone())
            .query_audit_log(QueryAuditLogRequest {
                limit: 1,
                ..Default::default()
            })
            .await
            .map(drop),
        "verify_audit" => audit_service_client::AuditServiceClient::new(c.clone())
            .verify_audit_log(VerifyAuditLogRequest {})
            .await
            .map(drop),
        "prune_audit" => audit_service_client::AuditServiceClient::new(c.clone())
            .prune_audit_log(PruneAuditLogRequest::default())
            .await
            .map(drop),
        "reload_policy" => admin_service_client::AdminServiceClient::new(c.clone())
            .reload_policy(ReloadPolicyRequest {})
            .await
            .map(drop),
        "tokenize" => token_service_client::TokenServiceClient::new(c.clone())
            .tokenize(TokenizeRequest {
                tenant_id: t,
                subject_id: "alice".into(),
                card_number: "4111 1111 1111 1111".into(),
                idempotency_key: String::new(),
            })
            .await
            .map(drop),
        other => panic!("unknown call {other}"),
    };
    r.err().map_or(Code::Ok, |s| s.code())
}

#[tokio::test]
async fn every_role_gets_exactly_its_grants_and_denials_are_audited() {
    // One event per denial: past the first few of a window an identity's denials would be
    // summarised (see `abuse.rs`), so the window's allowance is raised here.
    let vault = start_with_policy_and(POLICY, |raw| {
        raw.audit.denial_events_per_window = Some(1000);
    })
    .await;
    let r = roles(&vault);
    let security = channel_as(&vault, &r.security).await;
    let billing = channel_as(&vault, &r.billing).await;
    run("create_tenant", &security, 0).await;
    pb::tenant_service_client::TenantServiceClient::new(security.clone())
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .expect("acme");
    put(
        &mut records(&billing),
        "acme",
        "alice",
        vec![card_field(), email_field("alice@example.com")],
    )
    .await
    .expect("seed alice");
    // One subject per possible erase call (the counter below numbers every call).
    for i in 0..100 {
        put(
            &mut records(&billing),
            "acme",
            &format!("victim{i}"),
            vec![card_field()],
        )
        .await
        .expect("seed");
    }
    // (call, roles allowed) over billing, support, analyst, eraser, security.
    let matrix: [(&str, [bool; 5]); 17] = [
        ("create_tenant", [false, false, false, false, true]),
        ("get_tenant", [false, false, false, false, true]),
        ("list_tenants", [false, false, false, false, true]),
        ("put_fields", [true, false, false, false, false]),
        ("get_fields_billing", [true, false, false, false, false]),
        ("get_fields_support", [false, true, false, false, false]),
        ("delete_fields", [true, false, false, false, false]),
        ("list_subjects", [true, true, true, false, false]),
        ("find_subjects", [false, true, false, false, false]),
        ("rotate_index_key", [false, false, false, false, true]),
        ("erase_subject", [false, false, false, true, false]),
        ("query_audit", [false, false, false, false, true]),
        ("verify_audit", [false, false, false, false, true]),
        ("prune_audit", [false, false, false, false, true]),
        ("reload_policy", [false, false, false, false, true]),
        ("tokenize", [true, false, false, false, false]),
        ("list_subjects", [true, true, true, false, false]),
    ];
    let channels = [
        billing.clone(),
        channel_as(&vault, &r.support).await,
        channel_as(&vault, &r.analyst).await,
        channel_as(&vault, &r.eraser).await,
        security.clone(),
    ];
    let mut denied = 0;
    let mut n = 1;
    for (call, allowed) in matrix {
        for (role, channel) in channels.iter().enumerate() {
            n += 1;
            let code = run(call, channel, n).await;
            if allowed[role] {
                assert_eq!(code, Code::Ok, "{call} as role #{role} should succeed");
            } else {
                assert_eq!(
                    code,
                    Code::PermissionDenied,
                    "{call} as role #{role} should be denied"
                );
                denied += 1;
            }
        }
    }
    // Every denial is in the audit log, as denied, with the caller.
    let limit_all = pb::QueryAuditLogRequest {
        limit: 100_000,
        ..Default::default()
    };
    let denials: Vec<_> = audit_events(&security, limit_all)
        .await
        .into_iter()
        .filter(|e| e.outcome == pb::Outcome::Denied as i32)
        .collect();
    assert_eq!(denials.len(), denied, "one denied event per refused call");
    assert!(
        denials
            .iter()
            .all(|e| e.caller.starts_with("uri:spiffe://test/")
                && e.reason.contains("no rule grants"))
    );
    // Allowed events record the rule that decided.
    let ok = audit_events(&security, by_operation("tokenize")).await;
    assert!(ok
        .iter()
        .any(|e| e.outcome == pb::Outcome::Ok as i32 && e.rule == "billing"));
}

#[tokio::test]
async fn a_reload_that_removes_a_grant_applies_to_the_next_call_on_an_open_connection() {
    let vault = start_with_policy(POLICY).await;
    let r = roles(&vault);
    let security = channel_as(&vault, &r.security).await;
    let billing = channel_as(&vault, &r.billing).await;
    run("create_tenant", &security, 0).await;
    pb::tenant_service_client::TenantServiceClient::new(security.clone())
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .expect("acme");
    put(&mut records(&billing), "acme", "alice", vec![card_field()])
        .await
        .expect("seed");
    assert!(get_as(&billing, "alice", &["card"], "billing")
        .await
        .is_ok());

    let admin = || pb::admin_service_client::AdminServiceClient::new(security.clone());
    // A broken policy is refused and the old one stays.
    std::fs::write(&vault.config.policy_file, "[[rules]]\nname = 1").expect("write");
    let err = admin()
        .reload_policy(pb::ReloadPolicyRequest {})
        .await
        .expect_err("bad policy");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(get_as(&billing, "alice", &["card"], "billing")
        .await
        .is_ok());

    let without_billing = POLICY.replace(
        "actions = [\"read\", \"write\", \"delete\", \"tokenize\", \"detokenize\", \"list\"]",
        "actions = [\"write\"]",
    );
    std::fs::write(&vault.config.policy_file, without_billing).expect("write");
    admin()
        .reload_policy(pb::ReloadPolicyRequest {})
        .await
        .expect("reload");
    let err = get_as(&billing, "alice", &["card"], "billing")
        .await
        .expect_err("grant removed");
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn cards_are_masked_by_grant_and_typed_values_are_validated() {
    let vault = start_with_policy(POLICY).await;
    let r = roles(&vault);
    let security = channel_as(&vault, &r.security).await;
    pb::tenant_service_client::TenantServiceClient::new(security.clone())
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .expect("acme");
    let billing = channel_as(&vault, &r.billing).await;
    put(
        &mut records(&billing),
        "acme",
        "alice",
        vec![card_field(), email_field("Alice@Example.com")],
    )
    .await
    .expect("seed");
    let full = get_as(&billing, "alice", &["card"], "billing")
        .await
        .expect("billing");
    assert_eq!(shown(&full[0]), "4242424242424242");
    assert_eq!(full[0].rendering, pb::Rendering::Revealed as i32);
    let analyst = channel_as(&vault, &r.analyst).await;
    let whole = get_as(&analyst, "alice", &["card"], "analysis")
        .await
        .expect("analyst");
    assert_eq!(shown(&whole[0]), "424242******4242");
    let support = channel_as(&vault, &r.support).await;
    let masked = get_as(&support, "alice", &[], "support")
        .await
        .expect("support");
    let by_name = |n: &str| masked.iter().find(|f| f.name == n).map(shown);
    assert_eq!(by_name("card").as_deref(), Some("**** 4242"));
    assert_eq!(by_name("email").as_deref(), Some("a***@example.com"));

    let bad = |name: &str, category: pb::Category, kind: pb::value::Kind| pb::FieldInput {
        expected_version: None,
        indexed: false,
        ttl_seconds: 0,
        transaction_record: false,
        name: name.into(),
        category: category as i32,
        value: value(kind),
    };
    use pb::value::Kind;
    let cases = [
        (
            "luhn",
            bad(
                "card",
                pb::Category::Payment,
                Kind::CardNumber("4242 4242 4242 4241".into()),
            ),
        ),
        (
            "cvv",
            bad("card_cvv", pb::Category::Payment, Kind::Text("123".into())),
        ),
        (
            "cvc",
            bad("cvc", pb::Category::Payment, Kind::Text("123".into())),
        ),
        (
            "email",
            bad(
                "email",
                pb::Category::Account,
                Kind::Email("alice at example".into()),
            ),
        ),
        (
            "phone",
            bad(
                "phone",
                pb::Category::Account,
                Kind::Phone("0151 234".into()),
            ),
        ),
        (
            "iban",
            bad(
                "iban",
                pb::Category::Payment,
                Kind::Iban("DE88370400440532013000".into()),
            ),
        ),
        (
            "date",
            bad(
                "dob",
                pb::Category::Account,
                Kind::Date("2023-02-30".into()),
            ),
        ),
    ];
    for (case, field) in cases {
        let err = put(&mut records(&billing), "acme", "alice", vec![field])
            .await
            .expect_err(case);
        assert_eq!(err.code(), Code::InvalidArgument, "{case}: {err:?}");
        for secret in ["4241", "123", "alice at", "0151", "DE88", "2023-02-30"] {
            assert!(
                !err.message().contains(secret),
                "{case} echoes input: {}",
                err.message()
            );
        }
    }
    let ok = [
        bad(
            "phone",
            pb::Category::Account,
            Kind::Phone("+49 (151) 234-5678".into()),
        ),
        bad(
            "iban",
            pb::Category::Payment,
            Kind::Iban("DE89 3704 0044 0532 0130 00".into()),
        ),
    ];
    put(&mut records(&billing), "acme", "alice", ok.to_vec())
        .await
        .expect("valid typed values");
    let stored = get_as(&billing, "alice", &["iban"], "billing")
        .await
        .expect("iban");
    assert_eq!(
        stored[0].value.as_ref().and_then(|v| v.kind.clone()),
        Some(Kind::Iban("DE89370400440532013000".into()))
    );
}

#[tokio::test]
async fn lookup_by_email_normalises_forgets_erased_subjects_and_survives_key_rotation() {
    let vault = TestVault::start().await;
    crate::util::create_tenant(&vault, "acme").await;
    let c = vault.channel().await;
    put(
        &mut records(&c),
        "acme",
        "alice",
        vec![email_field("Alice@Example.com")],
    )
    .await
    .expect("alice");
    put(
        &mut records(&c),
        "acme",
        "bob",
        vec![
            email_field("bob@example.com"),
            text("nick", pb::Category::Profile, "Bobby"),
        ],
    )
    .await
    .expect("bob");
    let mut nick = text("nick", pb::Category::Profile, "  Carol C ");
    nick.indexed = true;
    put(&mut records(&c), "acme", "carol", vec![nick])
        .await
        .expect("carol");
    let find = |field: &str, kind: pb::value::Kind| {
        let c = c.clone();
        let field = field.to_owned();
        async move {
            records(&c)
                .find_subjects(pb::FindSubjectsRequest {
                    tenant_id: "acme".into(),
                    field_name: field,
                    value: value(kind),
                    purpose: "support".into(),
                })
                .await
                .expect("find")
                .into_inner()
                .subject_ids
        }
    };
    use pb::value::Kind;
    assert_eq!(
        find("email", Kind::Email("  ALICE@example.COM ".into())).await,
        ["alice"]
    );
    assert_eq!(find("nick", Kind::Text("carol c".into())).await, ["carol"]);
    assert!(
        find("nick", Kind::Text("bobby".into())).await.is_empty(),
        "not indexed"
    );
    // Overwriting a value moves its entry.
    put(
        &mut records(&c),
        "acme",
        "bob",
        vec![email_field("robert@example.com")],
    )
    .await
    .expect("rename");
    assert!(find("email", Kind::Email("bob@example.com".into()))
        .await
        .is_empty());
    assert_eq!(
        find("email", Kind::Email("robert@example.com".into())).await,
        ["bob"]
    );

    let reindexed = records(&c)
        .rotate_index_key(pb::RotateIndexKeyRequest {
            tenant_id: "acme".into(),
        })
        .await
        .expect("rotate")
        .into_inner()
        .reindexed;
    assert_eq!(reindexed, 3);
    assert_eq!(
        find("email", Kind::Email("alice@example.com".into())).await,
        ["alice"]
    );
    assert_eq!(find("nick", Kind::Text("Carol C".into())).await, ["carol"]);

    erase(c.clone(), "acme", "alice").await.expect("erase");
    assert!(find("email", Kind::Email("alice@example.com".into()))
        .await
        .is_empty());
    drop(c);
    let vault = vault.restart().await;
    let c = vault.channel().await;
    let after_restart = records(&c)
        .find_subjects(pb::FindSubjectsRequest {
            tenant_id: "acme".into(),
            field_name: "email".into(),
            value: value(Kind::Email("robert@example.com".into())),
            purpose: "support".into(),
        })
        .await
        .expect("find")
        .into_inner()
        .subject_ids;
    assert_eq!(after_restart, ["bob"]);
}

#[tokio::test]
async fn tokens_round_trip_and_detokenize_needs_the_reveal_grant() {
    let vault = start_with_policy(POLICY).await;
    let r = roles(&vault);
    let security = channel_as(&vault, &r.security).await;
    pb::tenant_service_client::TenantServiceClient::new(security.clone())
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .expect("acme");
    let billing = channel_as(&vault, &r.billing).await;
    let tokens = |c: &Channel| pb::token_service_client::TokenServiceClient::new(c.clone());
    let t = tokens(&billing)
        .tokenize(pb::TokenizeRequest {
            tenant_id: "acme".into(),
            subject_id: "alice".into(),
            card_number: "4111-1111-1111-1111".into(),
            idempotency_key: String::new(),
        })
        .await
        .expect("tokenize")
        .into_inner();
    assert!(t.token.starts_with("tok_") && !t.token.contains("4111"));
    assert_eq!(t.masked, "**** 1111");
    let detok = |c: Channel, purpose: &str| {
        let token = t.token.clone();
        let purpose = purpose.to_owned();
        async move {
            tokens(&c)
                .detokenize(pb::DetokenizeRequest {
                    tenant_id: "acme".into(),
                    token,
                    purpose,
                })
                .await
                .map(|r| r.into_inner().card_number)
        }
    };
    assert_eq!(
        detok(billing.clone(), "billing").await.expect("detokenize"),
        "4111111111111111"
    );
    let analyst = channel_as(&vault, &r.analyst).await;
    assert_eq!(
        detok(analyst, "analysis")
            .await
            .expect_err("whole is not reveal")
            .code(),
        Code::PermissionDenied
    );
    let support = channel_as(&vault, &r.support).await;
    assert_eq!(
        detok(support, "support")
            .await
            .expect_err("no grant")
            .code(),
        Code::PermissionDenied
    );
    let unknown = tokens(&billing)
        .detokenize(pb::DetokenizeRequest {
            tenant_id: "acme".into(),
            token: "tok_00000000000000000000000000000000".into(),
            purpose: "billing".into(),
        })
        .await
        .expect_err("unknown token");
    assert_eq!(unknown.code(), Code::NotFound);
    let bad = tokens(&billing)
        .tokenize(pb::TokenizeRequest {
            tenant_id: "acme".into(),
            subject_id: "alice".into(),
            card_number: "4111 1111 1111 1112".into(),
            idempotency_key: String::new(),
        })
        .await
        .expect_err("luhn");
    assert_eq!(bad.code(), Code::InvalidArgument);
    // The token store is the vault's own: callers cannot address it as a subject.
    let reserved = get_as(&billing, "pii-vault:card-tokens", &[], "billing")
        .await
        .expect_err("reserved");
    assert_eq!(reserved.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn lookups_and_indexed_writes_survive_a_root_key_rotation() {
    let vault = TestVault::start().await;
    crate::util::create_tenant(&vault, "acme").await;
    let c = vault.channel().await;
    put(
        &mut records(&c),
        "acme",
        "alice",
        vec![email_field("alice@example.com")],
    )
    .await
    .expect("alice");
    let rotated = pb::key_service_client::KeyServiceClient::new(c.clone())
        .rotate_root_key(pb::RotateRootKeyRequest {})
        .await
        .expect("rotate root")
        .into_inner();
    assert!(rotated.current_version >= 2);
    // Restart: the index key must be unwrapped again, under the new root version only.
    drop(c);
    let vault = vault.restart().await;
    let c = vault.channel().await;
    put(
        &mut records(&c),
        "acme",
        "bob",
        vec![email_field("bob@example.com")],
    )
    .await
    .expect("an indexed write after the rotation");
    for (email, who) in [("alice@example.com", "alice"), ("bob@example.com", "bob")] {
        let found = records(&c)
            .find_subjects(pb::FindSubjectsRequest {
                tenant_id: "acme".into(),
                field_name: "email".into(),
                value: value(pb::value::Kind::Email(email.into())),
                purpose: "support".into(),
            })
            .await
            .expect("find")
            .into_inner()
            .subject_ids;
        assert_eq!(found, [who]);
    }
}
