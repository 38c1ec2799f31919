//! Policy parsing and decisions.

use super::*;

const POLICY: &str = r#"
[roles]
billing = ["uri:spiffe://acme/billing"]
support = ["uri:spiffe://acme/support"]

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
    PeerIdentity::parse(s).expect("typed identity")
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
    let billing = id("uri:spiffe://acme/billing");
    let g = a
        .decide(&billing, act::Read, Some(&t("acme")), Some(&p("billing")))
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
    for (tenant, purpose, refused) in [
        (
            "globex",
            "billing",
            a.decide(&billing, act::Read, Some(&t("globex")), Some(&p("billing")))
                .map(drop),
        ),
        (
            "acme",
            "support",
            a.decide(&billing, act::Read, Some(&t("acme")), Some(&p("support")))
                .map(drop),
        ),
        (
            "acme",
            "billing",
            a.decide(&billing, act::Write, Some(&t("acme")), Some(&p("billing")))
                .map(drop),
        ),
    ] {
        let Err(Refusal::NotGranted(msg)) = refused else {
            panic!("{tenant}/{purpose} was granted");
        };
        assert!(msg.contains("no rule grants"), "{msg}");
    }
    assert!(a
        .decide(&id("uri:spiffe://nobody"), act::Read, None, None)
        .is_err());
}

#[test]
fn restriction_and_consent_are_decided_with_the_grant() {
    let a = authz();
    let support = id("uri:spiffe://acme/support");
    let acme = t("acme");
    let mut state = SubjectState::default();
    assert!(a
        .decide_for_subject(&support, act::Read, &acme, Some(&p("support")), &state)
        .is_ok());
    // Marketing needs consent: absent, then granted, then withdrawn.
    let marketing = p("marketing");
    assert_eq!(
        a.decide_for_subject(&support, act::Read, &acme, Some(&marketing), &state)
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
        .decide_for_subject(&support, act::Read, &acme, Some(&marketing), &state)
        .is_ok());
    state.set_consent(consent(false));
    assert!(a
        .decide_for_subject(&support, act::Read, &acme, Some(&marketing), &state)
        .is_err());
    // Restricted: only legal obligations may read.
    state.restricted_since = Some(crate::domain::Timestamp(2));
    assert_eq!(
        a.decide_for_subject(&support, act::Read, &acme, Some(&p("support")), &state)
            .err(),
        Some(Refusal::Restricted)
    );
    assert!(a
        .decide_for_subject(
            &support,
            act::Read,
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
            "[[rules]]\nname='x'\nwho=['uri:a']\nactions=['fly']",
            "unknown action",
        ),
        (
            "[[rules]]\nname='x'\nwho=['role:ghost']\nactions=['read']",
            "unknown role",
        ),
        (
            "[[rules]]\nname='x'\nwho=['uri:a']\nactions=['read']\ncategories=['secrets']",
            "unknown category",
        ),
        (
            "[[rules]]\nname='x'\nwho=['uri:a']\nactions=['read']\nrender='all'",
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
    let dev = id("uri:spiffe://x/dev");
    for action in Action::ALL {
        let rules = a.policy().matching(dev.as_str(), action, None, None);
        assert!(!rules.is_empty(), "{action:?}");
    }
    // And through the typed decision, for one marker of each kind of scope.
    assert!(a.decide(&dev, act::KeyAdmin, None, None).is_ok());
    assert!(a.decide(&dev, act::List, None, None).is_ok());
}

/// issue 16: a request that names no tenant matched every rule, whatever tenants the rule
/// was limited to. It is about all tenants now, so only `tenants = ["*"]` grants it.
#[test]
fn a_tenantless_request_is_granted_only_by_a_rule_for_all_tenants() {
    let policy = r#"
[[rules]]
name = "acme-admin"
who = ["uri:spiffe://t/acme-admin"]
actions = ["tenant_admin", "key_admin", "audit_read", "policy_admin"]
tenants = ["acme"]

[[rules]]
name = "all-admin"
who = ["uri:spiffe://t/admin"]
actions = ["tenant_admin", "key_admin", "audit_read", "policy_admin"]
tenants = ["*"]
"#;
    let a = Authz::fixed(
        Policy::parse(policy).expect("policy"),
        PurposeRules::default(),
    );
    let scoped = id("uri:spiffe://t/acme-admin");
    let all = id("uri:spiffe://t/admin");
    let acme = t("acme");
    assert!(a.decide(&scoped, act::KeyAdmin, Some(&acme), None).is_ok());
    assert!(a
        .decide(&scoped, act::KeyAdmin, Some(&t("globex")), None)
        .is_err());
    assert!(a.decide(&scoped, act::TenantAdmin, None, None).is_err());
    assert!(a.decide(&scoped, act::KeyAdmin, None, None).is_err());
    assert!(a.decide(&scoped, act::AuditRead, None, None).is_err());
    assert!(a.decide(&scoped, act::PolicyAdmin, None, None).is_err());
    assert!(a.decide(&all, act::KeyAdmin, None, None).is_ok());
    assert!(a.decide(&all, act::AuditRead, Some(&acme), None).is_ok());
}

/// issue 16: identities were untyped, so an old policy naming `spiffe://…` would now match
/// nothing. It fails to load instead, naming the entry; a `job:` entry is refused too.
#[test]
fn untyped_or_job_identities_are_a_policy_load_error_naming_the_entry() {
    for (text, needle) in [
        (
            "[roles]\nx = ['spiffe://old/style']\n[[rules]]\nname='r'\nwho=['role:x']\nactions=['read']",
            "\"spiffe://old/style\" has no type",
        ),
        (
            "[[rules]]\nname='r'\nwho=['spiffe://old/style']\nactions=['read']",
            "rule r: identity \"spiffe://old/style\" has no type",
        ),
        (
            "[[rules]]\nname='r'\nwho=['job:pii-vault/retention']\nactions=['key_admin']",
            "vault's own jobs",
        ),
        ("[[rules]]\nname='r'\nwho=['uri:']\nactions=['read']", "names nobody"),
    ] {
        let err = Policy::parse(text).expect_err(text).to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
    for typed in ["uri:spiffe://a/b", "dns:billing.internal", "cn:billing"] {
        let text = format!("[[rules]]\nname='r'\nwho=['{typed}']\nactions=['read']");
        assert!(Policy::parse(&text).is_ok(), "{typed}");
    }
}

/// A job identity is never granted anything by a policy, even one granting everyone who is
/// named everything; `parse` cannot make one.
#[test]
fn job_identities_never_match_the_policy() {
    assert!(PeerIdentity::parse("job:pii-vault/keys").is_none());
    let job = PeerIdentity::job("pii-vault/keys");
    assert!(job.is_job());
    assert_eq!(job.as_str(), "job:pii-vault/keys");
    let dev = Policy::parse(&Policy::dev_default_text("pii-vault/keys")).expect("policy");
    let a = Authz::fixed(dev, PurposeRules::default());
    assert!(a.decide(&job, act::KeyAdmin, None, None).is_err());
}

/// issue 16: `purposes = ["*"]` let a caller declare a consent purpose where no subject's
/// consent was checked. Such a purpose is never granted without a subject's consent.
#[test]
fn a_star_purpose_rule_never_bypasses_consent() {
    let policy = r#"
[[rules]]
name = "anything"
who = ["uri:spiffe://t/any"]
actions = ["read", "detokenize", "find"]
purposes = ["*"]
"#;
    let a = Authz::fixed(
        Policy::parse(policy).expect("policy"),
        PurposeRules::default(),
    );
    let who = id("uri:spiffe://t/any");
    let acme = t("acme");
    let marketing = p("marketing");
    let state = SubjectState::default();
    assert_eq!(
        a.decide_for_subject(&who, act::Read, &acme, Some(&marketing), &state)
            .err(),
        Some(Refusal::NoConsent(marketing.clone()))
    );
    assert_eq!(
        a.decide(&who, act::Detokenize, Some(&acme), Some(&marketing))
            .err(),
        Some(Refusal::ConsentUncheckable(marketing.clone()))
    );
    assert!(a
        .decide(&who, act::Detokenize, Some(&acme), Some(&p("support")))
        .is_ok());
}
