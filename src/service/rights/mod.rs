//! Data subject rights and the duties that go with them: erasure by crypto-shredding
//! (`erasure`), the access report (`access`) and the portable export built from the same
//! pages (`export`), restriction and consent (`state`), and retention: every field expires
//! by its category's rule and the sweeper deletes it (`retention`).

mod access;
mod erasure;
mod export;
mod ledger;
mod ledger_apply;
mod retention;
mod state;

pub use access::{AccessReport, HeldField, Recipient};
pub(super) use erasure::start_purger;
pub use erasure::{ErasureReceipt, DEFAULT_KEY_EPOCH};
pub use export::{Export, EXPORT_CHUNK, EXPORT_SCHEMA};
pub use ledger::{ErasureLedger, LedgerError};
pub use ledger_apply::LedgerApplied;
pub use retention::RetentionRules;
pub use state::StateChange;
