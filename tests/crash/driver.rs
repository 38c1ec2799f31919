//! The cycles: run the workload, SIGKILL the vault, check the stopped data directory,
//! sometimes kill a start-up half-way, restart, check everything the client knows.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tonic::Code;

use crate::model::{Settled, Subject};
use crate::process::VaultProcess;
use crate::rng::Rng;
use crate::rpc::{self, Clients};
use crate::verify::{offline_verify, settle_all, AuditCheck};
use crate::workload::{Flags, Worker};

/// Concurrent client workers.
const WORKERS: usize = 4;
/// Subjects written once before the first cycle: they give a re-wrap enough work to be
/// killed in the middle of it.
const BULK: usize = 300;
/// Bulk subjects re-read after each restart (all of them after the last one).
const BULK_SAMPLE: usize = 24;
/// Cycles between progress reports (on stderr) in a long run.
const PROGRESS_EVERY: usize = 50;
/// Small re-wrap batches with a pause: a re-wrap of the bulk takes about a second.
const CONFIG: &str = "[keys]\nrewrap_batch_size = 10\nrewrap_pause_ms = 20\n";

/// What the harness did and found.
#[derive(Default)]
pub struct Report {
    pub cycles: usize,
    startup_kills: u64,
    /// Kills after which GetKeyStatus (just before) said a re-wrap was running.
    rewrap_kills: u64,
    puts: u64,
    reads: u64,
    erasures: u64,
    rotations: u64,
    rotations_refused: u64,
    refused_writes: u64,
    transient: u64,
    values_checked: u64,
    erasures_checked: u64,
    reads_audited: u64,
    /// Visible changes (values read back) whose write's audit event was found.
    pub writes_audited: u64,
    chains_online: u64,
    chains_offline: u64,
    elapsed: Duration,
    pub violations: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let checked = self.values_checked + self.erasures_checked + self.reads_audited;
        writeln!(
            f,
            "crash harness: {} cycles in {:.1} s",
            self.cycles,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "  SIGKILLs: {} while serving ({} with a re-wrap running), {} during start-up",
            self.cycles, self.rewrap_kills, self.startup_kills
        )?;
        writeln!(
            f,
            "  acknowledged: {} puts, {} reads, {} erasures, {} key rotations ({} refused: re-wrap running); {} requests to erased subjects refused",
            self.puts, self.reads, self.erasures, self.rotations, self.rotations_refused, self.refused_writes
        )?;
        writeln!(
            f,
            "  acknowledged operations checked after restarts: {checked} ({} field values, {} erasures, {} reads' audit events); {} visible values' writes found in the audit log; audit chain verified {} times online, {} offline",
            self.values_checked, self.erasures_checked, self.reads_audited, self.writes_audited, self.chains_online, self.chains_offline
        )?;
        writeln!(
            f,
            "  UNAVAILABLE/deadline answers while up: {}",
            self.transient
        )?;
        write!(f, "  violations: {}", self.violations.len())
    }
}

struct Harness {
    _dir: TempDir,
    data: PathBuf,
    config: PathBuf,
    logs: PathBuf,
    starts: usize,
    rng: Rng,
    workers: Vec<Worker>,
    bulk: Vec<Subject>,
    audit: AuditCheck,
    /// The newest tenant KEK version a rotation acknowledged.
    acked_version: u32,
    report: Report,
}

pub async fn run(cycles: usize, seed: u64) -> Report {
    let began = Instant::now();
    let dir = TempDir::new().expect("temp dir");
    let mut rng = Rng::new(seed);
    let mut h = Harness {
        data: dir.path().join("data"),
        config: dir.path().join("vault.toml"),
        logs: dir.path().join("logs"),
        _dir: dir,
        starts: 0,
        workers: (0..WORKERS).map(|i| Worker::new(i, rng.fork())).collect(),
        rng,
        bulk: Vec::new(),
        audit: AuditCheck::default(),
        acked_version: 1,
        report: Report::default(),
    };
    std::fs::write(&h.config, CONFIG).expect("write config");
    std::fs::create_dir_all(&h.logs).expect("log dir");
    let mut vault = h.start().await;
    h.setup(&vault).await;
    let mut shown = 0;
    for cycle in 0..cycles {
        h.run_and_kill(&mut vault, cycle).await;
        h.offline_check();
        if h.rng.percent(20) {
            h.kill_during_startup().await;
        }
        vault = h.start().await;
        h.check_after_restart(&vault, cycle, cycle + 1 == cycles)
            .await;
        h.report.cycles += 1;
        // Long runs show each violation when it happens, not only at the end.
        for v in &h.report.violations[shown..] {
            eprintln!("cycle {cycle}: VIOLATION: {v}");
        }
        shown = h.report.violations.len();
        if h.report.cycles.is_multiple_of(PROGRESS_EVERY) {
            h.report.elapsed = began.elapsed();
            h.report.reads_audited = h.audit.found;
            h.report.writes_audited = h.audit.writes_found;
            eprintln!("after {}", h.report);
        }
    }
    // The last check's own reads, then a clean stop.
    let mut c = clients(&vault).await;
    h.audit
        .check(&mut c, "final", &mut h.report.violations)
        .await;
    drop(c);
    vault.terminate();
    let status = vault.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "vault exited with {status} on SIGTERM");
    h.offline_check();
    h.report.reads_audited = h.audit.found;
    h.report.writes_audited = h.audit.writes_found;
    h.report.elapsed = began.elapsed();
    h.report
}

async fn clients(vault: &VaultProcess) -> Clients {
    Clients::new(vault.channel().await)
}

impl Harness {
    /// Starts the vault and waits until it answers (the store opened cleanly).
    async fn start(&mut self) -> VaultProcess {
        let mut vault = self.spawn();
        vault.wait_ready().await;
        vault
    }

    fn spawn(&mut self) -> VaultProcess {
        self.starts += 1;
        let log = self.logs.join(format!("start-{}.log", self.starts));
        let config = self.config.to_str().expect("UTF-8 temp path");
        VaultProcess::spawn(&self.data, &log, &["--config", config], "info")
    }

    /// The tenant and the bulk subjects.
    async fn setup(&mut self, vault: &VaultProcess) {
        let mut c = clients(vault).await;
        c.tenants
            .create_tenant(rpc::request(
                pii_vault::proto::v1::CreateTenantRequest {
                    tenant_id: rpc::TENANT.into(),
                },
                "setup-tenant",
            ))
            .await
            .expect("create the tenant");
        let mut tasks = Vec::new();
        for part in 0..8 {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = Vec::new();
                for i in (part..BULK).step_by(8) {
                    let mut s = Subject::new(format!("bulk{i}"));
                    // A value names the request that wrote it (`<request id>.<name>`).
                    let value = vec![("alpha".to_owned(), format!("setup{i}.alpha"))];
                    rpc::put(&mut c, &format!("setup{i}"), &s.id, &value)
                        .await
                        .expect("preload");
                    s.fields.entry("alpha".into()).or_default().acked = Some(value[0].1.clone());
                    s.recheck = false;
                    done.push(s);
                }
                done
            }));
        }
        for t in tasks {
            self.bulk.extend(t.await.expect("preload task"));
        }
    }

    /// Runs the workers for a random time (or until just after a rotation starts its
    /// re-wrap), then SIGKILLs the vault.
    async fn run_and_kill(&mut self, vault: &mut VaultProcess, cycle: usize) {
        let flags = Arc::new(Flags::default());
        let mut tasks = Vec::new();
        for w in std::mem::take(&mut self.workers) {
            let c = clients(vault).await;
            let f = flags.clone();
            tasks.push(tokio::spawn(async move { w.run(c, cycle, &f).await }));
        }
        let mut c = clients(vault).await;
        let rewrap_kill = self.rng.percent(30);
        let rotation = if rewrap_kill {
            tokio::time::sleep(self.rng.millis(0, 150)).await;
            let r = rpc::rotate(&mut c, &format!("rot{cycle}")).await;
            self.rotated(r, &flags);
            tokio::time::sleep(self.rng.millis(0, 500)).await;
            None
        } else {
            let rotate_at = self.rng.percent(25).then(|| self.rng.millis(0, 700));
            let run_for = self.rng.millis(30, 800);
            let rotation = rotate_at.map(|at| {
                let mut c = c.clone();
                let f = flags.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(at).await;
                    let r = rpc::rotate(&mut c, &format!("rot{cycle}")).await;
                    (r, f.killed.load(Ordering::SeqCst))
                })
            });
            tokio::time::sleep(run_for).await;
            rotation
        };
        if let Ok((_, true)) = rpc::key_status(&mut c, &format!("ks{cycle}")).await {
            self.report.rewrap_kills += 1;
        }
        flags.killed.store(true, Ordering::SeqCst);
        vault.kill();
        flags.stop.store(true, Ordering::SeqCst);
        for t in tasks {
            let mut w = tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("a worker did not stop after the kill")
                .expect("worker task");
            let tally = std::mem::take(&mut w.tally);
            self.report.puts += tally.puts;
            self.report.reads += tally.reads;
            self.report.erasures += tally.erasures;
            self.report.refused_writes += tally.refused_writes;
            self.report.transient += tally.transient;
            self.report.violations.extend(tally.violations);
            self.audit.expect(tally.reads_seen);
            self.workers.push(w);
        }
        if let Some(t) = rotation {
            let (r, killed) = t.await.expect("rotation task");
            if !killed || r.is_ok() {
                self.rotated(r, &Flags::default());
            }
        }
    }

    /// Records a rotation's answer.
    fn rotated(&mut self, r: Result<u32, tonic::Status>, flags: &Flags) {
        match r {
            Ok(version) => {
                self.report.rotations += 1;
                self.acked_version = self.acked_version.max(version);
            }
            Err(s) if s.code() == Code::FailedPrecondition => self.report.rotations_refused += 1,
            Err(_) if flags.killed.load(Ordering::SeqCst) => {}
            Err(s) if s.code() == Code::Unavailable => self.report.transient += 1,
            Err(s) => self.report.violations.push(format!(
                "RotateTenantKey failed while the vault was up: {s}"
            )),
        }
    }

    /// The stopped data directory: the store opens and the audit chain verifies.
    fn offline_check(&mut self) {
        match offline_verify(&self.data) {
            Ok(()) => self.report.chains_offline += 1,
            Err(e) => self.report.violations.push(e),
        }
    }

    /// Starts the vault and kills it after up to 400 ms: before it listens, while it opens
    /// the store, or just after it became ready (resuming a re-wrap, say).
    async fn kill_during_startup(&mut self) {
        let mut vault = self.spawn();
        tokio::time::sleep(self.rng.millis(0, 400)).await;
        vault.kill();
        self.report.startup_kills += 1;
        self.offline_check();
    }

    /// Every check after a restart; `full` reads every subject ever written.
    async fn check_after_restart(&mut self, vault: &VaultProcess, cycle: usize, full: bool) {
        let mut c = clients(vault).await;
        let v = &mut self.report.violations;
        self.audit.check(&mut c, &format!("q{cycle}"), v).await;
        match rpc::verify_chain(&mut c, &format!("vc{cycle}")).await {
            Ok(Ok(_)) => self.report.chains_online += 1,
            Ok(Err(problem)) => v.push(format!("VerifyAuditLog: {problem}")),
            Err(s) => v.push(format!("VerifyAuditLog failed: {s}")),
        }
        match rpc::key_status(&mut c, &format!("kv{cycle}")).await {
            Ok((current, _)) if current < self.acked_version => v.push(format!(
                "tenant key version {current} is behind the acknowledged rotation to {}",
                self.acked_version
            )),
            Ok(_) => {}
            Err(s) => v.push(format!("GetKeyStatus failed: {s}")),
        }
        let mut tasks = Vec::new();
        for mut w in std::mem::take(&mut self.workers) {
            let mut c = clients(vault).await;
            let mut rng = self.rng.fork();
            let prefix = format!("v{cycle}w{}", w.index);
            tasks.push(tokio::spawn(async move {
                let r = settle_all(&mut c, &mut w.subjects, &mut rng, full, &prefix).await;
                (w, r)
            }));
        }
        let mut bulk = self.bulk_sample(full);
        let (settled, seen) =
            settle_all(&mut c, &mut bulk, &mut self.rng, true, &format!("b{cycle}")).await;
        self.bulk.extend(bulk);
        self.settled(settled, seen);
        for t in tasks {
            let (w, (settled, seen)) = t.await.expect("check task");
            self.workers.push(w);
            self.settled(settled, seen);
        }
    }

    /// Takes the bulk subjects to re-read out of `self.bulk`.
    fn bulk_sample(&mut self, full: bool) -> Vec<Subject> {
        let count = if full { self.bulk.len() } else { BULK_SAMPLE };
        let mut out = Vec::new();
        while out.len() < count && !self.bulk.is_empty() {
            let i = self.rng.below(self.bulk.len() as u64) as usize;
            out.push(self.bulk.swap_remove(i));
        }
        out
    }

    fn settled(&mut self, s: Settled, seen: Vec<crate::workload::ReadSeen>) {
        self.report.values_checked += s.values_checked;
        self.report.erasures_checked += s.erasures_checked;
        self.report.violations.extend(s.violations);
        self.audit.expect(seen);
    }
}
