//! `pii-vault audit verify [--online]|query|prune`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use pb::audit_service_client::AuditServiceClient;
use pii_vault::keyring::{Keyring, RootKeys};
use pii_vault::proto::v1 as pb;
use pii_vault::service::verify_store;
use pii_vault::storage::{SledStore, Store};

use super::output::{time, Out};
use super::{about, Connection, Refused};

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Verify the audit chain: offline on a stopped vault's data directory (--data-dir),
    /// or with --online by asking the running vault.
    Verify {
        /// Ask the running vault to verify its chain (the vault stays up).
        #[arg(long)]
        online: bool,
        /// Offline: the root key file (default: `<data-dir>/root.key`).
        #[arg(long, conflicts_with = "online")]
        root_key: Option<PathBuf>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Stream audit events from a running vault (a JSON line each with `--format json`).
    Query {
        /// Only events of this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only events of this subject.
        #[arg(long)]
        subject: Option<String>,
        /// Only events of this caller identity.
        #[arg(long)]
        caller: Option<String>,
        /// Only events of this operation (`get_fields`, `erase_subject`, ...).
        #[arg(long)]
        operation: Option<String>,
        /// Only events at or after this time (RFC 3339, `2026-12-01T00:00:00Z`).
        #[arg(long, value_parser = rfc3339)]
        since: Option<prost_types::Timestamp>,
        /// Only events before this time (RFC 3339).
        #[arg(long, value_parser = rfc3339)]
        until: Option<prost_types::Timestamp>,
        /// Resume after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many events.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[command(flatten)]
        conn: Connection,
    },
    /// Prune events older than the retention (or `--days`) on a running vault.
    Prune {
        /// Prune events older than this many days (0: the configured retention).
        #[arg(long, default_value_t = 0)]
        days: u32,
        #[command(flatten)]
        conn: Connection,
    },
}

fn rfc3339(s: &str) -> Result<prost_types::Timestamp, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an RFC 3339 time such as 2026-12-01T00:00:00Z"))
}

fn event_json(e: pb::AuditEvent) -> Value {
    json!({
        "seq": e.seq,
        "time": time(e.time.as_ref()),
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
    })
}

fn event_text(v: &Value) -> String {
    let s = |k: &str| match &v[k] {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "-".to_owned(),
    };
    format!(
        "{} {} {} {} tenant={} subject={} purpose={} {}",
        s("seq"),
        s("time"),
        s("operation"),
        s("outcome"),
        s("tenant"),
        s("subject"),
        s("purpose"),
        s("caller")
    )
}

pub async fn audit(cmd: AuditCmd, out: Out) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Verify {
            online: false,
            root_key,
            conn,
        } => verify_offline(conn.data_dir, root_key, out),
        AuditCmd::Verify { conn, .. } => {
            let mut client = AuditServiceClient::new(conn.long_channel().await?);
            let r = client
                .verify_audit_log(pb::VerifyAuditLogRequest {})
                .await?
                .into_inner();
            verified(
                r.ok,
                r.checked,
                r.first_seq,
                r.first_bad_seq,
                &r.problem,
                out,
            )
        }
        AuditCmd::Query {
            tenant,
            subject,
            caller,
            operation,
            since,
            until,
            after,
            limit,
            conn,
        } => {
            about(tenant.as_deref(), subject.as_deref());
            let mut client = AuditServiceClient::new(conn.channel().await?);
            let mut stream = client
                .query_audit_log(pb::QueryAuditLogRequest {
                    tenant_id: tenant.unwrap_or_default(),
                    subject_id: subject.unwrap_or_default(),
                    caller: caller.unwrap_or_default(),
                    operation: operation.unwrap_or_default(),
                    after_seq: after,
                    limit,
                    since,
                    until,
                })
                .await?
                .into_inner();
            while let Some(chunk) = stream.message().await? {
                for e in chunk.events {
                    let v = event_json(e);
                    out.one(&v, || event_text(&v));
                }
            }
            Ok(())
        }
        AuditCmd::Prune { days, conn } => {
            let mut client = AuditServiceClient::new(conn.long_channel().await?);
            let r = client
                .prune_audit_log(pb::PruneAuditLogRequest {
                    older_than_days: days,
                })
                .await?
                .into_inner();
            out.one(
                &json!({"deleted": r.deleted, "checkpoint_seq": r.checkpoint_seq}),
                || {
                    format!(
                        "pruned {} events; checkpoint at seq {}",
                        r.deleted, r.checkpoint_seq
                    )
                },
            );
            Ok(())
        }
    }
}

/// Prints a verification's result; a broken chain is an error (exit 2 online, where the
/// vault answered; 1 offline).
fn verified(
    ok: bool, checked: u64, first_seq: u64, first_bad: u64, problem: &str, out: Out,
) -> anyhow::Result<()> {
    let value = json!({
        "ok": ok,
        "checked": checked,
        "first_seq": first_seq,
        "first_bad_seq": (!ok).then_some(first_bad),
        "problem": (!ok).then_some(problem),
    });
    if ok {
        out.one(&value, || {
            format!("audit chain intact: {checked} events verified from seq {first_seq}")
        });
        return Ok(());
    }
    out.one(&value, || {
        format!("audit chain broken at seq {first_bad}: {problem} ({checked} events verified before it)")
    });
    Err(Refused(format!("audit chain broken at seq {first_bad}")).into())
}

fn verify_offline(data_dir: PathBuf, root_key: Option<PathBuf>, out: Out) -> anyhow::Result<()> {
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
    let problem = report.problem.unwrap_or_default();
    let result = verified(
        report.first_bad.is_none(),
        report.checked,
        report.first_seq,
        report.first_bad.unwrap_or(0),
        &problem,
        out,
    );
    // Offline, nobody refused: the broken chain is a finding about local files.
    result.map_err(|e| anyhow::anyhow!("{e}"))
}
