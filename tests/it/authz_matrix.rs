//! The authorization matrix of issue 16: every RPC, called by four identities that must not
//! get through, answers PERMISSION_DENIED (or UNAUTHENTICATED), changes nothing, and each
//! denied call is in the audit log under the caller's typed identity:
//! - `globex`: every action, but only on tenant `globex` (the data is in `acme`; the
//!   tenant-less RPCs need a rule for all tenants);
//! - `profile`: the field actions on `acme`, but only for category `profile` (the data is
//!   `account` and `payment`); where the answer is by omission (a lookup, a read of fields
//!   it may not see) it must be empty, so a refusal confirms no guess;
//! - `nobody`: a certificate no rule names;
//! - `lookalike`: a CN-only certificate whose CN is the admin's URI identity.

use pii_vault::proto::v1 as pb;
use tonic::transport::Channel;
use tonic::Code;

use crate::util::{
    audit_events, channel_as, client_for, client_with, put, start_with_policy_and, text, TestVault,
};

const ALL_ACTIONS: &str = r#"["tenant_admin", "read", "write", "delete", "erase", "export",
    "access_report", "restrict", "consent", "key_admin", "audit_read", "policy_admin", "find",
    "tokenize", "detokenize", "list"]"#;

fn policy() -> String {
    format!(
        r#"
[[rules]]
name = "admin"
who = ["uri:spiffe://test/admin"]
actions = {ALL_ACTIONS}
render = "reveal"

[[rules]]
name = "globex-admin"
who = ["uri:spiffe://test/globex"]
actions = {ALL_ACTIONS}
tenants = ["globex"]
render = "reveal"

[[rules]]
name = "profile-only"
who = ["uri:spiffe://test/profile"]
actions = ["read", "write", "delete", "find", "tokenize", "detokenize", "export"]
tenants = ["acme"]
categories = ["profile"]
render = "reveal"
"#
    )
}

/// How a call ended: refused, or answered with nothing (`revealed` false) or something.
type Answer = Result<bool, tonic::Status>;

fn rec(c: &Channel) -> pb::record_service_client::RecordServiceClient<Channel> {
    pb::record_service_client::RecordServiceClient::new(c.clone())
}
fn rights(c: &Channel) -> pb::subject_rights_service_client::SubjectRightsServiceClient<Channel> {
    pb::subject_rights_service_client::SubjectRightsServiceClient::new(c.clone())
}
fn keys(c: &Channel) -> pb::key_service_client::KeyServiceClient<Channel> {
    pb::key_service_client::KeyServiceClient::new(c.clone())
}
fn tenants(c: &Channel) -> pb::tenant_service_client::TenantServiceClient<Channel> {
    pb::tenant_service_client::TenantServiceClient::new(c.clone())
}
fn audit(c: &Channel) -> pb::audit_service_client::AuditServiceClient<Channel> {
    pb::audit_service_client::AuditServiceClient::new(c.clone())
}

fn subject(tenant: &str) -> (String, String) {
    (tenant.to_owned(), "alice".to_owned())
}

/// The first message of a server stream (a refusal may come with it rather than the call).
async fn first<T>(
    call: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
) -> Result<Option<T>, tonic::Status> {
    call?.into_inner().message().await
}

/// A batch item's failure as the status its own call would have answered.
fn item_status(e: pb::ItemError) -> tonic::Status {
    tonic::Status::new(Code::from_i32(e.code), e.message)
}

/// Every RPC of the API, by name.
const RPCS: [&str; 32] = [
    "CreateTenant",
    "GetTenant",
    "ListTenants",
    "PutFields",
    "GetFields",
    "BatchPutFields",
    "BatchGetFields",
    "DeleteFields",
    "ListSubjects",
    "FindSubjects",
    "RotateIndexKey",
    "Tokenize",
    "Detokenize",
    "QueryAuditLog",
    "VerifyAuditLog",
    "PruneAuditLog",
    "ReloadPolicy",
    "Backup",
    "RotateTenantKey",
    "RotateRootKey",
    "GetKeyStatus",
    "GetKeyStatusOfAll",
    "RunKeyEpoch",
    "ShredTenant",
    "AccessSubject",
    "ExportSubject",
    "EraseSubject",
    "EraseSubjects",
    "RestrictSubject",
    "LiftRestriction",
    "SetConsent",
    "ListConsents",
];

/// Calls `rpc` on `c` with well-formed arguments aimed at tenant `acme`, subject `alice`.
async fn call(rpc: &str, c: &Channel, token: &str) -> Answer {
    use pb::*;
    let (tenant_id, subject_id) = subject("acme");
    let (t, s) = (tenant_id.clone(), subject_id.clone());
    match rpc {
        "CreateTenant" => tenants(c)
            .create_tenant(CreateTenantRequest {
                tenant_id: "acme2".into(),
            })
            .await
            .map(|_| true),
        "GetTenant" => tenants(c)
            .get_tenant(GetTenantRequest { tenant_id: t })
            .await
            .map(|_| true),
        "ListTenants" => tenants(c)
            .list_tenants(ListTenantsRequest::default())
            .await
            .map(|r| !r.into_inner().tenants.is_empty()),
        "PutFields" => put(
            &mut rec(c),
            "acme",
            "alice",
            vec![text("email", Category::Account, "changed@example.com")],
        )
        .await
        .map(|_| true),
        "GetFields" => rec(c)
            .get_fields(GetFieldsRequest {
                tenant_id,
                subject_id,
                field_names: vec!["email".into(), "card".into()],
                purpose: "support".into(),
            })
            .await
            .map(|r| !r.into_inner().fields.is_empty()),
        // A refused item is an ItemError in the stream, the call itself succeeding.
        "BatchPutFields" => {
            let one = tokio_stream::iter([BatchPutFieldsRequest {
                put: Some(PutFieldsRequest {
                    tenant_id,
                    subject_id,
                    fields: vec![text("email", Category::Account, "changed@example.com")],
                    idempotency_key: String::new(),
                }),
            }]);
            match first(rec(c).batch_put_fields(one).await)
                .await?
                .and_then(|r| r.result)
            {
                Some(batch_put_fields_response::Result::Error(e)) => Err(item_status(e)),
                Some(batch_put_fields_response::Result::Written(_)) => Ok(true),
                None => Ok(false),
            }
        }
        "BatchGetFields" => {
            let one = tokio_stream::iter([BatchGetFieldsRequest {
                get: Some(GetFieldsRequest {
                    tenant_id,
                    subject_id,
                    field_names: vec!["email".into(), "card".into()],
                    purpose: "support".into(),
                }),
            }]);
            match first(rec(c).batch_get_fields(one).await)
                .await?
                .and_then(|r| r.result)
            {
                Some(batch_get_fields_response::Result::Error(e)) => Err(item_status(e)),
                Some(batch_get_fields_response::Result::Read(r)) => Ok(!r.fields.is_empty()),
                None => Ok(false),
            }
        }
        "DeleteFields" => rec(c)
            .delete_fields(DeleteFieldsRequest {
                tenant_id,
                subject_id,
                field_names: vec!["email".into()],
            })
            .await
            .map(|_| true),
        "ListSubjects" => rec(c)
            .list_subjects(ListSubjectsRequest {
                tenant_id,
                ..Default::default()
            })
            .await
            .map(|r| !r.into_inner().subject_ids.is_empty()),
        "FindSubjects" => rec(c)
            .find_subjects(FindSubjectsRequest {
                tenant_id,
                field_name: "email".into(),
                value: Some(Value {
                    kind: Some(value::Kind::Email("alice@example.com".into())),
                }),
                purpose: "support".into(),
            })
            .await
            .map(|r| !r.into_inner().subject_ids.is_empty()),
        "RotateIndexKey" => rec(c)
            .rotate_index_key(RotateIndexKeyRequest { tenant_id })
            .await
            .map(|_| true),
        "Tokenize" => token_service_client::TokenServiceClient::new(c.clone())
            .tokenize(TokenizeRequest {
                tenant_id,
                subject_id,
                card_number: "4111 1111 1111 1111".into(),
                idempotency_key: String::new(),
            })
            .await
            .map(|_| true),
        "Detokenize" => token_service_client::TokenServiceClient::new(c.clone())
            .detokenize(DetokenizeRequest {
                tenant_id,
                token: token.into(),
                purpose: "billing".into(),
            })
            .await
            .map(|_| true),
        _ => call_more(rpc, c, t, s).await,
    }
}

/// The audit, admin, backup, key and subject-rights RPCs of `call`.
async fn call_more(rpc: &str, c: &Channel, tenant_id: String, subject_id: String) -> Answer {
    use pb::*;
    let (t, s) = (tenant_id.clone(), subject_id.clone());
    match rpc {
        "QueryAuditLog" => first(
            audit(c)
                .query_audit_log(QueryAuditLogRequest {
                    tenant_id,
                    limit: 10,
                    ..Default::default()
                })
                .await,
        )
        .await
        .map(|m| m.is_some_and(|m| !m.events.is_empty())),
        "VerifyAuditLog" => audit(c)
            .verify_audit_log(VerifyAuditLogRequest {})
            .await
            .map(|_| true),
        "PruneAuditLog" => audit(c)
            .prune_audit_log(PruneAuditLogRequest {
                older_than_days: 365,
            })
            .await
            .map(|_| true),
        "ReloadPolicy" => admin_service_client::AdminServiceClient::new(c.clone())
            .reload_policy(ReloadPolicyRequest {})
            .await
            .map(|_| true),
        "Backup" => first(
            backup_service_client::BackupServiceClient::new(c.clone())
                .backup(BackupRequest {})
                .await,
        )
        .await
        .map(|m| m.is_some()),
        "RotateTenantKey" => keys(c)
            .rotate_tenant_key(RotateTenantKeyRequest { tenant_id })
            .await
            .map(|_| true),
        "RotateRootKey" => keys(c)
            .rotate_root_key(RotateRootKeyRequest {})
            .await
            .map(|_| true),
        "GetKeyStatus" | "GetKeyStatusOfAll" => keys(c)
            .get_key_status(GetKeyStatusRequest {
                tenant_id: if rpc == "GetKeyStatus" {
                    tenant_id
                } else {
                    String::new()
                },
                count_deks: false,
            })
            .await
            .map(|_| true),
        "RunKeyEpoch" => keys(c)
            .run_key_epoch(RunKeyEpochRequest {})
            .await
            .map(|_| true),
        "ShredTenant" => keys(c)
            .shred_tenant(ShredTenantRequest {
                tenant_id,
                confirm_tenant_id: t,
            })
            .await
            .map(|_| true),
        _ => call_rights(rpc, c, tenant_id, s).await,
    }
}

/// The subject-rights RPCs of `call`.
async fn call_rights(rpc: &str, c: &Channel, tenant_id: String, subject_id: String) -> Answer {
    use pb::*;
    match rpc {
        "AccessSubject" => rights(c)
            .access_subject(AccessSubjectRequest {
                tenant_id,
                subject_id,
            })
            .await
            .map(|_| true),
        "ExportSubject" => first(
            rights(c)
                .export_subject(ExportSubjectRequest {
                    tenant_id,
                    subject_id,
                    purpose: "support".into(),
                })
                .await,
        )
        .await
        .map(|m| m.is_some_and(|m| format!("{m:?}").contains("example.com"))),
        "EraseSubject" => crate::erasure::erase(c.clone(), &tenant_id, &subject_id)
            .await
            .map(|_| true),
        // A refused item is an ItemError in the stream, the call itself succeeding.
        "EraseSubjects" => {
            let one = tokio_stream::iter([EraseSubjectsRequest {
                tenant_id,
                subject_id,
            }]);
            match first(rights(c).erase_subjects(one).await)
                .await?
                .and_then(|r| r.result)
            {
                Some(erase_subjects_response::Result::Error(e)) => Err(item_status(e)),
                Some(erase_subjects_response::Result::Receipt(_)) => Ok(true),
                None => Ok(false),
            }
        }
        "RestrictSubject" => rights(c)
            .restrict_subject(RestrictSubjectRequest {
                tenant_id,
                subject_id,
            })
            .await
            .map(|_| true),
        "LiftRestriction" => rights(c)
            .lift_restriction(LiftRestrictionRequest {
                tenant_id,
                subject_id,
            })
            .await
            .map(|_| true),
        "SetConsent" => rights(c)
            .set_consent(SetConsentRequest {
                tenant_id,
                subject_id,
                purpose: "marketing".into(),
                granted: false,
                source: "matrix".into(),
            })
            .await
            .map(|_| true),
        "ListConsents" => rights(c)
            .list_consents(ListConsentsRequest {
                tenant_id,
                subject_id,
            })
            .await
            .map(|r| !r.into_inner().consents.is_empty()),
        other => panic!("no call for {other}"),
    }
}

/// What the admin sees of everything the matrix could change.
async fn fingerprint(admin: &Channel) -> String {
    use pb::*;
    let tenants = tenants(admin)
        .list_tenants(ListTenantsRequest::default())
        .await
        .expect("tenants")
        .into_inner();
    let fields = rec(admin)
        .get_fields(GetFieldsRequest {
            tenant_id: "acme".into(),
            subject_id: "alice".into(),
            field_names: vec![],
            purpose: "support".into(),
        })
        .await
        .expect("fields")
        .into_inner();
    let consents = rights(admin)
        .list_consents(ListConsentsRequest {
            tenant_id: "acme".into(),
            subject_id: "alice".into(),
        })
        .await
        .expect("consents")
        .into_inner();
    let key = keys(admin)
        .get_key_status(GetKeyStatusRequest {
            tenant_id: "acme".into(),
            count_deks: false,
        })
        .await
        .expect("key status")
        .into_inner();
    let changes: Vec<_> = audit_events(admin, QueryAuditLogRequest::default())
        .await
        .into_iter()
        .filter(|e| {
            let op = pii_vault::audit::Operation::from_name(&e.operation);
            e.outcome == Outcome::Ok as i32 && op.is_some_and(|op| op.is_write())
        })
        .map(|e| (e.seq, e.operation))
        .collect();
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{changes:?}",
        tenants.tenants, fields.fields, consents.consents, key.tenants
    )
}

/// Tenants `acme` and `globex`; `alice` in `acme` with an indexed account email, a card
/// and a marketing consent; returns a token of that card.
async fn seed(admin: &Channel) -> String {
    use pb::*;
    for t in ["acme", "globex"] {
        tenants(admin)
            .create_tenant(CreateTenantRequest {
                tenant_id: t.into(),
            })
            .await
            .expect("create tenant");
    }
    let mut email = text("email", Category::Account, "alice@example.com");
    email.indexed = true;
    let card = FieldInput {
        name: "card".into(),
        category: Category::Payment as i32,
        value: Some(Value {
            kind: Some(value::Kind::CardNumber("4242 4242 4242 4242".into())),
        }),
        ..text("card", Category::Payment, "")
    };
    put(&mut rec(admin), "acme", "alice", vec![email, card])
        .await
        .expect("put");
    rights(admin)
        .set_consent(SetConsentRequest {
            tenant_id: "acme".into(),
            subject_id: "alice".into(),
            purpose: "marketing".into(),
            granted: true,
            source: "form".into(),
        })
        .await
        .expect("consent");
    token_service_client::TokenServiceClient::new(admin.clone())
        .tokenize(TokenizeRequest {
            tenant_id: "acme".into(),
            subject_id: "alice".into(),
            card_number: "4242 4242 4242 4242".into(),
            idempotency_key: String::new(),
        })
        .await
        .expect("tokenize")
        .into_inner()
        .token
}

/// The rows answered by omission for the `profile` identity: it may use the RPC, and must
/// get nothing back from it.
const BY_OMISSION: [&str; 4] = [
    "GetFields",
    "BatchGetFields",
    "FindSubjects",
    "ExportSubject",
];

#[tokio::test]
async fn every_rpc_refuses_other_tenants_wrong_categories_no_grant_and_look_alikes() {
    let vault = start_with_policy_and(&policy(), |raw| {
        // Every denial of the matrix is to be found in the log, one event each.
        raw.audit.denial_events_per_window = Some(1000);
        raw.limits.denied_burst = Some(1000);
    })
    .await;
    let admin = channel_as(&vault, &client_for(&vault, "admin", "spiffe://test/admin")).await;
    let token = seed(&admin).await;
    let callers = identities(&vault).await;
    let before = fingerprint(&admin).await;

    let mut failures = Vec::new();
    for (who, typed, channel) in &callers {
        let mut denied = 0;
        for rpc in RPCS {
            let answer = call(rpc, channel, &token).await;
            match answer {
                Err(s) if s.code() == Code::PermissionDenied => denied += 1,
                Err(s) if s.code() == Code::Unauthenticated => {}
                Ok(false) if *who == "profile" && BY_OMISSION.contains(&rpc) => {}
                other => failures.push(format!("{rpc} as {who}: {other:?}")),
            }
        }
        let audited = audit_events(
            &admin,
            pb::QueryAuditLogRequest {
                caller: typed.clone(),
                ..Default::default()
            },
        )
        .await
        .into_iter()
        .filter(|e| e.outcome == pb::Outcome::Denied as i32)
        .count();
        if audited != denied {
            failures.push(format!(
                "{who}: {denied} calls denied, {audited} denied events"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        fingerprint(&admin).await,
        before,
        "a refused call changed something"
    );
}

/// The four identities of the matrix: (name, typed identity, channel).
async fn identities(vault: &TestVault) -> Vec<(&'static str, String, Channel)> {
    let mut out = Vec::new();
    for who in ["globex", "profile", "nobody"] {
        let uri = format!("spiffe://test/{who}");
        let channel = channel_as(vault, &client_for(vault, who, &uri)).await;
        out.push((who, format!("uri:{uri}"), channel));
    }
    let lookalike = client_with(vault, "lookalike", "spiffe://test/admin", vec![]);
    out.push((
        "lookalike",
        "cn:spiffe://test/admin".into(),
        channel_as(vault, &lookalike).await,
    ));
    out
}
