//! The security team's key-rotation runbook as a program: show a tenant's key, rotate it,
//! follow the background re-wrap until every subject key is wrapped by the new version,
//! then run a key epoch, which destroys the key versions that erasures left behind.
//!
//!     PIIVAULT_ADDR=127.0.0.1:7443 cargo run --release --example key_rotation -- demo
//!
//! A key epoch can run for long, so this program waits as long as the vault takes for
//! each answer (no request deadline), while the connection itself is still bounded.

use std::error::Error;
use std::io::Write;
use std::time::{Duration, Instant};

use pii_vault::client::{ClientConfig, VaultClient};

/// How long the re-wrap may take before the runbook stops waiting and says so.
const REWRAP_PATIENCE: Duration = Duration::from_secs(600);

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    run(ClientConfig::from_env()?, &args, &mut std::io::stdout()).await
}

/// The runbook, given its vault, its arguments and where to print (by `main`, the
/// environment's vault and stdout; by `tests/it/examples.rs`, a test vault and a buffer).
pub async fn run(
    mut config: ClientConfig, args: &[String], out: &mut impl Write,
) -> Result<(), Box<dyn Error>> {
    let tenant = args.first().ok_or("usage: key_rotation TENANT")?;
    config.timeouts.request = None;
    let vault = VaultClient::connect(&config).await?;

    let before = vault.key_status(tenant).await?;
    let current = before.tenants.first().map_or(0, |t| t.current_version);
    writeln!(out, "tenant {tenant}: key v{current}")?;

    let rotation = vault.rotate_tenant_key(tenant).await?;
    writeln!(
        out,
        "rotated: v{} -> v{}; re-wrapping subject keys",
        rotation.previous_version, rotation.new_version
    )?;
    let started = Instant::now();
    loop {
        let status = vault.key_status(tenant).await?;
        let job = status.tenants.first().and_then(|t| t.rewrap);
        match job {
            Some(r) if r.target_version == rotation.new_version => {
                writeln!(
                    out,
                    "  {}/{} subjects examined",
                    r.subjects_scanned, r.subjects_total
                )?;
            }
            _ => break,
        }
        if started.elapsed() > REWRAP_PATIENCE {
            return Err("the re-wrap is still running; check `pii-vault keys status` later".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    writeln!(out, "re-wrap to v{} complete", rotation.new_version)?;

    let epoch = vault.run_key_epoch().await?;
    for t in &epoch.tenants {
        writeln!(
            out,
            "epoch: tenant {} destroyed versions {:?}",
            t.tenant_id, t.destroyed_versions
        )?;
    }
    writeln!(
        out,
        "epoch done: root key v{}, {} DEKs re-wrapped",
        epoch.root_version, epoch.deks_rewrapped
    )?;
    Ok(())
}
