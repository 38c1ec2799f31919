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
mod output;
mod report;
mod rights_cmd;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tonic::transport::Channel;

use pii_vault::client::{connect_with, ClientCerts, Timeouts};
use pii_vault::config::{DEFAULT_DATA_DIR, DEFAULT_LISTEN};

use output::{Format, Out};
use report::Target;

/// pii-vault: an encrypted personal-data vault served over gRPC with mutual TLS.
///
/// Exit codes: 0 done; 1 a local or usage problem (bad arguments, an unreadable file, no
/// connection, no answer in time); 2 the vault answered and refused.
#[derive(Debug, Parser)]
#[command(name = "pii-vault", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Output: `table` (text for people) or `json` (JSON Lines: one object per line).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "PIIVAULT_FORMAT",
        default_value = "table"
    )]
    format: Format,
    /// Log format of the server and of the client's own log lines.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    /// Find the subjects whose indexed field holds a value: `find TENANT FIELD VALUE`.
    Find(client_cmds::FindArgs),
    /// Tokenize a card number (read from stdin unless given): prints its token.
    Tokenize(client_cmds::TokenizeArgs),
    /// Show the card number behind a token (needs a grant to reveal it).
    Detokenize(client_cmds::DetokenizeArgs),
    /// Rotate a tenant's index key and re-index its indexed fields.
    Reindex(client_cmds::ReindexArgs),
    /// The vault's access policy.
    #[command(subcommand)]
    Policy(client_cmds::PolicyCmd),
    /// Restrict processing of a subject (GDPR art. 18): only legal-obligation purposes may read it.
    Restrict(rights_cmd::SubjectArgs),
    /// Lift the restriction of a subject.
    LiftRestriction(rights_cmd::SubjectArgs),
    /// Record or list a subject's consent decisions.
    #[command(subcommand)]
    Consent(rights_cmd::ConsentCmd),
    /// Everything the vault holds on a subject and who read it (GDPR art. 15).
    Access(rights_cmd::SubjectArgs),
    /// Erase subjects (right to be forgotten): ids as arguments, or one per line with --from FILE|-.
    Erase(erase_cmd::EraseArgs),
    /// Export everything held on a subject as one JSON document: `export TENANT SUBJECT --out FILE`.
    Export(export_cmd::ExportArgs),
    /// Verify (offline, or --online), query or prune the audit log.
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

/// What the running command is about, for its error line (`report`): set by the command
/// as it starts (`about`) and by `Connection::channel`.
static TARGET: Mutex<Option<Target>> = Mutex::new(None);

fn with_target(f: impl FnOnce(&mut Target)) {
    if let Ok(mut target) = TARGET.lock() {
        f(target.get_or_insert_with(Target::default));
    }
}

/// Records the tenant and subject a command is about.
fn about(tenant: Option<&str>, subject: Option<&str>) {
    with_target(|t| {
        t.tenant = tenant.map(str::to_owned);
        t.subject = subject.map(str::to_owned);
    });
}

/// Seconds, as a command-line value (`2.5`); 0 is allowed.
fn seconds(s: &str) -> Result<Duration, String> {
    let n: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(n).map_err(|_| format!("{s} is not a duration in seconds"))
}

/// How a client subcommand reaches the vault. Each option has an environment variable,
/// used when the option is not given.
#[derive(Debug, Args)]
pub struct Connection {
    /// Address of the vault: host:port or https://host[:port] (default port 7443).
    #[arg(long, env = "PIIVAULT_ADDR", default_value = DEFAULT_LISTEN, global = true)]
    addr: String,
    /// Data directory whose dev certificates (`tls/`) the client uses by default.
    #[arg(long, env = "PIIVAULT_DATA_DIR", default_value = DEFAULT_DATA_DIR, global = true)]
    data_dir: PathBuf,
    /// CA certificate the server must chain to (default: `<data-dir>/tls/ca.pem`).
    #[arg(long, env = "PIIVAULT_CACERT", global = true)]
    ca: Option<PathBuf>,
    /// Client certificate (default: `<data-dir>/tls/client.pem`).
    #[arg(long, env = "PIIVAULT_CLIENT_CERT", global = true, requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key (default: `<data-dir>/tls/client.key`).
    #[arg(long, env = "PIIVAULT_CLIENT_KEY", global = true, requires = "cert")]
    key: Option<PathBuf>,
    /// Seconds to wait for the connection (TCP, TLS and HTTP/2 together).
    #[arg(long, env = "PIIVAULT_CONNECT_TIMEOUT", default_value = "10", value_parser = seconds, global = true)]
    connect_timeout: Duration,
    /// Seconds to wait for each answer; 0 waits as long as the vault takes. Default: 30,
    /// and no limit for key epochs and root key rotations, which can run for long.
    #[arg(long, env = "PIIVAULT_TIMEOUT", value_parser = seconds, global = true)]
    timeout: Option<Duration>,
}

/// The default of `--timeout` for ordinary calls.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

impl Connection {
    fn certs(&self) -> ClientCerts {
        let dev = ClientCerts::dev(&self.data_dir);
        ClientCerts {
            ca: self.ca.clone().unwrap_or(dev.ca),
            cert: self.cert.clone().unwrap_or(dev.cert),
            key: self.key.clone().unwrap_or(dev.key),
        }
    }

    async fn open(&self, default: Option<Duration>) -> anyhow::Result<Channel> {
        let request = match self.timeout {
            Some(t) if t.is_zero() => None,
            Some(t) => Some(t),
            None => default,
        };
        with_target(|t| {
            t.addr = Some(self.addr.clone());
            t.data_dir = Some(self.data_dir.clone());
            t.timeout = request;
        });
        let timeouts = Timeouts {
            connect: self.connect_timeout,
            request,
        };
        Ok(connect_with(&self.addr, &self.certs(), timeouts).await?)
    }

    /// A channel whose calls wait `--timeout` (default 30 s) for their answer.
    pub(super) async fn channel(&self) -> anyhow::Result<Channel> {
        self.open(Some(DEFAULT_TIMEOUT)).await
    }

    /// A channel for calls that can run for long (a key epoch): no limit unless
    /// `--timeout` sets one.
    pub(super) async fn long_channel(&self) -> anyhow::Result<Channel> {
        self.open(None).await
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version are answers, not errors; a usage error exits 1 (clap's own
            // default, 2, is the code of a refusal by the vault here).
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(cli.log_format);
    let out = Out { format: cli.format };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::serve(args, out).await,
            Command::Tenant(cmd) => client_cmds::tenant(cmd, out).await,
            Command::Put(args) => client_cmds::put(args, out).await,
            Command::Get(args) => client_cmds::get(args, out).await,
            Command::Delete(args) => client_cmds::delete(args, out).await,
            Command::Subjects(args) => client_cmds::subjects(args, out).await,
            Command::Find(args) => client_cmds::find(args, out).await,
            Command::Tokenize(args) => client_cmds::tokenize(args, out).await,
            Command::Detokenize(args) => client_cmds::detokenize(args, out).await,
            Command::Reindex(args) => client_cmds::reindex(args, out).await,
            Command::Policy(cmd) => client_cmds::policy(cmd, out).await,
            Command::Restrict(args) => rights_cmd::restrict(args, true, out).await,
            Command::LiftRestriction(args) => rights_cmd::restrict(args, false, out).await,
            Command::Consent(cmd) => rights_cmd::consent(cmd, out).await,
            Command::Access(args) => rights_cmd::access(args, out).await,
            Command::Audit(cmd) => audit_cmd::audit(cmd, out).await,
            Command::Erase(args) => erase_cmd::erase(args, out).await,
            Command::Export(args) => export_cmd::export(args, out).await,
            Command::Certs(cmd) => certs_cmd::run(cmd, out),
            Command::Backup(args) => backup_cmd::backup(args, out).await,
            Command::Restore(args) => backup_cmd::restore(args, out).await,
            Command::Keys(cmd) => keys_cmd::keys(cmd, out).await,
            Command::Health(args) => health_cmd::health(args, out).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let target = TARGET
                .lock()
                .ok()
                .and_then(|mut t| t.take())
                .unwrap_or_default();
            let report = report::report(&e, &target);
            for line in &report.lines {
                eprintln!("{line}");
            }
            ExitCode::from(report.code)
        }
    }
}
