//! Restriction and consent: reads refused with FAILED_PRECONDITION and audited as denied.

use pii_vault::proto::v1 as pb;
use tonic::transport::Channel;
use tonic::Code;

use crate::util::{audit_events, by_operation, create_tenant, put, text, TestVault};

pub(crate) fn rights(
    c: &Channel,
) -> pb::subject_rights_service_client::SubjectRightsServiceClient<Channel> {
    pb::subject_rights_service_client::SubjectRightsServiceClient::new(c.clone())
}

pub(crate) async fn read(c: &Channel, purpose: &str) -> Result<usize, tonic::Status> {
    pb::record_service_client::RecordServiceClient::new(c.clone())
        .get_fields(pb::GetFieldsRequest {
            tenant_id: "acme".into(),
            subject_id: "alice".into(),
            field_names: vec![],
            purpose: purpose.into(),
        })
        .await
        .map(|r| r.into_inner().fields.len())
}

pub(crate) async fn consent(c: &Channel, purpose: &str, granted: bool) -> pb::SubjectStatus {
    rights(c)
        .set_consent(pb::SetConsentRequest {
            tenant_id: "acme".into(),
            subject_id: "alice".into(),
            purpose: purpose.into(),
            granted,
            source: "web-form-7".into(),
        })
        .await
        .expect("set consent")
        .into_inner()
}

#[tokio::test]
async fn restriction_and_withdrawn_consent_refuse_reads_and_are_audited_as_denied() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let c = vault.channel().await;
    put(
        &mut pb::record_service_client::RecordServiceClient::new(c.clone()),
        "acme",
        "alice",
        vec![text("email", pb::Category::Account, "a@example.com")],
    )
    .await
    .expect("put");
    assert_eq!(read(&c, "support").await.expect("read"), 1);

    let ids = || ("acme".to_owned(), "alice".to_owned());
    let status = rights(&c)
        .restrict_subject(pb::RestrictSubjectRequest {
            tenant_id: ids().0,
            subject_id: ids().1,
        })
        .await
        .expect("restrict")
        .into_inner();
    assert!(status.restricted && status.restricted_since.is_some());
    let err = read(&c, "support").await.expect_err("restricted");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("restricted"), "{err:?}");
    assert_eq!(
        read(&c, "legal_obligation")
            .await
            .expect("legal obligation still reads"),
        1
    );
    let status = rights(&c)
        .lift_restriction(pb::LiftRestrictionRequest {
            tenant_id: ids().0,
            subject_id: ids().1,
        })
        .await
        .expect("lift")
        .into_inner();
    assert!(!status.restricted);
    assert_eq!(read(&c, "support").await.expect("lifted"), 1);

    // Marketing needs consent (default configuration): none yet, then granted, then withdrawn.
    assert_eq!(
        read(&c, "marketing").await.expect_err("no consent").code(),
        Code::FailedPrecondition
    );
    let status = consent(&c, "marketing", true).await;
    assert_eq!(status.consents.len(), 1);
    assert!(status.consents[0].granted && status.consents[0].source == "web-form-7");
    assert_eq!(read(&c, "marketing").await.expect("consented"), 1);
    consent(&c, "marketing", false).await;
    let err = read(&c, "marketing").await.expect_err("withdrawn");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("consent"), "{err:?}");
    let listed = rights(&c)
        .list_consents(pb::ListConsentsRequest {
            tenant_id: ids().0,
            subject_id: ids().1,
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.consents.len(), 1);
    assert!(!listed.consents[0].granted);

    // Three refused reads: each one audited as denied, with the reason.
    let denied: Vec<_> = audit_events(&c, by_operation("get_fields"))
        .await
        .into_iter()
        .filter(|e| e.outcome == pb::Outcome::Denied as i32)
        .collect();
    assert_eq!(denied.len(), 3);
    assert!(denied[0].reason.contains("restricted"));
    assert_eq!(denied[1].purpose, "marketing");
    // State survives a restart; the source must be sane.
    drop(c);
    let vault = vault.restart().await;
    let c = vault.channel().await;
    assert_eq!(
        read(&c, "marketing")
            .await
            .expect_err("still withdrawn")
            .code(),
        Code::FailedPrecondition
    );
    let bad = rights(&c)
        .set_consent(pb::SetConsentRequest {
            tenant_id: "acme".into(),
            subject_id: "alice".into(),
            purpose: "marketing".into(),
            granted: true,
            source: String::new(),
        })
        .await
        .expect_err("empty source");
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn rectification_keeps_the_previous_versions_metadata_but_never_its_value() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let c = vault.channel().await;
    let mut records = pb::record_service_client::RecordServiceClient::new(c.clone());
    put(
        &mut records,
        "acme",
        "alice",
        vec![text("email", pb::Category::Account, "old-9f3@example.com")],
    )
    .await
    .expect("v1");
    put(
        &mut records,
        "acme",
        "alice",
        vec![text("email", pb::Category::Account, "new-2c7@example.com")],
    )
    .await
    .expect("v2");
    let events = crate::util::endings(audit_events(&c, by_operation("put_fields")).await);
    assert_eq!(events.len(), 2);
    assert!(
        events[0].reason.is_empty(),
        "a first write replaces nothing"
    );
    let trail = &events[1].reason;
    assert!(trail.starts_with("email v1 (written at "), "{trail}");
    assert!(
        trail.contains(&format!(
            "by uri:{}) -> v2",
            pii_vault::certs::DEV_CLIENT_ID
        )),
        "{trail}"
    );
    assert!(
        !trail.contains("old-9f3") && !trail.contains("new-2c7"),
        "{trail}"
    );
}
