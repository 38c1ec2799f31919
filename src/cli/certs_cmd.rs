//! `pii-vault certs`: issues the certificates of a real deployment with the same code that
//! creates the dev certificates at first start (`pii_vault::certs`).
//!
//! `certs ca` creates a CA; `certs server` and `certs client` load it from its directory and
//! sign one leaf each. Existing files are never replaced without `--force`, every file is
//! checked before any is written, private keys are written with mode 0600, and only paths
//! are printed, never key material.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use serde_json::json;

use pii_vault::authz::PeerIdentity;
use pii_vault::certs::{write_file, Authority, LeafSpec, Usage};

use super::output::Out;

/// Longest validity accepted by `--days` (100 years): a guard against typos.
const MAX_DAYS: u32 = 36_500;

#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Create a CA: writes ca.pem and ca.key (mode 0600) into --out.
    Ca(CaArgs),
    /// Issue a server certificate signed by the CA in --ca-dir: writes server.pem and
    /// server.key (mode 0600) into --out.
    Server(ServerArgs),
    /// Issue a client certificate signed by the CA in --ca-dir: writes client.pem and
    /// client.key (mode 0600) into --out. The caller identity the vault sees is the first
    /// --uri, else the first --dns, else --name.
    Client(ClientArgs),
}

/// Options every subcommand shares.
#[derive(Debug, Args)]
pub struct Output {
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Replace files that already exist.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct CaArgs {
    #[command(flatten)]
    output: Output,
    /// Common name of the CA.
    #[arg(long, value_name = "CN", default_value = "pii-vault CA")]
    name: String,
    /// Validity in days.
    #[arg(long, value_name = "N", default_value_t = 3650)]
    days: u32,
}

/// Where the signing CA is.
#[derive(Debug, Args)]
pub struct CaDir {
    /// Directory holding ca.pem and ca.key, as written by `certs ca`.
    #[arg(long, value_name = "DIR")]
    ca_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    ca: CaDir,
    #[command(flatten)]
    output: Output,
    /// Common name of the server certificate.
    #[arg(long, value_name = "CN")]
    name: String,
    /// DNS name or IP address clients use to reach the server (repeatable).
    #[arg(long, value_name = "NAME", required = true, num_args = 1..)]
    san: Vec<String>,
    /// Validity in days.
    #[arg(long, value_name = "N", default_value_t = 365)]
    days: u32,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    #[command(flatten)]
    ca: CaDir,
    #[command(flatten)]
    output: Output,
    /// Common name of the client certificate.
    #[arg(long, value_name = "CN")]
    name: String,
    /// URI SAN naming the caller, e.g. spiffe://example.org/billing (repeatable).
    #[arg(long, value_name = "URI")]
    uri: Vec<String>,
    /// DNS SAN (repeatable).
    #[arg(long, value_name = "NAME")]
    dns: Vec<String>,
    /// Validity in days.
    #[arg(long, value_name = "N", default_value_t = 365)]
    days: u32,
}

/// What a subcommand wrote, and what its operator should know about it.
struct Written {
    cert: PathBuf,
    key: PathBuf,
    /// The caller identity the vault sees in a client certificate.
    identity: Option<String>,
    note: String,
}

/// Runs `pii-vault certs ...`.
pub fn run(cmd: CertsCmd, out: Out) -> anyhow::Result<()> {
    let written = match cmd {
        CertsCmd::Ca(args) => ca(args),
        CertsCmd::Server(args) => server(args),
        CertsCmd::Client(args) => client(args),
    }?;
    let value = json!({
        "certificate": written.cert.display().to_string(),
        "key": written.key.display().to_string(),
        "identity": written.identity,
    });
    out.one(&value, || {
        let mut text = format!(
            "wrote {}\nwrote {} (private key, mode 0600)\n  {}",
            written.cert.display(),
            written.key.display(),
            written.note
        );
        if let Some(id) = &written.identity {
            text.push_str(&format!("\n  caller identity seen by the vault: {id}"));
        }
        text
    });
    Ok(())
}

fn ca(args: CaArgs) -> anyhow::Result<Written> {
    let lifetime = lifetime(args.days)?;
    check_text("--name", &args.name)?;
    let cert = args.output.out.join("ca.pem");
    let key = args.output.out.join("ca.key");
    refuse_existing(&[&cert, &key], args.output.force)?;
    let ca = Authority::generate(&args.name, lifetime).context("cannot create the CA")?;
    write_pair(&cert, ca.cert_pem.as_bytes(), &key, ca.key_pem.as_bytes())?;
    Ok(Written {
        cert,
        key,
        identity: None,
        note: "keep ca.key offline or in your secret manager: whoever holds it can mint identities"
            .to_owned(),
    })
}

fn server(args: ServerArgs) -> anyhow::Result<Written> {
    let lifetime = lifetime(args.days)?;
    check_text("--name", &args.name)?;
    for san in &args.san {
        check_name("--san", san)?;
    }
    let spec = LeafSpec {
        common_name: args.name,
        names: args.san,
        uris: vec![],
        usage: Usage::Server,
        lifetime,
        not_before_offset_secs: 0,
    };
    Ok(issue(&args.ca, &args.output, "server", &spec)?.1)
}

fn client(args: ClientArgs) -> anyhow::Result<Written> {
    let lifetime = lifetime(args.days)?;
    check_text("--name", &args.name)?;
    for uri in &args.uri {
        check_uri(uri)?;
    }
    for dns in &args.dns {
        check_name("--dns", dns)?;
        if dns.parse::<std::net::IpAddr>().is_ok() {
            bail!("--dns {dns:?} is an IP address; a client is named by a DNS name or a URI");
        }
    }
    let spec = LeafSpec {
        common_name: args.name,
        names: args.dns,
        uris: args.uri,
        usage: Usage::Client,
        lifetime,
        not_before_offset_secs: 0,
    };
    let (der, mut written) = issue(&args.ca, &args.output, "client", &spec)?;
    match PeerIdentity::from_certificate(&der) {
        Ok(id) => written.identity = Some(id.to_string()),
        Err(e) => bail!("the vault would refuse the issued certificate: {e}"),
    }
    Ok(written)
}

/// Loads the CA, signs `spec` and writes `<stem>.pem` and `<stem>.key`; returns the
/// certificate's DER and what was written.
fn issue(
    ca_dir: &CaDir, output: &Output, stem: &str, spec: &LeafSpec,
) -> anyhow::Result<(Vec<u8>, Written)> {
    let cert = output.out.join(format!("{stem}.pem"));
    let key = output.out.join(format!("{stem}.key"));
    refuse_existing(&[&cert, &key], output.force)?;
    let ca = load_ca(&ca_dir.ca_dir)?;
    let lifetime = time::Duration::try_from(spec.lifetime).context("--days is too large")?;
    if time::OffsetDateTime::now_utc() + lifetime > ca.not_after() {
        bail!(
            "the CA in {} expires on {}; a certificate valid for {} days would outlive it (lower --days or create a new CA)",
            ca_dir.ca_dir.display(),
            ca.not_after().date(),
            lifetime.whole_days()
        );
    }
    let issued = ca
        .issue(spec)
        .with_context(|| format!("cannot issue the {stem} certificate"))?;
    write_pair(
        &cert,
        issued.cert_pem.as_bytes(),
        &key,
        issued.key_pem.as_bytes(),
    )?;
    let note = format!(
        "signed by {} (give it to peers that must trust this certificate)",
        ca_dir.ca_dir.join("ca.pem").display()
    );
    Ok((
        issued.cert_der,
        Written {
            cert,
            key,
            identity: None,
            note,
        },
    ))
}

fn load_ca(dir: &Path) -> anyhow::Result<Authority> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (create a CA with `pii-vault certs ca --out {}`)",
                path.display(),
                dir.display()
            )
        })
    };
    let cert = read("ca.pem")?;
    let key = read("ca.key")?;
    Authority::from_pem(&cert, &key).with_context(|| format!("CA in {}", dir.display()))
}

fn write_pair(cert: &Path, cert_pem: &[u8], key: &Path, key_pem: &[u8]) -> anyhow::Result<()> {
    write_file(cert, cert_pem, false)?;
    write_file(key, key_pem, true)?;
    Ok(())
}

/// Fails, naming every file in the way, unless `force`. Checked before anything is
/// written, so a refusal leaves the directory as it was. A dangling symlink counts as
/// existing: writing through it would create a file somewhere else.
fn refuse_existing(paths: &[&Path], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    let existing: Vec<String> = paths
        .iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .map(|p| p.display().to_string())
        .collect();
    match existing.len() {
        0 => Ok(()),
        1 => bail!(
            "refusing to overwrite {}: it already exists (pass --force to replace it)",
            existing[0]
        ),
        _ => bail!(
            "refusing to overwrite {}: they already exist (pass --force to replace them)",
            existing.join(" and ")
        ),
    }
}

fn lifetime(days: u32) -> anyhow::Result<Duration> {
    if !(1..=MAX_DAYS).contains(&days) {
        bail!("--days is {days}; it must be between 1 and {MAX_DAYS}");
    }
    Ok(Duration::from_secs(u64::from(days) * 24 * 3600))
}

fn check_text(flag: &str, value: &str) -> anyhow::Result<()> {
    if value.trim().is_empty() || value.chars().any(char::is_control) {
        bail!("{flag} must be non-empty text without control characters");
    }
    Ok(())
}

/// A DNS name (wildcards allowed) or an IP address.
fn check_name(flag: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*' | ':' | '_'));
    if !ok {
        bail!("{flag} {name:?} is not a DNS name or an IP address");
    }
    Ok(())
}

/// An absolute URI such as `spiffe://trust-domain/path`.
fn check_uri(uri: &str) -> anyhow::Result<()> {
    let scheme_ok = uri.split_once("://").is_some_and(|(scheme, rest)| {
        !rest.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    if !scheme_ok || !uri.chars().all(|c| c.is_ascii_graphic()) {
        bail!("--uri {uri:?} is not an absolute URI such as spiffe://example.org/billing");
    }
    Ok(())
}
