//! How a failed command tells its operator what happened: one `error:` line, the same in
//! every command, and a `hint:` line where one helps; and its exit code.
//!
//! Exit codes: 0 done; 1 a local or usage problem (bad arguments, an unreadable file, no
//! connection, no answer in time); 2 the vault answered and refused (any error status it
//! sent, or `health` hearing anything but SERVING).
//!
//! A refusal reads `error: NOT_FOUND: subject user-42 was erased (receipt er-…)`: the gRPC
//! code, then the vault's reason in words, built from its `ErrorInfo` and the ids the
//! command was given. Never a field value: the vault sends none, and the ids are the
//! operator's own input.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use pii_vault::client::{error_detail, ClientError};
use pii_vault::proto::v1::ErrorReason;
use tonic::Code;

use super::Refused;

/// What the failed command was about: the ids and the connection it was given.
#[derive(Debug, Default)]
pub struct Target {
    pub tenant: Option<String>,
    pub subject: Option<String>,
    pub addr: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub timeout: Option<Duration>,
}

/// The lines to print on stderr and the exit code.
#[derive(Debug)]
pub struct Report {
    pub lines: Vec<String>,
    pub code: u8,
}

/// The report of a failed command.
pub fn report(e: &anyhow::Error, target: &Target) -> Report {
    if let Some(status) = e.downcast_ref::<tonic::Status>() {
        return status_report(status, target);
    }
    if let Some(client) = e.downcast_ref::<ClientError>() {
        return client_report(client, target);
    }
    let code = if e.downcast_ref::<Refused>().is_some() {
        2
    } else {
        1
    };
    Report {
        lines: vec![format!("error: {}", chain(e))],
        code,
    }
}

/// The causes of `e`, joined with `: `, each said once (tonic and hyper repeat theirs:
/// "transport error: transport error: tcp connect error: tcp connect error").
fn chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if parts.last().is_none_or(|last| !last.ends_with(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// The name gRPC gives a status code (`NOT_FOUND`).
fn code_name(code: Code) -> &'static str {
    pii_vault::proto::code_name(code as i32)
}

fn or_unknown(id: &Option<String>) -> &str {
    id.as_deref().unwrap_or("(unknown)")
}

/// The error line of one failed item of a batch call (an `ItemError`: its status, reason
/// name and metadata).
pub fn item_line(
    status: &tonic::Status, reason: &str, metadata: &HashMap<String, String>, target: &Target,
) -> String {
    line(
        status,
        ErrorReason::from_str_name(reason),
        metadata,
        None,
        target,
    )
}

/// One line for a status of the vault, naming the ids the command was given.
fn line(
    status: &tonic::Status, reason: Option<ErrorReason>, metadata: &HashMap<String, String>,
    retry_after: Option<Duration>, target: &Target,
) -> String {
    use ErrorReason as R;
    let (tenant, subject) = (or_unknown(&target.tenant), or_unknown(&target.subject));
    let mut text = match reason {
        Some(R::SubjectErased) => match metadata.get("receipt_id") {
            Some(receipt) => format!("subject {subject} was erased (receipt {receipt})"),
            None => format!("subject {subject} was erased"),
        },
        Some(R::SubjectNotFound) => format!("subject {subject} not found in tenant {tenant}"),
        Some(R::TenantNotFound) => format!("tenant {tenant} not found"),
        Some(R::TenantShredded) => {
            format!("tenant {tenant} was shredded: its keys are destroyed and nothing of it can be read")
        }
        Some(R::FieldNotFound) => match metadata.get("field") {
            Some(field) => format!("field {field} not found on subject {subject}"),
            None => status.message().to_owned(),
        },
        _ => status.message().to_owned(),
    };
    if let Some(wait) = retry_after {
        text.push_str(&format!(" (retry in {:.1} s)", wait.as_secs_f64()));
    }
    format!("{}: {text}", code_name(status.code()))
}

fn hint_for(reason: Option<ErrorReason>) -> Option<&'static str> {
    use ErrorReason as R;
    Some(match reason? {
        R::TenantNotFound => "`pii-vault tenant list` shows the tenants there are",
        R::PolicyDenied => {
            "no rule of the vault's policy grants this client certificate's identity that; \
             check --cert (PIIVAULT_CLIENT_CERT), or ask the vault's operators for a rule"
        }
        R::SubjectRestricted => {
            "`pii-vault lift-restriction TENANT SUBJECT` lifts it, when the reason for it is gone"
        }
        R::ConsentWithdrawn => {
            "`pii-vault consent list TENANT SUBJECT` shows the subject's consents"
        }
        R::KeyLimitReached => "rotate the key (`pii-vault keys rotate-tenant TENANT`), then retry",
        R::IntegrityCheckFailed => {
            "the store was changed outside the vault (rolled back or edited): tell the operators"
        }
        R::InternalError => "the vault's log has the cause; tell its operators",
        _ => return None,
    })
}

fn status_report(status: &tonic::Status, target: &Target) -> Report {
    let detail = error_detail(status);
    if detail.reason.is_none() {
        // Not made by the vault: a client-side deadline, a connection that broke, a proxy.
        let timed_out =
            status.code() == Code::DeadlineExceeded || status.message().contains("Timeout expired");
        if timed_out {
            let after = target
                .timeout
                .map_or_else(String::new, |t| format!(" within {} s", t.as_secs_f64()));
            return Report {
                lines: vec![
                    format!("error: no answer from the vault{after}"),
                    "hint: --timeout (PIIVAULT_TIMEOUT) waits longer".to_owned(),
                ],
                code: 1,
            };
        }
        if matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ) {
            let addr = target.addr.as_deref().unwrap_or("the vault");
            return Report {
                lines: vec![format!(
                    "error: the connection to {addr} failed: {}",
                    status.message()
                )],
                code: 1,
            };
        }
    }
    let text = line(
        status,
        detail.reason,
        &detail.metadata,
        detail.retry_after,
        target,
    );
    let mut lines = vec![format!("error: {text}")];
    if let Some(hint) = hint_for(detail.reason) {
        lines.push(format!("hint: {hint}"));
    }
    Report { lines, code: 2 }
}

/// The innermost cause of an error: where tonic's and hyper's layers end and the
/// operating system or TLS says what really happened.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn client_report(e: &ClientError, target: &Target) -> Report {
    let (line, hint) = match e {
        ClientError::Read { path, source } => {
            let dir = target
                .data_dir
                .as_ref()
                .map_or_else(String::new, |d| format!(" (now {})", d.display()));
            (
                format!("error: cannot read {path}: {source}"),
                format!(
                    "the client's certificates default to the dev ones in <data-dir>/tls/; give \
                     --data-dir{dir} of the vault, or --ca, --cert and --key (PIIVAULT_CACERT, \
                     PIIVAULT_CLIENT_CERT, PIIVAULT_CLIENT_KEY)"
                ),
            )
        }
        ClientError::BadSetting(why) => (
            format!("error: {why}"),
            "the PIIVAULT_* variables are listed in `pii-vault --help`".to_owned(),
        ),
        ClientError::BadAddress(why) => (
            format!("error: {why}"),
            "--addr (PIIVAULT_ADDR) takes host:port or https://host:port".to_owned(),
        ),
        ClientError::ConnectTimeout { .. } => (
            format!("error: {e}"),
            "is the vault up and is it what listens there? --connect-timeout \
             (PIIVAULT_CONNECT_TIMEOUT) waits longer"
                .to_owned(),
        ),
        ClientError::Connect { addr, source } => {
            let cause = root_cause(source);
            let (what, hint) = connect_failure(&cause);
            (
                format!("error: cannot connect to {addr}: {what}"),
                hint.to_owned(),
            )
        }
    };
    Report {
        lines: vec![line, format!("hint: {hint}")],
        code: 1,
    }
}

/// A connection failure in words, from its innermost cause, and what to check.
fn connect_failure(cause: &str) -> (String, &'static str) {
    let has = |s: &str| cause.contains(s);
    if has("Connection refused") {
        (
            "connection refused".to_owned(),
            "is the vault running there? `pii-vault serve --dev` starts one; --addr (PIIVAULT_ADDR) \
             says where to connect",
        )
    } else if has("UnknownIssuer") || has("BadSignature") {
        (
            "the server's certificate is not signed by the CA given".to_owned(),
            "--ca (PIIVAULT_CACERT) must be the CA the vault's server certificate chains to",
        )
    } else if has("NotValidForName") {
        (
            "the server's certificate is not valid for this host name".to_owned(),
            "connect by a name the server certificate lists (see `pii-vault certs`)",
        )
    } else if has("Expired") {
        (
            "the server's certificate has expired".to_owned(),
            "the vault's operators must renew its certificate",
        )
    } else if has("failed to lookup address") || has("Name or service not known") {
        (
            "the host name does not resolve".to_owned(),
            "check the host in --addr (PIIVAULT_ADDR)",
        )
    } else if has("CertificateRequired") || has("certificate required") || has("UnknownCA") {
        (
            "the vault refused this client certificate".to_owned(),
            "--cert and --key (PIIVAULT_CLIENT_CERT, PIIVAULT_CLIENT_KEY) must be a client \
             certificate issued by a CA the vault trusts",
        )
    } else {
        (
            cause.to_owned(),
            "check --addr, --ca, --cert and --key (or their PIIVAULT_* variables)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_repeated_by_each_layer_is_said_once() {
        let e = anyhow::anyhow!("tcp connect error")
            .context("tcp connect error")
            .context("transport error")
            .context("transport error");
        assert_eq!(chain(&e), "transport error: tcp connect error");
    }

    #[test]
    fn errors_not_from_the_vault_exit_1_and_refusals_2() {
        let target = Target::default();
        assert_eq!(report(&anyhow::anyhow!("bad argument"), &target).code, 1);
        assert_eq!(
            report(&Refused("vault: NOT_SERVING".into()).into(), &target).code,
            2
        );
        let refused: anyhow::Error = tonic::Status::unimplemented("no such method").into();
        assert_eq!(report(&refused, &target).code, 2);
        let cut: anyhow::Error = tonic::Status::unavailable("transport error").into();
        assert_eq!(report(&cut, &target).code, 1);
        let late: anyhow::Error = tonic::Status::deadline_exceeded("deadline").into();
        let late = report(&late, &target);
        assert_eq!(late.code, 1);
        assert!(late.lines[0].contains("no answer"), "{late:?}");
    }
}
