//! Operator use cases outside the data path: streaming a backup of the store (ciphertext
//! and metadata only; see `storage::backup`), and re-reading the policy file.

use tokio::sync::mpsc;

use crate::audit::Operation;
use crate::authz::act;
use crate::domain::InvalidInput;

use super::usecase::{no_detail, Check};
use super::{Call, ServiceError, Vault};

/// Pieces of the backup file in flight between the store and the caller.
const QUEUE: usize = 4;

impl Vault {
    /// Starts a backup. The returned receiver yields the file's bytes in order; an error
    /// ends it early. The audit event is durable before the first byte is produced.
    pub async fn backup(
        &self, call: &Call,
    ) -> Result<mpsc::Receiver<Result<Vec<u8>, ServiceError>>, ServiceError> {
        // A backup holds every tenant's sealed data: only the security team's key_admin.
        self.use_case(call, Operation::Backup)
            .run(
                Check::action(act::KeyAdmin, None),
                |_| async { Ok(()) },
                no_detail,
            )
            .await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let store = self.store.clone();
        let created_unix = self.clock.now().0 / 1_000_000;
        // The root key version current now is retired at a later rotation and destroyed
        // the backup window after that: the backup opens at least until then.
        let stamp = crate::storage::backup::Stamp {
            created_unix,
            restorable_until_unix: created_unix.saturating_add(self.keys.backup_window().as_secs()),
        };
        // The request's span (method, request id) follows the work into its thread.
        self.background.detach(move || {
            // A closed receiver (the caller went away) stops the backup.
            let mut emit = |chunk: Vec<u8>| tx.blocking_send(Ok(chunk)).is_ok();
            match store.backup(stamp, &mut emit) {
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

    /// Re-reads the policy file (the admin RPC; SIGHUP calls `Authz::reload` directly).
    pub async fn reload_policy(&self, call: &Call) -> Result<(), ServiceError> {
        self.use_case(call, Operation::ReloadPolicy)
            .run(
                Check::action(act::PolicyAdmin, None),
                |_| async move {
                    self.authz
                        .reload()
                        .map_err(|e| InvalidInput::new(e.to_string()).into())
                },
                no_detail,
            )
            .await
    }
}
