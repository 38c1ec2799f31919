//! The RFC 5424 syslog mirror against a collector the test runs on 127.0.0.1 (plain TCP,
//! and TLS with a certificate of the test's own CA): the frames are octet-counted, every
//! header field is what RFC 5424 asks for, every durable event arrives with its content and
//! MAC, and no field value or key byte is in any of them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pii_vault::certs::{Authority, LeafSpec, Usage};
use pii_vault::proto::v1 as pb;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;

use crate::util::{all_audit_events, create_tenant, get, put, text, TestVault};

const PLANTED: &str = "planted-syslog-value-91c4";

/// One parsed RFC 5424 message.
#[derive(Debug)]
struct Message {
    pri: u16,
    version: String,
    timestamp: String,
    hostname: String,
    app: String,
    procid: String,
    msgid: String,
    sd_id: String,
    params: BTreeMap<String, String>,
    msg: String,
}

/// Reads octet-counted frames (`LEN SP MSG`) from `stream` until `enough` says so or 10 s
/// pass; returns the frames and every byte received.
async fn read_frames(
    mut stream: impl AsyncRead + Unpin, enough: impl Fn(&[Message]) -> bool,
) -> (Vec<Message>, Vec<u8>) {
    let mut raw = Vec::new();
    let mut messages = Vec::new();
    let mut at = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !enough(&messages) {
        let mut buf = [0u8; 4096];
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        raw.extend_from_slice(&buf[..n]);
        // Every complete frame received so far.
        while let Some(space) = raw[at..].iter().position(|b| *b == b' ') {
            let len: usize = std::str::from_utf8(&raw[at..at + space])
                .expect("ascii length")
                .parse()
                .expect("a frame starts with its length");
            let start = at + space + 1;
            if raw.len() < start + len {
                break;
            }
            let text = std::str::from_utf8(&raw[start..start + len]).expect("utf-8 message");
            messages.push(parse(text));
            at = start + len;
        }
    }
    (messages, raw)
}

/// Parses `<PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD-ID PARAMS] MSG`.
fn parse(text: &str) -> Message {
    let mut head = text.splitn(7, ' ');
    let mut next = || head.next().expect("a header field").to_owned();
    let (pri_version, timestamp, hostname, app, procid, msgid, rest) =
        (next(), next(), next(), next(), next(), next(), next());
    let (pri, version) = pri_version
        .strip_prefix('<')
        .and_then(|p| p.split_once('>'))
        .expect("<PRI>");
    let sd = rest.strip_prefix('[').expect("one structured-data element");
    let (sd_id, mut body) = sd.split_once(' ').expect("SD-ID and params");
    let mut params = BTreeMap::new();
    loop {
        body = body.trim_start_matches(' ');
        if let Some(after) = body.strip_prefix(']') {
            body = after;
            break;
        }
        let (name, after) = body.split_once("=\"").expect("name=\"value\"");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("a closed value") {
                (_, '\\') => value.push(chars.next().expect("escaped char").1),
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        params.insert(name.to_owned(), value);
        body = &after[end + 1..];
    }
    Message {
        pri: pri.parse().expect("numeric PRI"),
        version: version.to_owned(),
        timestamp,
        hostname,
        app,
        procid,
        msgid,
        sd_id: sd_id.to_owned(),
        params,
        msg: body.trim_start().to_owned(),
    }
}

/// The hex key strings of the root key file.
fn root_key_hex(data_dir: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(data_dir.join("root.key")).expect("root key file");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("key = \""))
        .map(|rest| rest.trim_end_matches('"').to_owned())
        .collect()
}

/// Writes, reads and a refused read, then checks every mirrored frame against the events
/// the audit log returns.
async fn exercise_and_check(
    vault: TestVault, frames: tokio::task::JoinHandle<(Vec<Message>, Vec<u8>)>,
) {
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    put(
        &mut client,
        "acme",
        "subject-1",
        vec![text("email", pb::Category::Account, PLANTED)],
    )
    .await
    .expect("put");
    get(&mut client, "acme", "subject-1", &[])
        .await
        .expect("get");
    get(&mut client, "acme", "nobody", &[])
        .await
        .expect_err("not found");
    let events = all_audit_events(&vault).await;
    let keys = root_key_hex(&vault.data_dir());
    assert!(!keys.is_empty());
    vault.stop().await;
    let (messages, raw) = frames.await.expect("collector");

    let raw_text = String::from_utf8_lossy(&raw);
    assert!(!raw_text.contains(PLANTED), "a field value reached syslog");
    for key in &keys {
        assert!(
            !raw_text.to_lowercase().contains(key),
            "root key bytes reached syslog"
        );
    }
    // Every event the log holds (the query's own included) arrived once, as it is stored.
    assert_eq!(messages.len(), events.len() + 1, "{messages:#?}");
    for e in &events {
        let m = messages
            .iter()
            .find(|m| m.params["seq"] == e.seq.to_string())
            .unwrap_or_else(|| panic!("event {} not mirrored", e.seq));
        let outcome = pii_vault::api::outcome_name(e.outcome);
        let severity = match outcome {
            "denied" => 5,
            "error" => 4,
            _ => 6,
        };
        assert_eq!(m.pri, 13 * 8 + severity, "{m:?}");
        assert_eq!(m.version, "1");
        assert_eq!(m.app, "pii-vault");
        assert_eq!(m.procid, std::process::id().to_string());
        assert_eq!(m.msgid, e.operation);
        assert_eq!(m.sd_id, "audit@32473");
        assert_eq!(m.params["operation"], e.operation);
        assert_eq!(m.params["outcome"], outcome);
        assert_eq!(m.params["tenant"], e.tenant_id);
        assert_eq!(m.params["subject"], e.subject_id);
        assert_eq!(m.params["caller"], e.caller);
        assert_eq!(m.params["request_id"], e.request_id);
        assert_eq!(m.params["fields"], e.field_names.join(","));
        assert_eq!(m.params["mac"], hex::encode(&e.mac));
        assert_eq!(m.params["prev_mac"], hex::encode(&e.prev_mac));
        assert_eq!(m.msg, format!("{} {outcome}", e.operation));
        // RFC 3339 in UTC with microseconds, e.g. 2025-01-31T12:00:00.123456Z.
        let t = m.timestamp.as_bytes();
        assert!(
            t.len() == 27 && t[4] == b'-' && t[10] == b'T' && t[19] == b'.' && t[26] == b'Z',
            "{}",
            m.timestamp
        );
        let (seconds, _) = e.time.map(|t| (t.seconds, t.nanos)).expect("time");
        assert!(m.timestamp.starts_with(&seconds_prefix(seconds)), "{m:?}");
        assert!(
            !m.hostname.is_empty() && m.hostname.bytes().all(|b| b.is_ascii_graphic()),
            "{}",
            m.hostname
        );
    }
    let outcomes: Vec<&str> = messages
        .iter()
        .map(|m| m.params["outcome"].as_str())
        .collect();
    assert!(
        outcomes.contains(&"ok") && outcomes.contains(&"not_found"),
        "{outcomes:?}"
    );
}

/// `YYYY-MM-DDTHH:MM` of a Unix time, to tie a message's timestamp to its event.
fn seconds_prefix(seconds: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(seconds).expect("time");
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// The collector is done once the query's own event (the last one) has arrived.
fn has_query_event(messages: &[Message]) -> bool {
    messages.iter().any(|m| m.msgid == "query_audit")
}

#[tokio::test]
async fn events_are_mirrored_to_a_plain_tcp_collector_as_rfc_5424_frames() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let frames = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("the mirror connects");
        read_frames(tcp, has_query_event).await
    });
    let vault = TestVault::start_with(move |raw| {
        raw.audit.syslog_address = Some(address);
        raw.audit.syslog_tls = Some("disable".into());
    })
    .await;
    exercise_and_check(vault, frames).await;
}

/// A TLS collector with a certificate for `localhost` from a fresh CA: the acceptor, and
/// the CA's certificate (PEM).
fn tls_collector() -> (tokio_rustls::TlsAcceptor, String) {
    let year = Duration::from_secs(365 * 86_400);
    let ca = Authority::generate("test collector CA", year).expect("ca");
    let leaf = ca
        .issue(&LeafSpec {
            common_name: "collector".into(),
            names: vec!["localhost".into()],
            uris: vec![],
            usage: Usage::Server,
            lifetime: year,
            not_before_offset_secs: 0,
        })
        .expect("leaf");
    let certs = rustls_pemfile::certs(&mut leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("cert");
    let key = rustls_pemfile::private_key(&mut leaf.key_pem.as_bytes())
        .expect("key")
        .expect("a key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        ca.cert_pem.clone(),
    )
}

#[tokio::test]
async fn events_are_mirrored_over_tls_to_a_collector_the_ca_file_vouches_for() {
    let (acceptor, ca_pem) = tls_collector();
    let dir = tempfile::TempDir::new().expect("dir");
    let ca_file = dir.path().join("collector-ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("write ca");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let frames = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("the mirror connects");
        let tls = acceptor.accept(tcp).await.expect("TLS from the mirror");
        read_frames(tls, has_query_event).await
    });
    let vault = TestVault::start_with(move |raw| {
        // By name, so the certificate's name is checked.
        raw.audit.syslog_address = Some(format!("localhost:{port}"));
        raw.audit.syslog_ca_file = Some(ca_file);
    })
    .await;
    exercise_and_check(vault, frames).await;
}

/// A collector whose certificate the CA file does not vouch for gets no event: the mirror
/// refuses the handshake, and the vault serves on.
#[tokio::test]
async fn a_collector_of_another_ca_is_refused() {
    let (acceptor, _) = tls_collector();
    let (_, other_ca) = tls_collector();
    let dir = tempfile::TempDir::new().expect("dir");
    let ca_file = dir.path().join("other-ca.pem");
    std::fs::write(&ca_file, other_ca).expect("write ca");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handshake = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("the mirror connects");
        match acceptor.accept(tcp).await {
            Ok(tls) => Some(read_frames(tls, |m| !m.is_empty()).await.1),
            Err(_) => None,
        }
    });
    let vault = TestVault::start_with(move |raw| {
        raw.audit.syslog_address = Some(format!("localhost:{port}"));
        raw.audit.syslog_ca_file = Some(ca_file);
    })
    .await;
    create_tenant(&vault, "acme").await;
    let received = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .expect("the mirror tried to connect")
        .expect("collector");
    assert!(
        received.as_ref().is_none_or(|bytes| bytes.is_empty()),
        "a collector the CA file does not vouch for received {received:?}"
    );
    create_tenant(&vault, "beta").await;
    vault.stop().await;
}
