//! An erasure job: reads subject ids (one per line, `#` comments allowed) from stdin,
//! erases each from a tenant, and prints one receipt per subject as a JSON line for the
//! job's records. A subject the vault does not hold is reported and skipped; any other
//! failure is counted, and the job exits 1 (an error) when there was one.
//!
//!     printf 'user-1\nuser-2\n' | PIIVAULT_ADDR=127.0.0.1:7443 \
//!         cargo run --release --example erasure_job -- demo
//!
//! Erasing is idempotent: run the job again after a failure and the subjects erased the
//! first time answer their first receipt (`already_erased`).

use std::error::Error;
use std::io::{BufRead, Write};

use pii_vault::client::{ClientConfig, VaultClient};
use pii_vault::proto::v1::ErrorReason;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = ClientConfig::from_env()?;
    let (stdin, mut stdout, mut stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    run(config, &args, stdin.lock(), &mut stdout, &mut stderr).await
}

/// The job, given its vault, its arguments, the ids to erase, where its receipts go and
/// where its diagnostics go (by `main`, the environment's vault, stdin, stdout and stderr;
/// by `tests/it/examples.rs`, a test vault and buffers). An error when a subject failed.
pub async fn run(
    config: ClientConfig, args: &[String], ids: impl BufRead, receipts: &mut impl Write,
    log: &mut impl Write,
) -> Result<(), Box<dyn Error>> {
    let tenant = args.first().ok_or("usage: erasure_job TENANT < ids")?;
    let vault = VaultClient::connect(&config).await?;
    let (mut erased, mut not_held, mut failed) = (0u64, 0u64, 0u64);
    for line in ids.lines() {
        let line = line?;
        let subject = line.trim();
        if subject.is_empty() || subject.starts_with('#') {
            continue;
        }
        match vault.erase(tenant, subject).await {
            Ok(r) => {
                erased += 1;
                writeln!(
                    receipts,
                    "{{\"subject\":{:?},\"receipt_id\":{:?},\"erased_at\":{:?},\"final_after\":{:?},\"already_erased\":{}}}",
                    r.subject_id,
                    r.receipt_id,
                    r.erased_at.map(|t| t.to_string()).unwrap_or_default(),
                    r.final_after.map(|t| t.to_string()).unwrap_or_default(),
                    r.already_erased
                )?;
            }
            Err(e) if e.reason() == Some(ErrorReason::SubjectNotFound) => {
                not_held += 1;
                writeln!(log, "{subject}: not held by the vault; skipped")?;
            }
            Err(e) => {
                failed += 1;
                writeln!(log, "{subject}: {e} (after {} tries)", e.attempts)?;
            }
        }
    }
    writeln!(log, "erased {erased}, not held {not_held}, failed {failed}")?;
    if failed > 0 {
        return Err(format!("{failed} subjects were not erased").into());
    }
    Ok(())
}
