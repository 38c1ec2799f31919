//! One zero-sized marker type per `Action`, so that a `Grant<A>` says in its type which
//! action it was decided for. Anyone may name a marker; only `Authz` turns one into a grant.
//!
//! The groupings below say which grants a shared data path accepts: reading fields
//! (`ReadsFields`), writing them (`WritesFields`), listing what a subject holds
//! (`ListsHeld`). A path accepts nothing else.

use super::Action;

mod sealed {
    pub trait Sealed {}
}

/// An action as a type. Sealed: the set of actions is `Action::ALL`.
pub trait Act: sealed::Sealed + Copy + Send + Sync + std::fmt::Debug + 'static {
    const ACTION: Action;
}

macro_rules! markers {
    ($($name:ident),* $(,)?) => {
        $(
            #[doc = concat!("The `", stringify!($name), "` action as a type.")]
            #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
            pub struct $name;
            impl sealed::Sealed for $name {}
            impl Act for $name {
                const ACTION: Action = Action::$name;
            }
        )*
        /// Every marker's action, in `Action::ALL` order (checked in the tests).
        #[cfg(test)]
        pub(super) const MARKED: &[Action] = &[$(Action::$name),*];
    };
}

markers!(
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
    List,
);

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
