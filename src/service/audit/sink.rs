//! The SIEM mirror: every durable audit event is appended as one JSON line (same content,
//! same MACs, hex-encoded) to a file that is rotated by size (`audit.jsonl`, `.1`, `.2`, ...).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::audit::AuditEvent;

/// Settings of the JSON-lines sink.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub path: PathBuf,
    /// Rotate once the file would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept besides the live one.
    pub keep: u32,
}

#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    #[serde(skip_serializing_if = "is_zero")]
    node: u64,
    time_us: u64,
    request_id: &'a str,
    caller: &'a str,
    operation: &'a str,
    tenant: &'a str,
    subject: &'a str,
    fields: &'a [String],
    purpose: &'a str,
    outcome: &'a str,
    reason: &'a str,
    rule: &'a str,
    prev_mac: String,
    mac: String,
}

/// The single chain's events carry no node in their line.
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// An open sink file.
pub struct JsonlSink {
    config: SinkConfig,
    file: File,
    size: u64,
}

impl std::fmt::Debug for JsonlSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlSink")
            .field("path", &self.config.path)
            .finish()
    }
}

fn open_append(path: &PathBuf) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
}

impl JsonlSink {
    pub fn open(config: SinkConfig) -> std::io::Result<Self> {
        if let Some(dir) = config.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = open_append(&config.path)?;
        let size = file.metadata()?.len();
        Ok(Self { config, file, size })
    }

    /// The JSON line of one event.
    pub fn line(e: &AuditEvent) -> String {
        let d = &e.draft;
        let line = Line {
            seq: e.seq,
            node: e.node,
            time_us: d.time.0,
            request_id: &d.request_id,
            caller: &d.caller,
            operation: d.operation.name(),
            tenant: &d.tenant,
            subject: &d.subject,
            fields: &d.fields,
            purpose: &d.purpose,
            outcome: d.outcome.name(),
            reason: &d.reason,
            rule: &d.rule,
            prev_mac: hex::encode(e.prev_mac),
            mac: hex::encode(e.mac),
        };
        serde_json::to_string(&line).unwrap_or_default()
    }

    /// Appends events; failures are logged, never returned (the store is the record).
    pub fn write(&mut self, events: &[AuditEvent]) {
        if let Err(e) = self.try_write(events) {
            tracing::warn!(path = %self.config.path.display(), error = %e, "audit sink write failed");
        }
    }

    fn try_write(&mut self, events: &[AuditEvent]) -> std::io::Result<()> {
        let mut chunk = String::new();
        for e in events {
            chunk.push_str(&Self::line(e));
            chunk.push('\n');
        }
        if self.size > 0 && self.size + chunk.len() as u64 > self.config.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(chunk.as_bytes())?;
        self.size += chunk.len() as u64;
        Ok(())
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.config.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.sync_all()?;
        if self.config.keep == 0 {
            fs::remove_file(&self.config.path)?;
        } else {
            let _ = fs::remove_file(self.rotated(self.config.keep));
            for n in (1..self.config.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            fs::rename(&self.config.path, self.rotated(1))?;
        }
        self.file = open_append(&self.config.path)?;
        self.size = 0;
        Ok(())
    }
}
