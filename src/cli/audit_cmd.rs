//! `pii-vault audit verify|query|prune`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Subcommand;

use pb::audit_service_client::AuditServiceClient;
use pii_vault::keyring::{Keyring, RootKeys};
use pii_vault::proto::v1 as pb;
use pii_vault::service::verify_store;
use pii_vault::storage::{SledStore, Store};

use super::Connection;

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Verify the audit chain offline, on a stopped vault's data directory.
    Verify {
        /// Data directory of the vault (its `store/` is opened read-write: stop the vault first).
        #[arg(long, default_value = pii_vault::config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Root key file (default: `<data-dir>/root.key`).
        #[arg(long)]
        root_key: Option<PathBuf>,
    },
    /// Stream audit events from a running vault as JSON lines.
    Query {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        caller: Option<String>,
        #[arg(long)]
        operation: Option<String>,
        /// Resume after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[command(flatten)]
        conn: Connection,
    },
    /// Prune events older than the retention (or `--days`) on a running vault.
    Prune {
        #[arg(long, default_value_t = 0)]
        days: u32,
        #[command(flatten)]
        conn: Connection,
    },
}

pub async fn audit(cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Verify { data_dir, root_key } => verify_offline(data_dir, root_key),
        AuditCmd::Query {
            tenant,
            subject,
            caller,
            operation,
            after,
            limit,
            conn,
        } => {
            let mut client = AuditServiceClient::new(conn.channel().await?);
            let mut stream = client
                .query_audit_log(pb::QueryAuditLogRequest {
                    tenant_id: tenant.unwrap_or_default(),
                    subject_id: subject.unwrap_or_default(),
                    caller: caller.unwrap_or_default(),
                    operation: operation.unwrap_or_default(),
                    after_seq: after,
                    limit,
                    ..Default::default()
                })
                .await?
                .into_inner();
            while let Some(chunk) = stream.message().await? {
                for e in chunk.events {
                    let line = serde_json::json!({
                        "seq": e.seq,
                        "time": e.time.map(|t| t.seconds),
                        "request_id": e.request_id,
                        "caller": e.caller,
                        "operation": e.operation,
                        "tenant": e.tenant_id,
                        "subject": e.subject_id,
                        "fields": e.field_names,
                        "purpose": e.purpose,
                        "outcome": pii_vault::api::outcome_name(e.outcome),
                        "reason": e.reason,
                        "mac": hex::encode(e.mac),
                    });
                    println!("{line}");
                }
            }
            Ok(())
        }
        AuditCmd::Prune { days, conn } => {
            let mut client = AuditServiceClient::new(conn.channel().await?);
            let r = client
                .prune_audit_log(pb::PruneAuditLogRequest {
                    older_than_days: days,
                })
                .await?
                .into_inner();
            println!(
                "pruned {} events; checkpoint at seq {}",
                r.deleted, r.checkpoint_seq
            );
            Ok(())
        }
    }
}

fn verify_offline(data_dir: PathBuf, root_key: Option<PathBuf>) -> anyhow::Result<()> {
    let root_path = root_key.unwrap_or_else(|| data_dir.join("root.key"));
    let store_dir = data_dir.join("store");
    if !store_dir.exists() {
        bail!("{} holds no store", data_dir.display());
    }
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(&store_dir, 64 << 20).with_context(|| {
            format!(
                "opening {} (is the vault still running?)",
                store_dir.display()
            )
        })?);
    let keys = Keyring::open(RootKeys::load(&root_path)?, store.clone())?;
    let report = verify_store(store.as_ref(), &keys.audit_key()?)?;
    match report.first_bad {
        None => {
            println!(
                "audit chain intact: {} events verified from seq {}",
                report.checked, report.first_seq
            );
            Ok(())
        }
        Some(seq) => bail!(
            "audit chain broken at seq {seq}: {} ({} events verified before it)",
            report.problem.unwrap_or_default(),
            report.checked
        ),
    }
}
