//! `pii-vault health`: asks the vault's gRPC health service (over mutual TLS, as any
//! client) whether it serves, for scripts: exit 0 when SERVING, 2 when the vault answered
//! anything else, 1 when it could not be asked (no connection, no answer in time).

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pii_vault::client::Health;

use serde_json::json;

use super::output::Out;
use super::{Connection, Refused};

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The service to ask about, e.g. `piivault.v1.RecordService`; the default (empty)
    /// asks about the vault as a whole.
    #[arg(long, default_value = "")]
    service: String,
    #[command(flatten)]
    conn: Connection,
}

/// How long `health` waits for its answer, connection included, unless `--timeout` says.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn health(args: HealthArgs, out: Out) -> anyhow::Result<()> {
    let limit = args
        .conn
        .timeout
        .filter(|t| !t.is_zero())
        .unwrap_or(HEALTH_TIMEOUT);
    let ask = async {
        let channel = args.conn.open(Some(limit)).await?;
        anyhow::Ok(pii_vault::client::health(channel, &args.service).await?)
    };
    let status = tokio::time::timeout(limit, ask)
        .await
        .with_context(|| format!("no answer from the vault within {} s", limit.as_secs_f64()))??;
    let what = if args.service.is_empty() {
        "vault"
    } else {
        &args.service
    };
    let value = json!({"service": args.service, "status": status.name()});
    match status {
        Health::Serving => {
            out.one(&value, || format!("{what}: SERVING"));
            Ok(())
        }
        other => {
            out.one(&value, || format!("{what}: {}", other.name()));
            Err(Refused(format!("{what}: {}", other.name())).into())
        }
    }
}
