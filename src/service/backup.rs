//! Backup use case: records the backup in the audit log, then streams the store's backup
//! file (ciphertext and metadata only; see `storage::backup`).

use tokio::sync::mpsc;

use crate::audit::Operation;
use crate::authz::Action;

use super::{Call, ServiceError, Vault};

/// Pieces of the backup file in flight between the store and the caller.
const QUEUE: usize = 4;

impl Vault {
    /// Starts a backup. The returned receiver yields the file's bytes in order; an error
    /// ends it early. The audit event is durable before the first byte is produced.
    pub async fn backup(
        &self,
        call: &Call,
    ) -> Result<mpsc::Receiver<Result<Vec<u8>, ServiceError>>, ServiceError> {
        let mut ev = self.draft(call, Operation::Backup);
        // A backup holds every tenant's sealed data: only the security team's key_admin.
        let allowed = self
            .authorize(call, &mut ev, Action::KeyAdmin, None, None)
            .map(drop);
        self.record(ev, allowed).await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let store = self.store.clone();
        let created_unix = self.clock.now().0 / 1_000_000;
        // The request's span (method, request id) follows the work into its thread.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            // A closed receiver (the caller went away) stops the backup.
            let mut emit = |chunk: Vec<u8>| tx.blocking_send(Ok(chunk)).is_ok();
            match store.backup(created_unix, &mut emit) {
                Ok(manifest) => tracing::info!(
                    trees = manifest.trees.len(),
                    records = manifest.records(),
                    "backup streamed"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "backup failed");
                    let _ = tx.blocking_send(Err(e.into()));
                }
            }
        });
        Ok(rx)
    }
}
