//! Policy parsing and decisions.

use super::*;

const POLICY: &str = r#"
[roles]
billing = ["spiffe://acme/billing"]
support = ["spiffe://acme/support"]

[[rules]]
name = "billing-payment"
who = ["role:billing"]
actions = ["read"]
tenants = ["acme"]
categories = ["payment", "account"]
purposes = ["billing"]
render = "whole"

[[rules]]
name = "support-masked"
who = ["role:support"]
actions = ["read"]
categories = ["*"]
purposes = ["support", "marketing", "legal_obligation"]
render = "masked"
"#;

fn authz() -> Authz {
    Authz::fixed(
        Policy::parse(POLICY).expect("policy"),
        PurposeRules::default(),
    )
}

fn id(s: &str) -> PeerIdentity {
    PeerIdentity::new(s)
}

fn p(s: &str) -> Purpose {
    Purpose::parse(s).expect("purpose")
}

fn t(s: &str) -> TenantId {
    TenantId::parse(s).expect("tenant")
}

#[test]
fn grants_follow_identity_action_tenant_purpose_and_category() {
    let a = authz();
    let billing = id("spiffe://acme/billing");
    let g = a
        .decide(
            &billing,
            Action::Read,
            Some(&t("acme")),
            Some(&p("billing")),
        )
        .expect("granted");
    assert_eq!(g.rule(), "billing-payment");
    assert_eq!(
        g.category(Category::Payment).map(|(r, _)| r),
        Ok(Render::Whole)
    );
    assert!(matches!(
        g.category(Category::Conversation),
        Err(Refusal::NotGranted(_))
    ));
    for (tenant, purpose, action) in [
        ("globex", "billing", Action::Read),
        ("acme", "support", Action::Read),
        ("acme", "billing", Action::Write),
    ] {
        let refused = a.decide(&billing, action, Some(&t(tenant)), Some(&p(purpose)));
        let Err(Refusal::NotGranted(msg)) = refused else {
            panic!("{tenant}/{purpose}/{action:?} was granted");
        };
        assert!(msg.contains(action.name()), "{msg}");
    }
    assert!(a
        .decide(&id("spiffe://nobody"), Action::Read, None, None)
        .is_err());
}

#[test]
fn restriction_and_consent_are_decided_with_the_grant() {
    let a = authz();
    let support = id("spiffe://acme/support");
    let acme = t("acme");
    let mut state = SubjectState::default();
    assert!(a
        .decide_for_subject(&support, Action::Read, &acme, Some(&p("support")), &state)
        .is_ok());
    // Marketing needs consent: absent, then granted, then withdrawn.
    let marketing = p("marketing");
    assert_eq!(
        a.decide_for_subject(&support, Action::Read, &acme, Some(&marketing), &state)
            .err(),
        Some(Refusal::NoConsent(marketing.clone()))
    );
    let consent = |granted| crate::domain::Consent {
        purpose: marketing.clone(),
        granted,
        at: crate::domain::Timestamp(1),
        source: "test".into(),
    };
    state.set_consent(consent(true));
    assert!(a
        .decide_for_subject(&support, Action::Read, &acme, Some(&marketing), &state)
        .is_ok());
    state.set_consent(consent(false));
    assert!(a
        .decide_for_subject(&support, Action::Read, &acme, Some(&marketing), &state)
        .is_err());
    // Restricted: only legal obligations may read.
    state.restricted_since = Some(crate::domain::Timestamp(2));
    assert_eq!(
        a.decide_for_subject(&support, Action::Read, &acme, Some(&p("support")), &state)
            .err(),
        Some(Refusal::Restricted)
    );
    assert!(a
        .decide_for_subject(
            &support,
            Action::Read,
            &acme,
            Some(&p("legal_obligation")),
            &state
        )
        .is_ok());
}

#[test]
fn bad_policies_are_rejected_with_the_reason() {
    for (text, needle) in [
        (
            "[[rules]]\nname='x'\nwho=['a']\nactions=['fly']",
            "unknown action",
        ),
        (
            "[[rules]]\nname='x'\nwho=['role:ghost']\nactions=['read']",
            "unknown role",
        ),
        (
            "[[rules]]\nname='x'\nwho=['a']\nactions=['read']\ncategories=['secrets']",
            "unknown category",
        ),
        (
            "[[rules]]\nname='x'\nwho=['a']\nactions=['read']\nrender='all'",
            "unknown render",
        ),
        ("[rulez]", "unknown field"),
    ] {
        let err = Policy::parse(text).expect_err(text).to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
    let dev =
        Policy::parse(&Policy::dev_default_text("spiffe://x/dev")).expect("dev policy parses");
    let a = Authz::fixed(dev, PurposeRules::default());
    for action in Action::ALL {
        assert!(a.decide(&id("spiffe://x/dev"), action, None, None).is_ok());
    }
}
