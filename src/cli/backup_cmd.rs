//! `pii-vault backup` (from a running vault), `pii-vault backup verify` (a file, offline) and
//! `pii-vault restore` (offline, into a new data directory).
//!
//! A backup opens only while the root key version it was bound to is held: rotations retire
//! versions and destroy them the backup window (`backup.retention_days`) later. So verify
//! and restore refuse a backup older than the window, or one whose root key version the
//! key source no longer holds; restore then applies the erasure ledger, so nobody erased or
//! shredded after the backup comes back.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use pb::backup_service_client::BackupServiceClient;
use pii_vault::config::{Config, RawConfig};
use pii_vault::keyring::RootSource;
use pii_vault::proto::v1 as pb;
use pii_vault::storage::backup::{self, Manifest};

use serde_json::{json, Value};

use super::output::{unix_time, Out};
use super::Connection;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    action: Option<BackupAction>,
    /// File to write the backup to; must not exist yet.
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Subcommand)]
pub enum BackupAction {
    /// Check a backup file without restoring it: its checksum and manifest, its age against
    /// the backup window, and (given the vault's configuration) that the root key source
    /// still holds the version it needs.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The backup file.
    file: PathBuf,
    /// The vault's configuration (root key source, backup window). Without it: the
    /// defaults, with the root key file in --data-dir if given.
    #[arg(long, env = "PIIVAULT_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory whose root key file to check against (without --config).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Backup file to restore.
    #[arg(long = "in")]
    input: PathBuf,
    /// Data directory to restore into; it must not hold a store yet.
    #[arg(long)]
    data_dir: PathBuf,
    /// The vault's configuration: where the root key and the erasure ledger are, and the
    /// backup window. Without it: the defaults, the root key file and ledger in --data-dir.
    #[arg(long, env = "PIIVAULT_CONFIG")]
    config: Option<PathBuf>,
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
        "restorable_until": restorable_until(manifest).map(unix_time),
    })
}

/// Until when the backup can be restored, as its manifest says (older backups say nothing).
fn restorable_until(manifest: &Manifest) -> Option<u64> {
    manifest.restorable_until_unix
}

/// The configuration a verify or restore works with: the file given, else the defaults,
/// with `data_dir` put in.
fn offline_config(file: Option<&Path>, data_dir: Option<&Path>) -> anyhow::Result<Config> {
    let mut raw = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the config file {}", path.display()))?;
            RawConfig::parse(&text, &path.display().to_string())?
        }
        None => RawConfig::default(),
    };
    if let Some(dir) = data_dir {
        raw.data_dir = Some(dir.to_path_buf());
    }
    Ok(raw.validate()?)
}

/// `server::check_restorable` at the current time, off the async workers: the file's
/// manifest and the root key version it needs.
async fn check_restorable(file: &Path, config: &Config) -> anyhow::Result<(Manifest, u32)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (file, config) = (file.to_path_buf(), config.clone());
    let checked = tokio::task::spawn_blocking(move || {
        pii_vault::server::check_restorable(&file, &config, now)
    })
    .await
    .context("backup check task failed")??;
    Ok(checked)
}

async fn verify_file(args: VerifyArgs, out: Out) -> anyhow::Result<()> {
    let config = offline_config(args.config.as_deref(), args.data_dir.as_deref())?;
    let (manifest, version) = check_restorable(&args.file, &config).await?;
    let mut value = manifest_json(&args.file, &manifest);
    value["root_key_version"] = json!(version);
    value["restorable"] = json!(true);
    out.one(&value, || {
        format!(
            "{} is intact and restorable: {}; needs root key version {version}; restorable until {}",
            args.file.display(),
            describe(&manifest),
            restorable_until(&manifest).map_or_else(|| "unknown".into(), unix_time),
        )
    });
    Ok(())
}

pub async fn backup(args: BackupArgs, out: Out) -> anyhow::Result<()> {
    if let Some(BackupAction::Verify(verify)) = args.action {
        return verify_file(verify, out).await;
    }
    let Some(target) = args.out else {
        bail!("give --out FILE (where to write the backup), or `backup verify FILE`");
    };
    if target.exists() {
        bail!("{} already exists; choose a new file", target.display());
    }
    let mut partial = target.clone().into_os_string();
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
    std::fs::rename(&partial, &target)
        .with_context(|| format!("cannot move the backup to {}", target.display()))?;
    out.one(&manifest_json(&target, &manifest), || {
        format!(
            "backup written to {}: {}\n  restorable until {}\n  it does not contain the root key: keep the root key and the erasure ledger safe separately",
            target.display(),
            describe(&manifest),
            restorable_until(&manifest).map_or_else(|| "unknown".into(), unix_time),
        )
    });
    Ok(())
}

pub async fn restore(args: RestoreArgs, out: Out) -> anyhow::Result<()> {
    let config = offline_config(args.config.as_deref(), Some(&args.data_dir))?;
    check_restorable(&args.input, &config).await?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let store_dir = config.store_dir();
    let input = args.input.clone();
    let manifest = tokio::task::spawn_blocking(move || backup::restore(&input, &store_dir))
        .await
        .context("restore task failed")??;
    let key_missing = matches!(&config.root_source, RootSource::File(f) if !f.exists());
    let applied = if key_missing {
        None
    } else {
        Some(pii_vault::server::apply_erasure_ledger(&config).await?)
    };
    let mut value = manifest_json(&args.input, &manifest);
    value["store"] = json!(config.store_dir().display().to_string());
    if let Some(a) = &applied {
        value["ledger_entries_applied"] = json!(a.entries);
        value["subjects_erased"] = json!(a.subjects_erased);
        value["tenants_shredded"] = json!(a.tenants_shredded);
    }
    out.one(&value, || {
        let ledger = applied.as_ref().map_or_else(String::new, |a| {
            format!(
                "\n  erasure ledger: {} entries newer than the backup; {} subjects erased and {} tenants shredded again",
                a.entries, a.subjects_erased, a.tenants_shredded
            )
        });
        format!(
            "restored {} into {}: {}{ledger}",
            args.input.display(),
            config.store_dir().display(),
            describe(&manifest)
        )
    });
    if key_missing {
        eprintln!(
            "next: put the vault's root key file at {} (mode 0600) and its erasure ledger \
             beside it; backups never contain them. The vault applies the ledger when it \
             starts, before it serves",
            config.root_key_file.display()
        );
    }
    Ok(())
}
