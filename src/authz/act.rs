//! One zero-sized marker type per `Action`, so that a `Grant<A>` says in its type which
//! action it was decided for. Anyone may name a marker; only `Authz` turns one into a grant.
//!
//! The groupings below say which grants a shared data path accepts: reading fields
//! (`ReadsFields`), writing them (`WritesFields`), listing what a subject holds
//! (`ListsHeld`). A path accepts nothing else.

mod sealed {
    pub trait Sealed {}
}

/// An action as a type. Sealed: the set of actions is `Action::ALL`.
pub trait Act: sealed::Sealed + Copy + Send + Sync + std::fmt::Debug + 'static {
    const ACTION: Action;
}

/// Declares `Action` (with `ALL` and the names the policy file uses) and one marker type
/// per action, from one list, so the two cannot drift apart.
macro_rules! actions {
    ($($(#[$doc:meta])* $name:ident => $text:literal,)*) => {
        /// What a caller may ask for. Every RPC needs one action.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Action {
            $($(#[$doc])* $name,)*
        }

        impl Action {
            pub const ALL: [Action; [$($text),*].len()] = [$(Action::$name),*];

            /// The action's name in the policy file.
            pub fn name(self) -> &'static str {
                match self {
                    $(Action::$name => $text,)*
                }
            }
        }

        $(
            #[doc = concat!("The `", $text, "` action as a type.")]
            #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
            pub struct $name;
            impl sealed::Sealed for $name {}
            impl Act for $name {
                const ACTION: Action = Action::$name;
            }
        )*
    };
}

actions! {
    TenantAdmin => "tenant_admin",
    Read => "read",
    Write => "write",
    Delete => "delete",
    Erase => "erase",
    Export => "export",
    AccessReport => "access_report",
    Restrict => "restrict",
    Consent => "consent",
    KeyAdmin => "key_admin",
    AuditRead => "audit_read",
    PolicyAdmin => "policy_admin",
    Find => "find",
    Tokenize => "tokenize",
    Detokenize => "detokenize",
    /// List a tenant's subject ids (which may be email addresses): more than `read`.
    List => "list",
}

/// Grants that may open and show field values: a read, a detokenization.
pub trait ReadsFields: Act {}
impl ReadsFields for Read {}
impl ReadsFields for Detokenize {}

/// Grants that may seal and store field values: a write, a tokenization.
pub trait WritesFields: Act {}
impl WritesFields for Write {}
impl WritesFields for Tokenize {}

/// Grants that may list every field a subject holds: the access report, the export.
pub trait ListsHeld: Act {}
impl ListsHeld for AccessReport {}
impl ListsHeld for Export {}
