//! `pii-vault serve`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpSocket;

use serde_json::json;

use pii_vault::config::RawConfig;
use pii_vault::dev::{bootstrap, StartMode};

use super::output::Out;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see deploy/pii-vault.example.toml). Needed unless --dev.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Development mode, never for real data: on first start, creates in the data
    /// directory a root key file, dev TLS certificates and a policy that lets the dev
    /// client certificate do everything, and marks the directory as a dev one (a start
    /// without --dev refuses it). Warns at every start.
    #[arg(long)]
    dev: bool,
    /// Listen address; overrides the file.
    #[arg(long)]
    listen: Option<String>,
    /// Data directory; overrides the file.
    #[arg(long, env = "PIIVAULT_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// The warning every dev start prints.
const DEV_BANNER: &str = "DEVELOPMENT MODE: dev certificates, an allow-all policy and (unless \
     keys.root names a PKCS#11 token) a root key file beside the data. Never store real personal \
     data in this vault.";

pub async fn serve(args: ServeArgs, out: Out) -> anyhow::Result<()> {
    if !args.dev && args.config.is_none() {
        anyhow::bail!(
            "no configuration: a real deployment starts with `serve --config FILE` (every \
             setting is in deploy/pii-vault.example.toml); to try the vault, `serve --dev` \
             creates a dev root key, certificates and an allow-all policy"
        );
    }
    let mode = if args.dev {
        StartMode::Dev
    } else {
        StartMode::Configured
    };
    let mut raw = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the config file {}", path.display()))?;
            RawConfig::parse(&text, &path.display().to_string())?
        }
        None => RawConfig::default(),
    };
    if args.listen.is_some() {
        raw.listen = args.listen;
    }
    if args.data_dir.is_some() {
        raw.data_dir = args.data_dir;
    }
    let config = raw.validate()?;
    // The port first (bound, not yet listening), then the files, then the store: a busy
    // port creates nothing, and a store another process holds is refused before anything
    // accepts a connection.
    let socket = reserve(config.listen)?;
    let created = bootstrap(&config, mode)?;
    if mode == StartMode::Dev {
        tracing::warn!(data_dir = %config.data_dir.display(), "{DEV_BANNER}");
    }
    if created.root_key {
        tracing::info!(path = %config.root_key_file.display(), "created a new root key file (mode 0600)");
    }
    let store = pii_vault::server::open_store(&config).await?;
    let listener = socket
        .listen(LISTEN_BACKLOG)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let mut value = json!({"listening": addr.to_string(), "tls": "mutual TLS 1.3"});
    let mut text =
        format!("pii-vault listening on {addr} (mutual TLS 1.3; a client certificate is required)");
    if mode == StartMode::Dev {
        value["warning"] = json!(DEV_BANNER);
        text = format!("{DEV_BANNER}\n{text}");
    }
    if mode == StartMode::Dev && config.dev_tls {
        let pki = config.dev_pki();
        let verb = if created.dev_certs {
            "created"
        } else {
            "using"
        };
        value["dev_certificates"] = json!({
            "ca": pki.ca_cert.display().to_string(),
            "client_certificate": pki.client_cert.display().to_string(),
            "client_key": pki.client_key.display().to_string(),
        });
        let dir = pki
            .ca_cert
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        // The way this binary was started, so the line works as it is (a path, or the
        // name on PATH).
        let me = std::env::args()
            .next()
            .unwrap_or_else(|| "pii-vault".to_owned());
        text.push_str(&format!(
            "\n  {verb} dev certificates in {dir}\n    CA:     {}\n    client: {} (key {})\n  try:    {me} tenant create demo --addr {addr} --data-dir {}",
            pki.ca_cert.display(),
            pki.client_cert.display(),
            pki.client_key.display(),
            config.data_dir.display()
        ));
    }
    out.one(&value, || text);
    pii_vault::server::serve(listener, config, store, shutdown_signal()).await?;
    Ok(())
}

/// Connections the kernel queues before the server accepts them.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds `addr` without listening yet, so nothing can connect before the vault is open.
fn reserve(addr: std::net::SocketAddr) -> anyhow::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("cannot listen on {addr}"))?;
    Ok(socket)
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested; draining");
}
