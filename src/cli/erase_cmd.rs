//! `pii-vault erase`: the erasure job's tool. Reads subject ids from the arguments, a file or
//! stdin (one per line), erases them over one EraseSubjects stream and prints each receipt
//! as it comes (a JSON line with `--format json`), in the order the vault finished them. A
//! progress bar shows on a terminal only; failures are reported per subject, and any
//! failure makes the command exit 2 once every id was tried.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use pb::subject_rights_service_client::SubjectRightsServiceClient;
use pii_vault::domain::Category;
use pii_vault::proto::v1 as pb;

use super::output::{progress_bar, time, Out};
use super::report::{item_line, Target};
use super::{about, Connection, Refused};

#[derive(Debug, Args)]
pub struct EraseArgs {
    /// Tenant id.
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

/// A receipt as JSON: everything the vault answered, times in RFC 3339.
fn receipt_json(r: &pb::ErasureReceipt) -> Value {
    let category = |c: i32| Category::from_code(i64::from(c)).map_or("?", Category::name);
    json!({
        "receipt_id": r.receipt_id,
        "tenant": r.tenant_id,
        "subject": r.subject_id,
        "erased_at": time(r.erased_at.as_ref()),
        "erased_by": r.erased_by,
        "categories_erased": r.categories_erased.iter().map(|c| category(*c)).collect::<Vec<_>>(),
        "retained": r.retained.iter().map(|k| json!({
            "category": category(k.category),
            "retained_until": time(k.retained_until.as_ref()),
        })).collect::<Vec<_>>(),
        "final_after": time(r.final_after.as_ref()),
        "already_erased": r.already_erased,
    })
}

fn receipt_text(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
    let categories: Vec<&str> = v["categories_erased"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut text = format!(
        "{} erased: receipt {}, at {} by {}, categories {}, no copy after {}",
        s("subject"),
        s("receipt_id"),
        s("erased_at"),
        s("erased_by"),
        if categories.is_empty() {
            "-".to_owned()
        } else {
            categories.join(",")
        },
        s("final_after"),
    );
    for kept in v["retained"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "; {} records kept until {}",
            kept["category"].as_str().unwrap_or("?"),
            kept["retained_until"].as_str().unwrap_or("?")
        ));
    }
    if v["already_erased"] == Value::Bool(true) {
        text.push_str(" (erased before: the first receipt)");
    }
    text
}

pub async fn erase(args: EraseArgs, out: Out) -> anyhow::Result<()> {
    about(Some(&args.tenant), None);
    let mut ids = args.subjects;
    if let Some(from) = &args.from {
        ids.extend(read_ids(from)?);
    }
    if ids.is_empty() {
        bail!("no subject ids given: pass them as arguments, or one per line with --from FILE (- for stdin)");
    }
    let mut client = SubjectRightsServiceClient::new(args.conn.long_channel().await?);
    let total = ids.len();
    let bar = progress_bar(total as u64, "erasing");
    // One stream for the whole job (EraseSubjects): the vault erases several at once and
    // answers each as it is done.
    let requests: Vec<pb::EraseSubjectsRequest> = ids
        .iter()
        .map(|subject| pb::EraseSubjectsRequest {
            tenant_id: args.tenant.clone(),
            subject_id: subject.clone(),
        })
        .collect();
    let mut results = client
        .erase_subjects(tokio_stream::iter(requests))
        .await?
        .into_inner();
    let mut failed = 0usize;
    let mut answered = 0usize;
    while let Some(r) = results.message().await? {
        answered += 1;
        let subject = usize::try_from(r.index)
            .ok()
            .and_then(|i| ids.get(i))
            .cloned();
        match r.result {
            Some(pb::erase_subjects_response::Result::Receipt(receipt)) => {
                let receipt = receipt_json(&receipt);
                bar.suspend(|| out.one(&receipt, || receipt_text(&receipt)));
            }
            Some(pb::erase_subjects_response::Result::Error(e)) => {
                failed += 1;
                // The id is the job's own input; echoing it to its operator is fine.
                let status = tonic::Status::new(tonic::Code::from_i32(e.code), e.message);
                let target = Target {
                    tenant: Some(args.tenant.clone()),
                    subject,
                    ..Target::default()
                };
                let line = item_line(&status, &e.reason, &e.metadata, &target);
                bar.suspend(|| eprintln!("error: {line}"));
                bar.set_message(format!("{failed} failed"));
            }
            None => failed += 1,
        }
        bar.inc(1);
    }
    failed += total.saturating_sub(answered);
    bar.finish_and_clear();
    eprintln!("erased {}/{total} ({failed} failed)", total - failed);
    if failed > 0 {
        return Err(Refused(format!("{failed} of {total} erasures failed")).into());
    }
    Ok(())
}
