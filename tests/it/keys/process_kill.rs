//! A real `pii-vault serve` process killed with SIGKILL in the middle of a re-wrap.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pb::key_service_client::KeyServiceClient;
use pii_vault::proto::v1 as pb;
use pii_vault::storage::{SledStore, Store};
use tempfile::TempDir;

use super::*;
use crate::util::{get, put, text, text_of};

/// A `pii-vault serve` process, killed when dropped.
pub(super) struct ServerProcess {
    child: std::process::Child,
    addr: String,
}

impl ServerProcess {
    pub(super) fn spawn(config: &Path, log: &Path) -> Self {
        let text = std::fs::read_to_string(config).expect("config");
        let addr = text
            .lines()
            .find_map(|l| l.strip_prefix("listen = "))
            .expect("listen line")
            .trim_matches('"')
            .to_owned();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_pii-vault"))
            .arg("serve")
            .arg("--dev")
            .arg("--config")
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn pii-vault serve");
        Self { child, addr }
    }

    pub(super) async fn channel(&self, data_dir: &Path) -> Channel {
        let certs = pii_vault::client::ClientCerts::dev(data_dir);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if certs.ca.exists() {
                if let Ok(c) = pii_vault::client::connect(&self.addr, &certs).await {
                    return c;
                }
            }
            assert!(Instant::now() < deadline, "server did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no drain, no flush.
    pub(super) fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub(super) fn write_config(path: &Path, data_dir: &Path) {
    std::fs::write(
        path,
        format!(
            "listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n\n[keys]\nrewrap_batch_size = 100\nrewrap_pause_ms = 25\n",
            free_port(),
            data_dir.display()
        ),
    )
    .expect("write config");
}

/// A server process in `dir` (data in `data/`, config `vault.toml`, log `server.log`) with
/// tenant `acme` holding `subjects` subjects `s0..`.
pub(super) struct Preloaded {
    pub(super) data: PathBuf,
    pub(super) config: PathBuf,
    pub(super) log: PathBuf,
    pub(super) server: ServerProcess,
    pub(super) channel: Channel,
}

impl Preloaded {
    pub(super) async fn start(dir: &Path, subjects: usize) -> Self {
        let data = dir.join("data");
        let config = dir.join("vault.toml");
        let log = dir.join("server.log");
        write_config(&config, &data);
        let server = ServerProcess::spawn(&config, &log);
        let channel = server.channel(&data).await;
        pb::tenant_service_client::TenantServiceClient::new(channel.clone())
            .create_tenant(pb::CreateTenantRequest {
                tenant_id: "acme".into(),
            })
            .await
            .expect("tenant");
        preload(channel.clone(), "acme", subjects, 8).await;
        Self {
            data,
            config,
            log,
            server,
            channel,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_mid_rewrap_resumes_on_restart() {
    const SUBJECTS: usize = 4000;
    let dir = TempDir::new().expect("dir");
    let Preloaded {
        data,
        config,
        log,
        server,
        channel,
    } = Preloaded::start(dir.path(), SUBJECTS).await;
    let mut keys = KeyServiceClient::new(channel.clone());
    keys.rotate_tenant_key(pb::RotateTenantKeyRequest {
        tenant_id: "acme".into(),
    })
    .await
    .expect("rotate");
    // Writes acknowledged during the re-wrap must survive the kill.
    let mut records = pb::record_service_client::RecordServiceClient::new(channel.clone());
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = acked.len();
        let value = format!("during rewrap {n}");
        put(
            &mut records,
            "acme",
            &format!("s{}", n * 37 % SUBJECTS),
            vec![text("note", pb::Category::Profile, &value)],
        )
        .await
        .expect("put during re-wrap");
        acked.push((format!("s{}", n * 37 % SUBJECTS), value));
        let s = status(&mut keys, "acme", false).await;
        let job = s.tenants[0].rewrap.expect("still re-wrapping");
        if job.subjects_scanned >= (SUBJECTS / 4) as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "re-wrap made no progress");
    }
    drop((keys, records, channel));
    server.kill();

    // The kill left the re-wrap half done, with its progress on disk.
    {
        let store = SledStore::open(&data.join("store"), 64 << 20).expect("open after kill");
        let acme = tid("acme");
        let job = store
            .tenant_keys(&acme)
            .expect("state")
            .expect("stored")
            .rewrap
            .expect("job still pending after the kill");
        assert_eq!(job.target, 2);
        assert!(job.cursor.is_some() && job.scanned > 0, "{job:?}");
        assert!(job.scanned < SUBJECTS as u64, "killed mid-way: {job:?}");
        let wraps = wraps_by_kek(&store, &acme);
        assert!(wraps.get(&1).copied().unwrap_or(0) > 0, "{wraps:?}");
        assert!(wraps.get(&2).copied().unwrap_or(0) > 0, "{wraps:?}");
        assert!(store.kek(&acme, 1).expect("kek").is_some());
    }

    // Restart: the re-wrap resumes from its cursor and completes.
    write_config(&config, &data);
    let server = ServerProcess::spawn(&config, &log);
    let channel = server.channel(&data).await;
    let mut keys = KeyServiceClient::new(channel.clone());
    let t = wait_for_rewrap(&mut keys, "acme", Duration::from_secs(120)).await;
    assert_eq!(t.current_version, 2);
    let v1 = t.versions.iter().find(|v| v.version == 1).expect("v1");
    assert!(v1.destroyed_at.is_some(), "{t:?}");
    assert_eq!(
        t.versions
            .iter()
            .find(|v| v.version == 2)
            .and_then(|v| v.wraps),
        Some(SUBJECTS as u64)
    );
    let mut records = pb::record_service_client::RecordServiceClient::new(channel.clone());
    let latest: HashMap<_, _> = acked.into_iter().collect();
    for i in 0..SUBJECTS {
        let subject = format!("s{i}");
        let fields = get(&mut records, "acme", &subject, &[])
            .await
            .expect("read");
        let by_name: HashMap<_, _> = fields
            .iter()
            .map(|f| (f.name.as_str(), text_of(f)))
            .collect();
        assert_eq!(by_name["email"], email(i));
        assert_eq!(
            by_name.get("note").copied(),
            latest.get(&subject).map(String::as_str)
        );
    }
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log.contains("re-wrap complete"), "{log}");
}
