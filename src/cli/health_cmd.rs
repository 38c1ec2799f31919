//! `pii-vault health`: asks the vault's gRPC health service (over mutual TLS, as any
//! client) whether it serves, for scripts: exit 0 when SERVING, 2 when the vault answered
//! anything else, 1 when it could not be asked (no connection, no answer in time).

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pii_vault::client::Health;

use super::{Connection, Refused};

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The service to ask about, e.g. `piivault.v1.RecordService`; the default (empty)
    /// asks about the vault as a whole.
    #[arg(long, default_value = "")]
    service: String,
    /// Seconds to wait for the answer, connection included.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
    #[command(flatten)]
    conn: Connection,
}

pub async fn health(args: HealthArgs) -> anyhow::Result<()> {
    let limit = Duration::from_secs(args.timeout.max(1));
    let ask = async {
        let channel = args.conn.channel().await?;
        anyhow::Ok(pii_vault::client::health(channel, &args.service).await?)
    };
    let status = tokio::time::timeout(limit, ask)
        .await
        .with_context(|| format!("no answer from the vault within {} s", limit.as_secs()))??;
    let what = if args.service.is_empty() {
        "vault"
    } else {
        &args.service
    };
    match status {
        Health::Serving => {
            println!("{what}: SERVING");
            Ok(())
        }
        other => Err(Refused(format!("{what}: {}", other.name())).into()),
    }
}
