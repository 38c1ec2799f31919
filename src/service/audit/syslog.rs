//! The syslog mirror: every durable audit event is sent as one RFC 5424 message to a
//! collector over TCP, with TLS (RFC 5425) unless turned off by name, framed by octet
//! counting (`LEN SP MSG`, RFC 6587 section 3.4.1), so a message may hold any byte.
//!
//! A message is the event's content and MACs, as the JSON-lines mirror has them, and so no
//! field value: `<PRI>1 TIME HOST pii-vault PID OPERATION [audit@PEN seq=".." ...] OPERATION
//! OUTCOME`. The priority is the configured facility with a severity from the outcome.
//!
//! Sending never holds up the audit writer: batches are queued to a thread of their own,
//! which connects on first use, reconnects after an error, and waits `RETRY_AFTER` after a
//! failed connect. A batch that cannot be queued (the collector is slower than the vault) or
//! sent (it is down) is dropped and logged: the store is the record, this is its copy.
//!
//! The format is written here rather than taken from a crate: a header of six fields and
//! one structured-data element, with three characters to escape.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use crate::audit::{AuditEvent, Outcome};

/// Batches waiting for the sender thread; past this, batches are dropped.
const QUEUE: usize = 256;
/// Longest a connect or a write may block the sender thread.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the sender waits after a failed connect before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// APP-NAME of every message.
const APP_NAME: &str = "pii-vault";

/// Settings of the syslog sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyslogConfig {
    /// The collector, `host:port`.
    pub address: String,
    /// The CA file the collector's certificate must chain to; `None`: plain TCP.
    pub tls_ca_file: Option<PathBuf>,
    /// RFC 5424 facility, 0 to 23 (13: log audit).
    pub facility: u8,
    /// The private enterprise number in the structured data's id (`audit@PEN`).
    pub enterprise_number: u32,
}

/// The header fields that are the same for every message of this process.
#[derive(Clone, Debug)]
struct Origin {
    hostname: String,
    procid: u32,
    facility: u8,
    sd_id: String,
}

/// A running sink: a queue to its sender thread.
pub struct SyslogSink {
    origin: Origin,
    queue: SyncSender<Vec<u8>>,
    address: String,
}

impl std::fmt::Debug for SyslogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogSink")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl SyslogSink {
    /// Reads the CA file (if TLS) and starts the sender thread; it connects on first use,
    /// so a collector that is down at start does not stop the vault.
    pub fn open(config: SyslogConfig) -> io::Result<Self> {
        let tls = match &config.tls_ca_file {
            Some(ca) => Some(Tls::new(ca, &config.address)?),
            None => {
                tracing::warn!(address = %config.address, "audit syslog mirror over plain TCP (audit.syslog_tls = \"disable\"): events cross the network unencrypted");
                None
            }
        };
        let origin = Origin {
            hostname: hostname(),
            procid: std::process::id(),
            facility: config.facility,
            sd_id: format!("audit@{}", config.enterprise_number),
        };
        let (queue, batches) = mpsc::sync_channel(QUEUE);
        let sender = Sender {
            address: config.address.clone(),
            tls,
            conn: None,
            retry_at: None,
        };
        std::thread::Builder::new()
            .name("audit-syslog".into())
            .spawn(move || sender.run(batches))?;
        Ok(Self {
            origin,
            queue,
            address: config.address,
        })
    }

    /// Queues `events` for the collector; never blocks.
    pub fn write(&self, events: &[AuditEvent]) {
        let mut frames = Vec::new();
        for e in events {
            let message = message(&self.origin, e);
            frames.extend_from_slice(format!("{} ", message.len()).as_bytes());
            frames.extend_from_slice(message.as_bytes());
        }
        match self.queue.try_send(frames) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(address = %self.address, events = events.len(), "audit syslog sink is behind; events dropped from the mirror");
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::warn!(address = %self.address, "audit syslog sender stopped; events dropped from the mirror");
            }
        }
    }
}

/// RFC 5424 severity of an event: 6 informational, 5 notice (refused), 4 warning (failed).
fn severity(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Ok | Outcome::NotFound | Outcome::Invalid | Outcome::Intent => 6,
        Outcome::Denied => 5,
        Outcome::Error => 4,
    }
}

/// One RFC 5424 message (without its length prefix).
fn message(origin: &Origin, e: &AuditEvent) -> String {
    let d = &e.draft;
    let pri = u16::from(origin.facility) * 8 + u16::from(severity(d.outcome));
    let operation = d.operation.name();
    let mut m = format!(
        "<{pri}>1 {} {} {APP_NAME} {} {operation} [{}",
        d.time.rfc3339(),
        origin.hostname,
        origin.procid,
        origin.sd_id
    );
    let fields = d.fields.join(",");
    let params: [(&str, &str); 12] = [
        ("seq", &e.seq.to_string()),
        ("request_id", &d.request_id),
        ("caller", &d.caller),
        ("operation", operation),
        ("tenant", &d.tenant),
        ("subject", &d.subject),
        ("fields", &fields),
        ("purpose", &d.purpose),
        ("outcome", d.outcome.name()),
        ("reason", &d.reason),
        ("rule", &d.rule),
        ("mac", &hex::encode(e.mac)),
    ];
    for (name, value) in params {
        let _ = write!(m, " {name}=\"{}\"", escape(value));
    }
    let _ = write!(
        m,
        " prev_mac=\"{}\"] {operation} {}",
        hex::encode(e.prev_mac),
        d.outcome.name()
    );
    m
}

/// A PARAM-VALUE with `"`, `\` and `]` escaped (RFC 5424 section 6.3.3).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// This machine's name for the HOSTNAME field: printable ASCII without spaces, at most 255
/// characters, or `-` (the NILVALUE) when it cannot be read.
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if name.is_empty() {
        "-".to_owned()
    } else {
        name
    }
}

/// The TLS client side: the collector's certificate must chain to the CA file and name
/// the host of the address.
struct Tls {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl Tls {
    fn new(ca_file: &std::path::Path, address: &str) -> io::Result<Self> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        let pem = std::fs::read(ca_file)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", ca_file.display())))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots
                .add(cert?)
                .map_err(|e| invalid(format!("{}: {e}", ca_file.display())))?;
        }
        if roots.is_empty() {
            return Err(invalid(format!(
                "{}: no certificate in it",
                ca_file.display()
            )));
        }
        let config = rustls::ClientConfig::builder_with_provider(crate::crypto::tls_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| invalid(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let host = host_of(address).ok_or_else(|| invalid(format!("{address}: not host:port")))?;
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| invalid(format!("{address}: {e}")))?;
        Ok(Self {
            config: Arc::new(config),
            name,
        })
    }
}

/// The host of `host:port` or `[v6]:port`.
pub fn host_of(address: &str) -> Option<&str> {
    let (host, port) = address.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// A connection to the collector.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Conn::Plain(tcp) => tcp.write_all(bytes).and_then(|()| tcp.flush()),
            Conn::Tls(tls) => tls.write_all(bytes).and_then(|()| tls.flush()),
        }
    }
}

/// The sender thread's state.
struct Sender {
    address: String,
    tls: Option<Tls>,
    conn: Option<Conn>,
    /// After a failed connect: no attempt before this.
    retry_at: Option<Instant>,
}

impl Sender {
    /// Sends every batch queued, until the sink is dropped.
    fn run(mut self, batches: Receiver<Vec<u8>>) {
        while let Ok(batch) = batches.recv() {
            if let Err(e) = self.send(&batch) {
                tracing::warn!(address = %self.address, error = %e, "audit syslog sink: events dropped from the mirror");
            }
        }
    }

    /// Sends one batch, on a new connection if there is none or the old one failed.
    fn send(&mut self, batch: &[u8]) -> io::Result<()> {
        if let Some(conn) = self.conn.as_mut() {
            if conn.send(batch).is_ok() {
                return Ok(());
            }
            // The collector closed or reset the connection: once more on a fresh one.
            self.conn = None;
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "collector unreachable; retrying later",
            ));
        }
        let mut conn = match self.connect() {
            Ok(conn) => conn,
            Err(e) => {
                self.retry_at = Some(Instant::now() + RETRY_AFTER);
                return Err(e);
            }
        };
        self.retry_at = None;
        conn.send(batch)?;
        self.conn = Some(conn);
        Ok(())
    }

    fn connect(&self) -> io::Result<Conn> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing");
        for addr in self.address.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
                Ok(tcp) => {
                    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
                    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
                    let _ = tcp.set_nodelay(true);
                    return match &self.tls {
                        None => Ok(Conn::Plain(tcp)),
                        Some(tls) => {
                            let session =
                                rustls::ClientConnection::new(tls.config.clone(), tls.name.clone())
                                    .map_err(io::Error::other)?;
                            let mut stream = rustls::StreamOwned::new(session, tcp);
                            // The handshake now, so a refused certificate shows as a
                            // connect error, not as a failed write.
                            while stream.conn.is_handshaking() {
                                stream.conn.complete_io(&mut stream.sock)?;
                            }
                            Ok(Conn::Tls(Box::new(stream)))
                        }
                    };
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{EventDraft, Operation};
    use crate::domain::Timestamp;

    fn event(reason: &str) -> AuditEvent {
        AuditEvent {
            seq: 7,
            node: 0,
            draft: EventDraft {
                time: Timestamp(1_700_000_000_123_456),
                request_id: "req-1".into(),
                caller: "uri:spiffe://test/app".into(),
                operation: Operation::GetFields,
                tenant: "acme".into(),
                subject: "u-1".into(),
                fields: vec!["email".into(), "phone".into()],
                purpose: "support".into(),
                outcome: Outcome::Denied,
                reason: reason.into(),
                rule: String::new(),
            },
            prev_mac: [1; 32],
            mac: [2; 32],
        }
    }

    fn origin() -> Origin {
        Origin {
            hostname: "vault-0".into(),
            procid: 42,
            facility: 13,
            sd_id: "audit@32473".into(),
        }
    }

    #[test]
    fn a_message_has_the_rfc_5424_header_and_one_structured_data_element() {
        let m = message(&origin(), &event("no grant"));
        let expected_head = "<109>1 2023-11-14T22:13:20.123456Z vault-0 pii-vault 42 get_fields \
                             [audit@32473 seq=\"7\" request_id=\"req-1\"";
        assert!(m.starts_with(expected_head), "{m}");
        assert!(m.contains(" fields=\"email,phone\" "), "{m}");
        assert!(m.contains(" outcome=\"denied\" "), "{m}");
        assert!(m.contains(&format!(" mac=\"{}\"", "02".repeat(32))), "{m}");
        assert!(m.ends_with(&format!(
            "prev_mac=\"{}\"] get_fields denied",
            "01".repeat(32)
        )));
    }

    #[test]
    fn quotes_backslashes_and_brackets_are_escaped_in_values() {
        let m = message(&origin(), &event(r#"a "b" \c] d"#));
        assert!(m.contains(r#" reason="a \"b\" \\c\] d" "#), "{m}");
    }

    #[test]
    fn hosts_are_read_from_addresses() {
        assert_eq!(host_of("siem.internal:6514"), Some("siem.internal"));
        assert_eq!(host_of("[::1]:6514"), Some("::1"));
        assert_eq!(host_of("127.0.0.1:514"), Some("127.0.0.1"));
        assert_eq!(host_of("siem.internal"), None);
        assert_eq!(host_of(":514"), None);
        assert_eq!(host_of("host:99999"), None);
    }
}
