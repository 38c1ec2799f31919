//! The `pii-vault` command line: `serve` runs the vault; the other subcommands are a client
//! that talks to a running vault with the dev client certificate by default.
//!
//! The only module that uses `anyhow`: everything below returns typed errors.

mod audit_cmd;
mod backup_cmd;
mod certs_cmd;
mod client_cmds;
mod erase_cmd;
mod export_cmd;
mod health_cmd;
mod keys_cmd;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use pii_vault::config::{DEFAULT_DATA_DIR, DEFAULT_LISTEN};

/// pii-vault: an encrypted personal-data vault served over gRPC with mutual TLS.
#[derive(Debug, Parser)]
#[command(name = "pii-vault", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format: `text` or `json`.
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the vault. With no flags: ./pii-vault-data, a generated root key and dev TLS
    /// certificates, listening on 127.0.0.1:7443.
    Serve(serve::ServeArgs),
    /// Create, show and list tenants.
    #[command(subcommand)]
    Tenant(client_cmds::TenantCmd),
    /// Write fields of a subject: `put TENANT SUBJECT name=value ...`.
    Put(client_cmds::PutArgs),
    /// Read fields of a subject (all, or the names given).
    Get(client_cmds::GetArgs),
    /// Delete fields of a subject.
    Delete(client_cmds::DeleteArgs),
    /// List the subjects of a tenant.
    Subjects(client_cmds::SubjectsArgs),
    /// Erase subjects (right to be forgotten): ids as arguments, or one per line with --from FILE|-.
    Erase(erase_cmd::EraseArgs),
    /// Export everything held on a subject as one JSON document: `export TENANT SUBJECT --out FILE`.
    Export(export_cmd::ExportArgs),
    /// Verify (offline), query or prune the audit log.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCmd),
    /// Issue a CA, server and client certificates for a real deployment.
    #[command(subcommand)]
    Certs(certs_cmd::CertsCmd),
    /// Write a backup of a running vault (ciphertext and metadata; never the root key).
    Backup(backup_cmd::BackupArgs),
    /// Restore a backup into a new data directory (offline; the vault must not be running there).
    Restore(backup_cmd::RestoreArgs),
    /// Key management: status, rotate-tenant, rotate-root, epoch, shred-tenant.
    #[command(subcommand)]
    Keys(keys_cmd::KeysCmd),
    /// Ask whether the vault serves (gRPC health): exit 0 SERVING, 2 not serving, 1 no answer.
    Health(health_cmd::HealthArgs),
}

/// The vault answered, and the answer is a refusal: the command exits 2, not 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// How a client subcommand reaches the vault.
#[derive(Debug, Args)]
pub struct Connection {
    /// Address of the vault.
    #[arg(long, default_value = DEFAULT_LISTEN, global = true)]
    addr: String,
    /// Data directory whose dev certificates (`tls/`) the client uses by default.
    #[arg(long, default_value = DEFAULT_DATA_DIR, global = true)]
    data_dir: PathBuf,
    /// CA certificate the server must chain to (default: `<data-dir>/tls/ca.pem`).
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Client certificate (default: `<data-dir>/tls/client.pem`).
    #[arg(long, global = true, requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key (default: `<data-dir>/tls/client.key`).
    #[arg(long, global = true, requires = "cert")]
    key: Option<PathBuf>,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::serve(args).await,
            Command::Tenant(cmd) => client_cmds::tenant(cmd).await,
            Command::Put(args) => client_cmds::put(args).await,
            Command::Get(args) => client_cmds::get(args).await,
            Command::Delete(args) => client_cmds::delete(args).await,
            Command::Subjects(args) => client_cmds::subjects(args).await,
            Command::Audit(cmd) => audit_cmd::audit(cmd).await,
            Command::Erase(args) => erase_cmd::erase(args).await,
            Command::Export(args) => export_cmd::export(args).await,
            Command::Certs(cmd) => certs_cmd::run(cmd),
            Command::Backup(args) => backup_cmd::backup(args).await,
            Command::Restore(args) => backup_cmd::restore(args).await,
            Command::Keys(cmd) => keys_cmd::keys(cmd).await,
            Command::Health(args) => health_cmd::health(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<Refused>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
