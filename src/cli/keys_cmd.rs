//! `pii-vault keys`: the security team's key tool. Status, tenant and root key rotation, key
//! epochs and tenant shredding, with a progress bar on stderr for long jobs (on a terminal
//! only) and `--format json` for machines (one JSON document on stdout).

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tonic::transport::Channel;

use pb::key_service_client::KeyServiceClient;
use pii_vault::proto::v1 as pb;

use super::output::{progress_bar, spinner, time, Format, Out};
use super::{about, Connection};

/// How often long jobs are polled for progress.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Show every key's versions, usage and re-wrap progress (one tenant, or all).
    Status {
        /// Only this tenant.
        tenant: Option<String>,
        /// Skip counting DEKs per KEK version (which reads every subject record).
        #[arg(long)]
        no_count: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Rotate a tenant's key; waits for the background re-wrap, showing progress.
    RotateTenant {
        /// Tenant id.
        tenant: String,
        /// Return once the rotation started, without waiting for the re-wrap.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Rotate the root key: new version, everything re-wrapped, old version destroyed.
    RotateRoot {
        #[command(flatten)]
        out: Output,
    },
    /// Run a key epoch now: rotate the keys of tenants with erasures, then the root key.
    Epoch {
        #[command(flatten)]
        out: Output,
    },
    /// Shred a tenant: destroy all its keys, making every subject unreadable. Irreversible.
    ShredTenant {
        /// Tenant id.
        tenant: String,
        /// The tenant id again, to confirm.
        #[arg(long, required = true)]
        confirm: String,
        #[command(flatten)]
        out: Output,
    },
}

/// How every `keys` subcommand reaches the vault.
#[derive(Debug, Args)]
pub struct Output {
    #[command(flatten)]
    conn: Connection,
}

fn version_json(v: &pb::KeyVersion) -> Value {
    json!({
        "version": v.version,
        "current": v.current,
        "created_at": time(v.created_at.as_ref()),
        "destroyed_at": time(v.destroyed_at.as_ref()),
        "retired_at": time(v.retired_at.as_ref()),
        "destroyed_after": time(v.destroyed_after.as_ref()),
        "encryptions": v.encryptions,
        "wraps": v.wraps,
    })
}

fn rewrap_json(r: &pb::RewrapProgress) -> Value {
    json!({
        "target_version": r.target_version,
        "started_at": time(r.started_at.as_ref()),
        "subjects_scanned": r.subjects_scanned,
        "subjects_rewrapped": r.subjects_rewrapped,
        "subjects_total": r.subjects_total,
        "passes": r.passes,
    })
}

fn status_json(s: &pb::KeyStatus) -> Value {
    json!({
        "root": s.root.as_ref().map(|r| json!({
            "current_version": r.current_version,
            "rotation_pending": r.rotation_pending,
            "versions": r.versions.iter().map(version_json).collect::<Vec<_>>(),
        })),
        "tenants": s.tenants.iter().map(|t| json!({
            "tenant": t.tenant_id,
            "current_version": t.current_version,
            "shredded_at": time(t.shredded_at.as_ref()),
            "epoch_pending": t.epoch_pending,
            "subjects": t.subjects,
            "rewrap": t.rewrap.as_ref().map(rewrap_json),
            "versions": t.versions.iter().map(version_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "last_epoch": time(s.last_epoch.as_ref()),
        "next_epoch": time(s.next_epoch.as_ref()),
        "epoch_interval_seconds": s.epoch_interval_seconds,
        "epoch_started": time(s.epoch_started.as_ref()),
        "epoch_failures": s.epoch_failures,
        "last_epoch_failure": time(s.last_epoch_failure.as_ref()),
        "last_epoch_failure_reason": s.last_epoch_failure_reason,
        "max_encryptions_per_dek": s.max_encryptions_per_dek,
        "max_encryptions_per_wrapping_key": s.max_encryptions_per_wrapping_key,
    })
}

fn version_line(v: &pb::KeyVersion, wraps_what: &str) -> String {
    let mut line = format!("  v{:<4}", v.version);
    line.push_str(if v.current {
        " current  "
    } else {
        "          "
    });
    if let Some(t) = &v.created_at {
        line.push_str(&format!(" created {t}"));
    }
    match &v.destroyed_at {
        Some(t) => line.push_str(&format!(" destroyed {t}")),
        None => line.push_str(&format!(" encryptions {}", v.encryptions)),
    }
    if let (Some(n), None) = (v.wraps, &v.destroyed_at) {
        line.push_str(&format!(" wraps {n} {wraps_what}"));
    }
    if let (Some(at), Some(until)) = (&v.retired_at, &v.destroyed_after) {
        line.push_str(&format!(
            " retired {at}: opens backups only, destroyed after {until}"
        ));
    }
    line
}

fn progress(r: &pb::RewrapProgress) -> String {
    let pct = (r.subjects_scanned.min(r.subjects_total.max(1)) * 100) / r.subjects_total.max(1);
    format!(
        "re-wrap to v{}: {}/{} subjects examined ({pct}%), {} re-wrapped, pass {}",
        r.target_version,
        r.subjects_scanned,
        r.subjects_total,
        r.subjects_rewrapped,
        r.passes + 1
    )
}

fn print_status(s: &pb::KeyStatus) {
    if let Some(root) = &s.root {
        let pending = if root.rotation_pending {
            " (rotation pending)"
        } else {
            ""
        };
        println!("root key: current v{}{pending}", root.current_version);
        for v in &root.versions {
            println!("{}", version_line(v, "keys"));
        }
    }
    println!(
        "key epochs: every {} h; last {}; next {}",
        s.epoch_interval_seconds / 3600,
        s.last_epoch
            .as_ref()
            .map_or_else(|| "never".to_owned(), ToString::to_string),
        s.next_epoch
            .as_ref()
            .map_or_else(String::new, ToString::to_string),
    );
    if let Some(started) = &s.epoch_started {
        println!(
            "key epoch under way since {started}: {} failed attempts{}",
            s.epoch_failures,
            s.last_epoch_failure
                .as_ref()
                .map_or_else(String::new, |at| format!(
                    ", last at {at}: {} (retried)",
                    s.last_epoch_failure_reason
                )),
        );
    }
    println!(
        "limits: {} encryptions per DEK, {} wraps per KEK or root version",
        s.max_encryptions_per_dek, s.max_encryptions_per_wrapping_key
    );
    for t in &s.tenants {
        let mut head = format!("tenant {}: current v{}", t.tenant_id, t.current_version);
        if let Some(n) = t.subjects {
            head.push_str(&format!(", {n} subjects"));
        }
        if t.epoch_pending {
            head.push_str(", erasures pending the next epoch");
        }
        if let Some(at) = &t.shredded_at {
            head.push_str(&format!(", SHREDDED at {at}"));
        }
        println!("{head}");
        for v in &t.versions {
            println!("{}", version_line(v, "DEKs"));
        }
        if let Some(r) = &t.rewrap {
            println!("  {}", progress(r));
        }
    }
}

async fn status(
    client: &mut KeyServiceClient<Channel>, tenant: &str, count_deks: bool,
) -> anyhow::Result<pb::KeyStatus> {
    Ok(client
        .get_key_status(pb::GetKeyStatusRequest {
            tenant_id: tenant.to_owned(),
            count_deks,
        })
        .await?
        .into_inner())
}

/// Shows a progress bar (on a terminal) until the tenant's re-wrap to `version` is done.
async fn follow_rewrap(
    client: &mut KeyServiceClient<Channel>, tenant: &str, version: u32,
) -> anyhow::Result<pb::KeyStatus> {
    let bar = progress_bar(0, &format!("re-wrap to v{version}"));
    loop {
        let s = status(client, tenant, false).await?;
        let job = s
            .tenants
            .first()
            .and_then(|t| t.rewrap.as_ref())
            .filter(|r| r.target_version == version);
        match job {
            Some(r) => {
                bar.set_length(r.subjects_total);
                bar.set_position(r.subjects_scanned.min(r.subjects_total));
                bar.set_message(format!(
                    "{} re-wrapped, pass {}",
                    r.subjects_rewrapped,
                    r.passes + 1
                ));
            }
            None => {
                bar.finish_and_clear();
                eprintln!("re-wrap to v{version} complete");
                return status(client, tenant, true).await;
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs the epoch RPC while a spinner (on a terminal) shows any re-wrap it is running.
async fn epoch_with_progress(
    client: &KeyServiceClient<Channel>,
) -> anyhow::Result<pb::RunKeyEpochResponse> {
    let mut run = client.clone();
    let mut epoch = tokio::spawn(async move { run.run_key_epoch(pb::RunKeyEpochRequest {}).await });
    let mut poll = client.clone();
    let bar = spinner("key epoch running");
    loop {
        tokio::select! {
            done = &mut epoch => {
                bar.finish_and_clear();
                return Ok(done??.into_inner());
            }
            () = tokio::time::sleep(POLL) => {
                if let Ok(s) = status(&mut poll, "", false).await {
                    let line = s.tenants.iter()
                        .filter_map(|t| t.rewrap.as_ref().map(|r| format!("{}: {}", t.tenant_id, progress(r))))
                        .next()
                        .unwrap_or_else(|| "key epoch running".to_owned());
                    bar.set_message(line);
                }
            }
        }
    }
}

/// Prints `value` as a JSON line, or runs `text`, which prints the text form.
fn emit(out: Out, value: &Value, text: impl FnOnce()) {
    match out.format {
        Format::Json => println!("{value}"),
        Format::Table => text(),
    }
}

pub async fn keys(cmd: KeysCmd, out_format: Out) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::Status {
            tenant,
            no_count,
            out,
        } => {
            about(tenant.as_deref(), None);
            let mut client = KeyServiceClient::new(out.conn.channel().await?);
            let s = status(&mut client, tenant.as_deref().unwrap_or(""), !no_count).await?;
            emit(out_format, &status_json(&s), || print_status(&s));
            Ok(())
        }
        KeysCmd::RotateTenant {
            tenant,
            no_wait,
            out,
        } => rotate_tenant(tenant, no_wait, out, out_format).await,
        KeysCmd::RotateRoot { out } => rotate_root(out, out_format).await,
        KeysCmd::Epoch { out } => epoch(out, out_format).await,
        KeysCmd::ShredTenant {
            tenant,
            confirm,
            out,
        } => shred_tenant(tenant, confirm, out, out_format).await,
    }
}

async fn rotate_tenant(
    tenant: String, no_wait: bool, out: Output, format: Out,
) -> anyhow::Result<()> {
    about(Some(&tenant), None);
    let mut client = KeyServiceClient::new(out.conn.channel().await?);
    let r = client
        .rotate_tenant_key(pb::RotateTenantKeyRequest {
            tenant_id: tenant.clone(),
        })
        .await?
        .into_inner();
    if format.format == Format::Table {
        println!(
            "tenant {tenant}: key v{} -> v{}",
            r.previous_version, r.new_version
        );
    }
    let after = if no_wait {
        None
    } else {
        Some(follow_rewrap(&mut client, &tenant, r.new_version).await?)
    };
    let value = json!({
        "tenant": r.tenant_id,
        "previous_version": r.previous_version,
        "new_version": r.new_version,
        "status": after.as_ref().map(status_json),
    });
    emit(format, &value, || {
        if let Some(s) = &after {
            print_status(s);
        }
    });
    Ok(())
}

async fn rotate_root(out: Output, format: Out) -> anyhow::Result<()> {
    let mut client = KeyServiceClient::new(out.conn.long_channel().await?);
    let r = client
        .rotate_root_key(pb::RotateRootKeyRequest {})
        .await?
        .into_inner();
    let value = json!({
        "current_version": r.current_version,
        "retired_versions": r.retired_versions,
        "destroyed_versions": r.destroyed_versions,
        "keys_rewrapped": r.keys_rewrapped,
    });
    emit(format, &value, || {
        println!(
            "root key: now v{}; retired {:?} (they open backups until the backup window \
             passes); destroyed {:?}; {} keys re-wrapped",
            r.current_version, r.retired_versions, r.destroyed_versions, r.keys_rewrapped
        );
    });
    Ok(())
}

async fn epoch(out: Output, format: Out) -> anyhow::Result<()> {
    let client = KeyServiceClient::new(out.conn.long_channel().await?);
    let r = epoch_with_progress(&client).await?;
    let value = json!({
        "tenants": r.tenants.iter().map(|t| json!({
            "tenant": t.tenant_id,
            "destroyed_versions": t.destroyed_versions,
        })).collect::<Vec<_>>(),
        "shredded_tenants": r.shredded_tenant_ids,
        "deks_rewrapped": r.deks_rewrapped,
        "root_version": r.root_version,
        "root_versions_retired": r.root_versions_retired,
        "root_versions_destroyed": r.root_versions_destroyed,
        "completed_at": time(r.completed_at.as_ref()),
    });
    emit(format, &value, || {
        for t in &r.tenants {
            println!(
                "tenant {}: new key; destroyed versions {:?}",
                t.tenant_id, t.destroyed_versions
            );
        }
        println!(
            "key epoch done: {} tenant keys rotated, {} DEKs re-wrapped; root key now v{}, retired {:?}, destroyed {:?}",
            r.tenants.len(),
            r.deks_rewrapped,
            r.root_version,
            r.root_versions_retired,
            r.root_versions_destroyed
        );
    });
    Ok(())
}

async fn shred_tenant(
    tenant: String, confirm: String, out: Output, format: Out,
) -> anyhow::Result<()> {
    about(Some(&tenant), None);
    if confirm != tenant {
        bail!("--confirm must repeat the tenant id ({tenant}) to shred it");
    }
    let mut client = KeyServiceClient::new(out.conn.channel().await?);
    let r = client
        .shred_tenant(pb::ShredTenantRequest {
            tenant_id: tenant,
            confirm_tenant_id: confirm,
        })
        .await?
        .into_inner();
    let value = json!({
        "tenant": r.tenant_id,
        "shredded_at": time(r.shredded_at.as_ref()),
        "destroyed_versions": r.destroyed_versions,
    });
    emit(format, &value, || {
        println!(
            "tenant {} shredded: key versions {:?} destroyed; its subjects are unreadable",
            r.tenant_id, r.destroyed_versions
        );
    });
    Ok(())
}
