//! `pii-vault export`: privacy tooling's portable export. Streams a subject's export
//! document (`pii-vault.export/v1`) into a file as it arrives, so a subject of any size
//! exports without being held in memory. The file appears under its name only when the
//! export is complete; it is created readable by its owner only, as it holds personal data.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use pb::subject_rights_service_client::SubjectRightsServiceClient;
use pii_vault::proto::v1 as pb;

use serde_json::json;

use super::output::Out;
use super::{about, Connection};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Tenant id.
    tenant: String,
    /// Subject id.
    subject: String,
    /// File to write the JSON document to.
    #[arg(long)]
    out: PathBuf,
    /// Purpose declared for the export.
    #[arg(long, default_value = "data_subject_request")]
    purpose: String,
    #[command(flatten)]
    conn: Connection,
}

fn create_private(path: &Path) -> anyhow::Result<File> {
    let mut opts = OpenOptions::new();
    opts.create(true).write(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

pub async fn export(args: ExportArgs, out: Out) -> anyhow::Result<()> {
    about(Some(&args.tenant), Some(&args.subject));
    let mut partial = args.out.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut client = SubjectRightsServiceClient::new(args.conn.channel().await?);
    let mut stream = client
        .export_subject(pb::ExportSubjectRequest {
            tenant_id: args.tenant.clone(),
            subject_id: args.subject.clone(),
            purpose: args.purpose.clone(),
        })
        .await?
        .into_inner();
    let mut file = create_private(&partial)?;
    let mut written = 0u64;
    let received = loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                file.write_all(&chunk.data)
                    .with_context(|| format!("writing {}", partial.display()))?;
                written += chunk.data.len() as u64;
            }
            Ok(None) => break Ok(()),
            Err(s) => break Err(s),
        }
    };
    if let Err(s) = received {
        drop(file);
        let _ = std::fs::remove_file(&partial);
        return Err(s.into());
    }
    file.sync_all()
        .with_context(|| format!("syncing {}", partial.display()))?;
    std::fs::rename(&partial, &args.out)
        .with_context(|| format!("renaming to {}", args.out.display()))?;
    let file = args.out.display().to_string();
    out.one(&json!({"file": file, "bytes": written}), || {
        format!("exported {written} bytes to {file}")
    });
    Ok(())
}
