//! Who may do what. The caller's identity comes from its verified client certificate
//! (`identity`); the policy file (`policy`) grants identities and roles actions on tenants,
//! categories and purposes; `Authz::decide` answers with a `Grant` or a `Refusal`.
//!
//! A `Grant<A>` can only be made here, and only for the action `A` it was decided for (one
//! zero-sized marker type per action, in `act`): use cases require the grant of their own
//! action before they touch data, so forgetting the check, or passing a grant decided for
//! another action, does not compile. Restriction of processing and consent are decided in
//! the same call as the grant, from the subject's state; a purpose that needs consent is
//! never granted without it, whatever purposes a rule lists.
//!
//! The vault's own jobs (`job:` identities) are not decided here at all: no policy can name
//! them, and their use cases run without a grant (`service::usecase`, `run_system`).

pub mod act;
mod identity;
mod policy;

use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

pub use crate::domain::Render;
pub use act::{Act, Action};
pub use identity::{Caller, IdentityError, IdentityKind, PeerIdentity};
pub use policy::{Policy, PolicyError};

use crate::domain::{Category, Purpose, SubjectState, TenantId};

/// Proof that a caller may perform the action `A`: the rules that allowed it. Only `Authz`
/// makes one, and only for the action it decided.
#[derive(Debug, Clone)]
pub struct Grant<A: Act> {
    rules: Vec<policy::Rule>,
    action: PhantomData<A>,
}

impl<A: Act> Grant<A> {
    pub fn action(&self) -> Action {
        A::ACTION
    }

    /// Name of the rule that decided (the first that matched).
    pub fn rule(&self) -> &str {
        self.rules.first().map_or("", |r| r.name.as_str())
    }

    /// How a field of category `c` may be shown (or written), and by which rule; refused if
    /// no matching rule covers the category.
    pub fn category(&self, c: Category) -> Result<(Render, &str), Refusal> {
        self.rules
            .iter()
            .filter(|r| r.covers(c))
            .max_by_key(|r| r.render)
            .map(|r| (r.render, r.name.as_str()))
            .ok_or_else(|| {
                Refusal::NotGranted(format!(
                    "no rule grants {} of {} fields",
                    A::ACTION.name(),
                    c.name()
                ))
            })
    }
}

/// Why a request is refused. Messages name the missing grant, never data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    NotGranted(String),
    #[error(
        "processing of this subject is restricted; only legal-obligation purposes may read it"
    )]
    Restricted,
    #[error("the subject has not consented to purpose {0} (or withdrew consent)")]
    NoConsent(Purpose),
    #[error(
        "purpose {0} needs each subject's consent, which this request cannot check; \
         ask for the subject's data by subject"
    )]
    ConsentUncheckable(Purpose),
}

/// Purpose rules of the privacy policy, from configuration.
#[derive(Clone, Debug)]
pub struct PurposeRules {
    /// Purposes that may still read a restricted subject (legal obligations).
    pub legal_obligation: Vec<Purpose>,
    /// Purposes that need the subject's explicit, not withdrawn, consent.
    pub need_consent: Vec<Purpose>,
}

impl Default for PurposeRules {
    fn default() -> Self {
        let p = |s: &str| Purpose::parse(s).ok();
        Self {
            legal_obligation: ["legal_obligation", "fraud_prevention"]
                .into_iter()
                .filter_map(p)
                .collect(),
            need_consent: ["marketing", "model_training"]
                .into_iter()
                .filter_map(p)
                .collect(),
        }
    }
}

/// The decision point: the current policy (reloadable) and the purpose rules.
#[derive(Debug)]
pub struct Authz {
    path: Option<PathBuf>,
    current: RwLock<Arc<Policy>>,
    purposes: PurposeRules,
}

impl Authz {
    /// Loads the policy file at `path`.
    pub fn load(path: PathBuf, purposes: PurposeRules) -> Result<Self, PolicyError> {
        let policy = read_policy(&path)?;
        Ok(Self {
            path: Some(path),
            current: RwLock::new(Arc::new(policy)),
            purposes,
        })
    }

    /// A fixed policy (tests, tools).
    pub fn fixed(policy: Policy, purposes: PurposeRules) -> Self {
        Self {
            path: None,
            current: RwLock::new(Arc::new(policy)),
            purposes,
        }
    }

    /// Re-reads the policy file. On error the old policy stays in force.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let policy = read_policy(path)?;
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(policy);
        }
        Ok(())
    }

    fn policy(&self) -> Arc<Policy> {
        self.current
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// May `who` do `A` on `tenant` (for `purpose`)? Without a tenant the request is about
    /// all of them, granted only by a rule for all tenants. A purpose that needs consent is
    /// refused here (no subject's consent to check): see `decide_for_subject`.
    pub fn decide<A: Act>(
        &self, who: &PeerIdentity, action: A, tenant: Option<&TenantId>, purpose: Option<&Purpose>,
    ) -> Result<Grant<A>, Refusal> {
        let grant = self.decide_rules(who, action, tenant, purpose)?;
        match purpose {
            Some(p) if A::ACTION.needs_purpose() && self.purposes.need_consent.contains(p) => {
                Err(Refusal::ConsentUncheckable(p.clone()))
            }
            _ => Ok(grant),
        }
    }

    /// The policy alone: the rules that let `who` do `A`, with no subject's restriction or
    /// consent decided. For a decision that comes before a subject's state is read, and for
    /// a search whose results are then decided subject by subject (`decide_for_subject`).
    pub fn decide_rules<A: Act>(
        &self, who: &PeerIdentity, _action: A, tenant: Option<&TenantId>, purpose: Option<&Purpose>,
    ) -> Result<Grant<A>, Refusal> {
        let action = A::ACTION;
        // The vault's own jobs never go through the policy (and no policy can name them).
        let rules = if who.is_job() {
            Vec::new()
        } else {
            self.policy()
                .matching(who.as_str(), action, tenant, purpose)
        };
        if rules.is_empty() {
            let mut missing = format!("no rule grants {}", action.name());
            if let Some(t) = tenant {
                missing.push_str(&format!(" on tenant {t}"));
            }
            if let Some(p) = purpose {
                missing.push_str(&format!(" for purpose {p}"));
            }
            return Err(Refusal::NotGranted(missing));
        }
        Ok(Grant {
            rules,
            action: PhantomData,
        })
    }

    /// `decide`, plus the subject's restriction and consents for reads of its data.
    pub fn decide_for_subject<A: Act>(
        &self, who: &PeerIdentity, action: A, tenant: &TenantId, purpose: Option<&Purpose>,
        state: &SubjectState,
    ) -> Result<Grant<A>, Refusal> {
        let grant = self.decide_rules(who, action, Some(tenant), purpose)?;
        self.subject_allows(&grant, purpose, state)?;
        Ok(grant)
    }

    /// The subject's part of a decision the policy already granted (`grant`): its
    /// restriction and its consents, for an action that reads its data for `purpose`.
    pub fn subject_allows<A: Act>(
        &self, _grant: &Grant<A>, purpose: Option<&Purpose>, state: &SubjectState,
    ) -> Result<(), Refusal> {
        if let (Some(p), true) = (purpose, A::ACTION.needs_purpose()) {
            if state.restricted_since.is_some() && !self.purposes.legal_obligation.contains(p) {
                return Err(Refusal::Restricted);
            }
            if self.purposes.need_consent.contains(p)
                && !state.consent(p).is_some_and(|c| c.granted)
            {
                return Err(Refusal::NoConsent(p.clone()));
            }
        }
        Ok(())
    }
}

fn read_policy(path: &std::path::Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError::File {
        path: path.display().to_string(),
        problem: e.to_string(),
    })?;
    Policy::parse(&text).map_err(|e| PolicyError::File {
        path: path.display().to_string(),
        problem: e.to_string(),
    })
}

#[cfg(test)]
mod tests;
