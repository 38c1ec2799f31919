//! The data subject's rights by hand: restrict, lift-restriction, consent set|list, access.

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tonic::transport::Channel;

use pb::subject_rights_service_client::SubjectRightsServiceClient;
use pii_vault::proto::v1 as pb;

use super::client_cmds::field_json;
use super::output::{time, Out};
use super::{about, Connection};

#[derive(Debug, Args)]
pub struct SubjectArgs {
    /// Tenant id.
    tenant: String,
    /// Subject id.
    subject: String,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Subcommand)]
pub enum ConsentCmd {
    /// Record a subject's consent decision for a purpose.
    Set {
        /// Tenant id.
        tenant: String,
        /// Subject id.
        subject: String,
        /// The purpose, e.g. `marketing`.
        purpose: String,
        /// The subject consents.
        #[arg(
            long,
            conflicts_with = "withdraw",
            required_unless_present = "withdraw"
        )]
        grant: bool,
        /// The subject withdraws (or refuses) consent.
        #[arg(long)]
        withdraw: bool,
        /// Where the decision came from: a form or ticket id, never personal data.
        #[arg(long)]
        source: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// List a subject's latest decision per purpose.
    List {
        /// Tenant id.
        tenant: String,
        /// Subject id.
        subject: String,
        #[command(flatten)]
        conn: Connection,
    },
}

async fn client(conn: &Connection) -> anyhow::Result<SubjectRightsServiceClient<Channel>> {
    Ok(SubjectRightsServiceClient::new(conn.channel().await?))
}

fn decision(
    purpose: &str, granted: bool, at: Option<&prost_types::Timestamp>, source: &str,
) -> Value {
    json!({
        "purpose": purpose,
        "granted": granted,
        "decided_at": time(at),
        "source": source,
    })
}

fn consents_json(s: &pb::SubjectStatus) -> Vec<Value> {
    s.consents
        .iter()
        .map(|c| decision(&c.purpose, c.granted, c.decided_at.as_ref(), &c.source))
        .collect()
}

fn status_json(s: &pb::SubjectStatus) -> Value {
    json!({
        "tenant": s.tenant_id,
        "subject": s.subject_id,
        "restricted": s.restricted,
        "restricted_since": time(s.restricted_since.as_ref()),
        "consents": consents_json(s),
    })
}

fn status_text(s: &pb::SubjectStatus) -> String {
    match &s.restricted_since {
        Some(since) if s.restricted => format!(
            "subject {} of tenant {}: restricted since {since}",
            s.subject_id, s.tenant_id
        ),
        _ => format!(
            "subject {} of tenant {}: not restricted",
            s.subject_id, s.tenant_id
        ),
    }
}

pub async fn restrict(args: SubjectArgs, on: bool, out: Out) -> anyhow::Result<()> {
    about(Some(&args.tenant), Some(&args.subject));
    let mut client = client(&args.conn).await?;
    let s = if on {
        client
            .restrict_subject(pb::RestrictSubjectRequest {
                tenant_id: args.tenant,
                subject_id: args.subject,
            })
            .await?
    } else {
        client
            .lift_restriction(pb::LiftRestrictionRequest {
                tenant_id: args.tenant,
                subject_id: args.subject,
            })
            .await?
    }
    .into_inner();
    out.one(&status_json(&s), || status_text(&s));
    Ok(())
}

const CONSENT_COLUMNS: [&str; 4] = ["purpose", "granted", "decided_at", "source"];

pub async fn consent(cmd: ConsentCmd, out: Out) -> anyhow::Result<()> {
    let s = match cmd {
        ConsentCmd::Set {
            tenant,
            subject,
            purpose,
            grant,
            withdraw: _,
            source,
            conn,
        } => {
            about(Some(&tenant), Some(&subject));
            client(&conn)
                .await?
                .set_consent(pb::SetConsentRequest {
                    tenant_id: tenant,
                    subject_id: subject,
                    purpose,
                    granted: grant,
                    source,
                })
                .await?
        }
        ConsentCmd::List {
            tenant,
            subject,
            conn,
        } => {
            about(Some(&tenant), Some(&subject));
            client(&conn)
                .await?
                .list_consents(pb::ListConsentsRequest {
                    tenant_id: tenant,
                    subject_id: subject,
                })
                .await?
        }
    }
    .into_inner();
    out.table(&CONSENT_COLUMNS, &consents_json(&s));
    Ok(())
}

pub async fn access(args: SubjectArgs, out: Out) -> anyhow::Result<()> {
    about(Some(&args.tenant), Some(&args.subject));
    let r = client(&args.conn)
        .await?
        .access_subject(pb::AccessSubjectRequest {
            tenant_id: args.tenant,
            subject_id: args.subject,
        })
        .await?
        .into_inner();
    let fields: Vec<Value> = r
        .fields
        .iter()
        .map(|h| {
            let mut f = h.field.clone().map(field_json).unwrap_or(Value::Null);
            f["kind"] = json!(h.kind);
            f["retention"] = json!(h.retention.as_ref().map(|r| r.description.clone()));
            f["expires_at"] = time(h.expires_at.as_ref());
            f
        })
        .collect();
    let recipients: Vec<Value> = r
        .recipients
        .iter()
        .map(|p| {
            json!({
                "seq": p.seq,
                "time": time(p.time.as_ref()),
                "caller": p.caller,
                "operation": p.operation,
                "purpose": p.purpose,
                "fields": p.field_names,
                "request_id": p.request_id,
            })
        })
        .collect();
    let consents: Vec<Value> = r
        .consents
        .iter()
        .map(|c| decision(&c.purpose, c.granted, c.decided_at.as_ref(), &c.source))
        .collect();
    let report = json!({
        "tenant": r.tenant_id,
        "subject": r.subject_id,
        "generated_at": time(r.generated_at.as_ref()),
        "subject_created_at": time(r.subject_created_at.as_ref()),
        "restricted": r.restricted,
        "restricted_since": time(r.restricted_since.as_ref()),
        "fields": fields,
        "consents": consents,
        "recipients": recipients,
    });
    out.one(&report, || {
        let mut text = format!(
            "subject {} of tenant {}: {} fields, {} consent decisions, {} recipients{}\n",
            r.subject_id,
            r.tenant_id,
            fields.len(),
            consents.len(),
            recipients.len(),
            if r.restricted { ", restricted" } else { "" }
        );
        for f in &fields {
            text.push_str(&format!(
                "  field {} ({}, v{}): kept {}, expires {}\n",
                f["field"].as_str().unwrap_or("?"),
                f["category"].as_str().unwrap_or("?"),
                f["version"],
                f["retention"].as_str().unwrap_or("-"),
                f["expires_at"].as_str().unwrap_or("never")
            ));
        }
        for p in &recipients {
            text.push_str(&format!(
                "  read {} by {} ({}, purpose {})\n",
                p["time"].as_str().unwrap_or("?"),
                p["caller"].as_str().unwrap_or("?"),
                p["operation"].as_str().unwrap_or("?"),
                p["purpose"].as_str().unwrap_or("-")
            ));
        }
        text.trim_end().to_owned()
    });
    Ok(())
}
