//! The policy file: which identity (or role) may do which action, on which tenants, field
//! categories and purposes, and how much of a value it may see. Default deny.
//!
//! ```toml
//! [roles]
//! billing = ["uri:spiffe://acme/billing"]   # uri:, dns: or cn: (see `identity`)
//!
//! [[rules]]
//! name = "billing-reads-payment"
//! who = ["role:billing"]            # roles as role:NAME, or typed identities
//! actions = ["read", "write"]
//! tenants = ["*"]                   # or tenant ids; only "*" grants tenant-less actions
//! categories = ["payment"]          # or ["*"]
//! purposes = ["billing"]            # or ["*"]; checked for reads, exports, lookups
//! render = "masked"                 # redacted | masked | whole | reveal (default whole)
//! ```

use std::collections::HashMap;

use serde::Deserialize;

use crate::domain::{Category, Purpose, Render, TenantId};

use super::identity::{IdentityKind, PeerIdentity};

/// What a caller may ask for. Every RPC needs one action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    TenantAdmin,
    Read,
    Write,
    Delete,
    Erase,
    Export,
    AccessReport,
    Restrict,
    Consent,
    KeyAdmin,
    AuditRead,
    PolicyAdmin,
    Find,
    Tokenize,
    Detokenize,
    /// List a tenant's subject ids (which may be email addresses): more than `read`.
    List,
}

impl Action {
    pub const ALL: [Action; 16] = [
        Action::TenantAdmin,
        Action::Read,
        Action::Write,
        Action::Delete,
        Action::Erase,
        Action::Export,
        Action::AccessReport,
        Action::Restrict,
        Action::Consent,
        Action::KeyAdmin,
        Action::AuditRead,
        Action::PolicyAdmin,
        Action::Find,
        Action::Tokenize,
        Action::Detokenize,
        Action::List,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::TenantAdmin => "tenant_admin",
            Action::Read => "read",
            Action::Write => "write",
            Action::Delete => "delete",
            Action::Erase => "erase",
            Action::Export => "export",
            Action::AccessReport => "access_report",
            Action::Restrict => "restrict",
            Action::Consent => "consent",
            Action::KeyAdmin => "key_admin",
            Action::AuditRead => "audit_read",
            Action::PolicyAdmin => "policy_admin",
            Action::Find => "find",
            Action::Tokenize => "tokenize",
            Action::Detokenize => "detokenize",
            Action::List => "list",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Actions that must declare a purpose.
    pub fn needs_purpose(self) -> bool {
        matches!(
            self,
            Action::Read | Action::Export | Action::Find | Action::Detokenize
        )
    }
}

fn render_from_name(name: &str) -> Option<Render> {
    match name {
        "redacted" => Some(Render::Redacted),
        "masked" => Some(Render::Masked),
        "whole" => Some(Render::Whole),
        "reveal" => Some(Render::Reveal),
        _ => None,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    roles: HashMap<String, Vec<String>>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    who: Vec<String>,
    actions: Vec<String>,
    #[serde(default = "star")]
    tenants: Vec<String>,
    #[serde(default = "star")]
    categories: Vec<String>,
    #[serde(default = "star")]
    purposes: Vec<String>,
    render: Option<String>,
}

fn star() -> Vec<String> {
    vec!["*".into()]
}

/// `*` or a set of names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Scope<T> {
    Any,
    Only(Vec<T>),
}

impl<T: PartialEq> Scope<T> {
    fn allows(&self, x: &T) -> bool {
        match self {
            Scope::Any => true,
            Scope::Only(list) => list.contains(x),
        }
    }

    /// `x` if given, else only `*`: a request that names no tenant (or purpose) is about
    /// all of them, so only a rule for all of them grants it.
    fn allows_maybe(&self, x: Option<&T>) -> bool {
        match x {
            Some(x) => self.allows(x),
            None => matches!(self, Scope::Any),
        }
    }
}

/// A policy entry naming a caller: it must be typed (`uri:`, `dns:`, `cn:`), so an old
/// untyped policy fails to load instead of matching nothing (or the wrong kind).
fn identity_entry(entry: &str, rule: &str) -> Result<String, PolicyError> {
    match PeerIdentity::kind_of(entry) {
        Some(IdentityKind::Job) => Err(PolicyError::Invalid(format!(
            "{rule}: identity {entry:?} is one of the vault's own jobs, which the policy \
             cannot grant (they do not go through it)"
        ))),
        Some(_) if PeerIdentity::parse(entry).is_some() => Ok(entry.to_owned()),
        Some(_) => Err(PolicyError::Invalid(format!(
            "{rule}: identity {entry:?} names nobody after its type"
        ))),
        None => Err(PolicyError::Invalid(format!(
            "{rule}: identity {entry:?} has no type; write uri:, dns: or cn: before it \
             (or role: for a role)"
        ))),
    }
}

fn scope<T>(
    items: &[String], what: &str, rule: &str, parse: impl Fn(&str) -> Option<T>,
) -> Result<Scope<T>, PolicyError> {
    if items.iter().any(|s| s == "*") {
        return Ok(Scope::Any);
    }
    items
        .iter()
        .map(|s| {
            parse(s)
                .ok_or_else(|| PolicyError::Invalid(format!("rule {rule}: unknown {what} {s:?}")))
        })
        .collect::<Result<_, _>>()
        .map(Scope::Only)
}

/// One validated rule.
#[derive(Clone, Debug)]
pub(super) struct Rule {
    pub name: String,
    identities: Vec<String>,
    actions: Vec<Action>,
    tenants: Scope<TenantId>,
    categories: Scope<Category>,
    purposes: Scope<Purpose>,
    pub render: Render,
}

impl Rule {
    pub fn covers(&self, c: Category) -> bool {
        self.categories.allows(&c)
    }
}

/// A loaded, validated policy.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PolicyError {
    #[error("policy file {path}: {problem}")]
    File { path: String, problem: String },
    #[error("policy: {0}")]
    Invalid(String),
}

impl Policy {
    /// Parses and validates a policy; every name must be known.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let raw: RawPolicy =
            toml::from_str(text).map_err(|e| PolicyError::Invalid(e.message().to_owned()))?;
        for (role, members) in &raw.roles {
            for m in members {
                identity_entry(m, &format!("role {role}"))?;
            }
        }
        let mut rules = Vec::new();
        for r in raw.rules {
            let mut identities = Vec::new();
            for who in &r.who {
                match who.strip_prefix("role:") {
                    Some(role) => identities.extend(
                        raw.roles
                            .get(role)
                            .ok_or_else(|| {
                                PolicyError::Invalid(format!(
                                    "rule {}: unknown role {role:?}",
                                    r.name
                                ))
                            })?
                            .iter()
                            .cloned(),
                    ),
                    None => identities.push(identity_entry(who, &format!("rule {}", r.name))?),
                }
            }
            let actions = r
                .actions
                .iter()
                .map(|a| {
                    Action::from_name(a).ok_or_else(|| {
                        PolicyError::Invalid(format!("rule {}: unknown action {a:?}", r.name))
                    })
                })
                .collect::<Result<_, _>>()?;
            let category = |s: &str| Category::ALL.into_iter().find(|c| c.name() == s);
            rules.push(Rule {
                identities,
                actions,
                tenants: scope(&r.tenants, "tenant", &r.name, |s| TenantId::parse(s).ok())?,
                categories: scope(&r.categories, "category", &r.name, category)?,
                purposes: scope(&r.purposes, "purpose", &r.name, |s| Purpose::parse(s).ok())?,
                render: match r.render.as_deref() {
                    None => Render::Whole,
                    Some(name) => render_from_name(name).ok_or_else(|| {
                        PolicyError::Invalid(format!("rule {}: unknown render {name:?}", r.name))
                    })?,
                },
                name: r.name,
            });
        }
        Ok(Self { rules })
    }

    /// The rules that let `who` do `action` on `tenant` for `purpose`, in file order.
    pub(super) fn matching(
        &self, who: &str, action: Action, tenant: Option<&TenantId>, purpose: Option<&Purpose>,
    ) -> Vec<Rule> {
        self.rules
            .iter()
            .filter(|r| r.identities.iter().any(|i| i == who))
            .filter(|r| r.actions.contains(&action))
            .filter(|r| r.tenants.allows_maybe(tenant))
            .filter(|r| purpose.is_none_or(|p| r.purposes.allows(p)))
            .cloned()
            .collect()
    }

    /// A policy granting the client whose certificate's URI SAN is `uri` every action
    /// everywhere: the dev default.
    pub fn dev_default_text(uri: &str) -> String {
        let identity = format!("{}{uri}", IdentityKind::Uri.prefix());
        let actions: Vec<String> = Action::ALL
            .iter()
            .map(|a| format!("{:?}", a.name()))
            .collect();
        format!(
            "# pii-vault dev policy: the dev client certificate may do everything.\n\
             # Replace it for real deployments; see README (Authorization).\n\n\
             [roles]\nadmin = [{identity:?}]\n\n\
             [[rules]]\nname = \"dev-admin-all\"\nwho = [\"role:admin\"]\nactions = [{}]\n\
             tenants = [\"*\"]\ncategories = [\"*\"]\npurposes = [\"*\"]\nrender = \"reveal\"\n",
            actions.join(", ")
        )
    }
}
