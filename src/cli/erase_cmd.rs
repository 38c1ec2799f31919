//! `pii-vault erase`: the erasure job's tool. Reads subject ids from the arguments, a file or
//! stdin (one per line), erases each, prints one JSON receipt per line, and reports progress
//! on stderr.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use pb::subject_rights_service_client::SubjectRightsServiceClient;
use pii_vault::proto::v1 as pb;

use super::Connection;

#[derive(Debug, Args)]
pub struct EraseArgs {
    tenant: String,
    /// Subject ids to erase (in addition to `--from`).
    subjects: Vec<String>,
    /// File with one subject id per line; `-` reads stdin.
    #[arg(long)]
    from: Option<PathBuf>,
    #[command(flatten)]
    conn: Connection,
}

fn read_ids(from: &PathBuf) -> anyhow::Result<Vec<String>> {
    let reader: Box<dyn BufRead> = if from.as_os_str() == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        Box::new(BufReader::new(
            std::fs::File::open(from).with_context(|| from.display().to_string())?,
        ))
    };
    let mut ids = Vec::new();
    for line in reader.lines() {
        let line = line?;
        let id = line.trim();
        if !id.is_empty() && !id.starts_with('#') {
            ids.push(id.to_owned());
        }
    }
    Ok(ids)
}

pub async fn erase(args: EraseArgs) -> anyhow::Result<()> {
    let mut ids = args.subjects;
    if let Some(from) = &args.from {
        ids.extend(read_ids(from)?);
    }
    let mut client = SubjectRightsServiceClient::new(args.conn.channel().await?);
    let total = ids.len();
    let mut failed = 0usize;
    for (i, subject) in ids.into_iter().enumerate() {
        let result = client
            .erase_subject(pb::EraseSubjectRequest {
                tenant_id: args.tenant.clone(),
                subject_id: subject.clone(),
            })
            .await;
        match result {
            Ok(r) => {
                let r = r.into_inner();
                let line = serde_json::json!({
                    "receipt_id": r.receipt_id,
                    "tenant": r.tenant_id,
                    "subject": r.subject_id,
                    "erased_at": r.erased_at.map(|t| t.seconds),
                    "final_after": r.final_after.map(|t| t.seconds),
                    "already_erased": r.already_erased,
                });
                println!("{line}");
            }
            Err(status) => {
                failed += 1;
                // The id is the job's own input; echoing it to its operator is fine.
                eprintln!("{subject}: {:?}: {}", status.code(), status.message());
            }
        }
        if (i + 1) % 100 == 0 || i + 1 == total {
            eprintln!("erased {}/{total} ({failed} failed)", i + 1 - failed);
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {total} erasures failed");
    }
    Ok(())
}
