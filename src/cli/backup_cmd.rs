//! `pii-vault backup` (from a running vault) and `pii-vault restore` (offline, into a new
//! data directory).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

use pb::backup_service_client::BackupServiceClient;
use pii_vault::config::RawConfig;
use pii_vault::proto::v1 as pb;
use pii_vault::storage::backup::{self, Manifest};

use serde_json::{json, Value};

use super::output::{unix_time, Out};
use super::Connection;

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// File to write the backup to; must not exist yet.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Backup file to restore.
    #[arg(long = "in")]
    input: PathBuf,
    /// Data directory to restore into; it must not hold a store yet.
    #[arg(long)]
    data_dir: PathBuf,
}

/// Creates `path` for writing, readable by the owner only (a backup holds ids and the
/// audit log).
fn create_private(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn describe(manifest: &Manifest) -> String {
    format!(
        "{} records in {} trees, format {}, created {}",
        manifest.records(),
        manifest.trees.len(),
        manifest.format,
        unix_time(manifest.created_unix)
    )
}

fn manifest_json(file: &Path, manifest: &Manifest) -> Value {
    json!({
        "file": file.display().to_string(),
        "records": manifest.records(),
        "trees": manifest.trees.len(),
        "format": manifest.format,
        "created_at": unix_time(manifest.created_unix),
    })
}

pub async fn backup(args: BackupArgs, out: Out) -> anyhow::Result<()> {
    if args.out.exists() {
        bail!("{} already exists; choose a new file", args.out.display());
    }
    let mut partial = args.out.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut client = BackupServiceClient::new(args.conn.channel().await?);
    let mut stream = client.backup(pb::BackupRequest {}).await?.into_inner();
    let mut file =
        create_private(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let received = async {
        while let Some(chunk) = stream.message().await? {
            file.write_all(&chunk.data)
                .with_context(|| format!("cannot write {}", partial.display()))?;
        }
        file.sync_all()
            .with_context(|| format!("cannot sync {}", partial.display()))?;
        // Check what arrived exactly as a restore would, before calling it a backup.
        Ok::<_, anyhow::Error>(backup::verify(&partial)?)
    }
    .await;
    let manifest = match received {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, &args.out)
        .with_context(|| format!("cannot move the backup to {}", args.out.display()))?;
    out.one(&manifest_json(&args.out, &manifest), || {
        format!(
            "backup written to {}: {}\n  it does not contain the root key: keep the root key file safe separately",
            args.out.display(),
            describe(&manifest)
        )
    });
    Ok(())
}

pub async fn restore(args: RestoreArgs, out: Out) -> anyhow::Result<()> {
    let config = RawConfig {
        data_dir: Some(args.data_dir.clone()),
        ..RawConfig::default()
    }
    .validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let store_dir = config.store_dir();
    let input = args.input.clone();
    let manifest = tokio::task::spawn_blocking(move || backup::restore(&input, &store_dir))
        .await
        .context("restore task failed")??;
    let mut value = manifest_json(&args.input, &manifest);
    value["store"] = json!(config.store_dir().display().to_string());
    out.one(&value, || {
        format!(
            "restored {} into {}: {}",
            args.input.display(),
            config.store_dir().display(),
            describe(&manifest)
        )
    });
    if !config.root_key_file.exists() {
        eprintln!(
            "next: put the vault's root key file at {} (mode 0600); backups never contain it",
            config.root_key_file.display()
        );
    }
    Ok(())
}
