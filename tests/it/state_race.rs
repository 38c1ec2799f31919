//! Issue 16: restriction and consent changed by read-modify-write without compare-and-swap;
//! with concurrent `SetConsent` calls, acknowledged `RestrictSubject` calls were undone.

use pii_vault::proto::v1 as pb;

use crate::rights::rights;
use crate::util::{create_tenant, put, text, TestVault};

/// Postmortem: 3 of 60 acknowledged restrictions were silently undone by concurrent consent
/// changes (GDPR art. 18). 1,000 rounds of a restriction change racing three consent
/// changes; after each round every acknowledged change is in the subject's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_rounds_of_restrict_racing_set_consent_lose_no_acknowledged_change() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let c = vault.channel().await;
    put(
        &mut pb::record_service_client::RecordServiceClient::new(c.clone()),
        "acme",
        "alice",
        vec![text("nick", pb::Category::Profile, "al")],
    )
    .await
    .expect("put");
    let ids = || ("acme".to_owned(), "alice".to_owned());
    let purposes = ["marketing", "model_training", "newsletter"];
    for round in 0..1000u32 {
        let restrict = round % 2 == 0;
        let change = async {
            let mut r = rights(&c);
            if restrict {
                r.restrict_subject(pb::RestrictSubjectRequest {
                    tenant_id: ids().0,
                    subject_id: ids().1,
                })
                .await
                .map(drop)
            } else {
                r.lift_restriction(pb::LiftRestrictionRequest {
                    tenant_id: ids().0,
                    subject_id: ids().1,
                })
                .await
                .map(drop)
            }
        };
        let consent = |purpose: &str, k: u32| {
            let mut r = rights(&c);
            let req = pb::SetConsentRequest {
                tenant_id: ids().0,
                subject_id: ids().1,
                purpose: purpose.into(),
                granted: (round + k).is_multiple_of(2),
                source: format!("round-{round}"),
            };
            async move { r.set_consent(req).await.map(drop) }
        };
        let (a, b, d, e) = tokio::join!(
            change,
            consent(purposes[0], 0),
            consent(purposes[1], 1),
            consent(purposes[2], 2)
        );
        for acked in [a, b, d, e] {
            acked.expect("acknowledged");
        }
        let state = rights(&c)
            .list_consents(pb::ListConsentsRequest {
                tenant_id: ids().0,
                subject_id: ids().1,
            })
            .await
            .expect("state")
            .into_inner();
        assert_eq!(
            state.restricted, restrict,
            "round {round}: restriction change lost"
        );
        for (k, purpose) in (0..).zip(purposes) {
            let decision = state
                .consents
                .iter()
                .find(|d| d.purpose == purpose)
                .unwrap_or_else(|| panic!("round {round}: consent for {purpose} lost"));
            assert_eq!(
                (decision.granted, decision.source.as_str()),
                ((round + k) % 2 == 0, format!("round-{round}").as_str()),
                "round {round}: consent change for {purpose} lost"
            );
        }
    }
}
