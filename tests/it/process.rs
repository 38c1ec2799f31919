//! The real `pii-vault` binary as a child process: `serve` on a free loopback port with a
//! temporary data directory, its stdout and stderr captured in a file, stopped by SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use pii_vault::client::{connect, ClientCerts};
use tonic::transport::Channel;

use crate::util::free_port;

/// A `pii-vault serve` process.
pub struct VaultProcess {
    child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl VaultProcess {
    /// Starts `serve` on `data_dir` with extra arguments and environment, logging as JSON
    /// at debug level into `log` (appended to, so restarts share one file). Returns once the
    /// vault answers a TLS connection.
    pub async fn start(data_dir: &Path, log: &Path, extra_args: &[&str]) -> Self {
        let mut vault = Self::spawn(data_dir, log, extra_args, "debug");
        vault.wait_ready().await;
        vault
    }

    /// Starts `serve` like `start` with `RUST_LOG=rust_log`, without waiting for it to be
    /// ready: the crash harness kills some starts half-way.
    pub fn spawn(data_dir: &Path, log: &Path, extra_args: &[&str], rust_log: &str) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let err = out.try_clone().expect("log file handle");
        let child = Command::new(env!("CARGO_BIN_EXE_pii-vault"))
            .args([
                "--log-format",
                "json",
                "serve",
                "--dev",
                "--listen",
                &addr,
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra_args)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start the pii-vault binary");
        Self {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            log: log.to_path_buf(),
        }
    }

    /// Waits until the vault answers a TLS connection; panics if it exits or takes 30 s.
    pub async fn wait_ready(&mut self) {
        match self.ready_or_exit(Duration::from_secs(30)).await {
            Ok(()) => {}
            Err(Some(status)) => panic!("vault exited early with {status}:\n{}", self.log_text()),
            Err(None) => panic!("vault did not start:\n{}", self.log_text()),
        }
    }

    /// Waits until the vault answers a TLS connection: `Err(Some(status))` if it exited
    /// first, `Err(None)` if it did neither within `limit`.
    pub async fn ready_or_exit(&mut self, limit: Duration) -> Result<(), Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                return Err(Some(status));
            }
            let certs = ClientCerts::dev(&self.data_dir);
            if certs.key.exists() && connect(&self.addr, &certs).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A new client channel with the dev certificate.
    pub async fn channel(&self) -> Channel {
        connect(&self.addr, &ClientCerts::dev(&self.data_dir))
            .await
            .expect("connect to the vault process")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// SIGKILL: no drain, no flush. Returns once the process is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        self.child.wait().expect("wait for the killed vault");
    }

    /// Waits for the process to exit, killing it (and failing) after `limit`.
    pub async fn wait_exit(mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("vault did not exit within {limit:?}:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for VaultProcess {
    fn drop(&mut self) {
        // A test that failed half-way must not leave a server running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
