//! A restriction, a consent change or a shredding made through one node applies to the
//! very next call on the other, even with that node's key caches warm.

use pii_vault::proto::v1 as pb;
use tonic::Code;

use super::two_nodes;
use crate::rights::{consent, read, rights};
use crate::util::{create_tenant, put, text};

#[tokio::test]
async fn restriction_consent_and_shredding_through_one_node_apply_on_the_other_at_once() {
    let Some((a, b)) = two_nodes("scale_out::rights").await else {
        return;
    };
    create_tenant(&a, "acme").await;
    let (on_a, on_b) = (a.channel().await, b.channel().await);
    put(
        &mut pb::record_service_client::RecordServiceClient::new(on_a.clone()),
        "acme",
        "alice",
        vec![text("email", pb::Category::Account, "a@example.com")],
    )
    .await
    .expect("put through A");
    // B's KEK and DEK caches are warm from here on.
    assert_eq!(read(&on_b, "support").await.expect("read through B"), 1);

    let ids = || ("acme".to_owned(), "alice".to_owned());
    rights(&on_a)
        .restrict_subject(pb::RestrictSubjectRequest {
            tenant_id: ids().0,
            subject_id: ids().1,
        })
        .await
        .expect("restrict through A");
    let err = read(&on_b, "support").await.expect_err("restricted on B");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("restricted"), "{err:?}");
    rights(&on_a)
        .lift_restriction(pb::LiftRestrictionRequest {
            tenant_id: ids().0,
            subject_id: ids().1,
        })
        .await
        .expect("lift through A");
    assert_eq!(read(&on_b, "support").await.expect("lifted on B"), 1);

    consent(&on_b, "marketing", true).await;
    assert_eq!(read(&on_a, "marketing").await.expect("granted on A"), 1);
    consent(&on_a, "marketing", false).await;
    let err = read(&on_b, "marketing").await.expect_err("withdrawn on B");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("consent"), "{err:?}");

    pb::key_service_client::KeyServiceClient::new(on_a.clone())
        .shred_tenant(pb::ShredTenantRequest {
            tenant_id: "acme".into(),
            confirm_tenant_id: "acme".into(),
        })
        .await
        .expect("shred through A");
    let err = read(&on_b, "support").await.expect_err("shredded on B");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("shredded"), "{err:?}");
}
