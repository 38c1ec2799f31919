//! Server memory with many stored fields: starts the real `pii-vault` binary (built by cargo
//! beside this bench) as a child process on a free loopback port with a given sled cache
//! size, stores `fields` fields through gRPC (100 per subject, one `PutFields` each), and
//! reads the process's resident set (`VmRSS`) and its peak (`VmHWM`) from `/proc`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pii_vault::client::{connect, ClientCerts};
use pii_vault::proto::v1 as pb;
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::fixture::field_input;

/// Fields per subject, all written by one request.
const FIELDS_PER_REQUEST: usize = 100;
/// Concurrent loading streams.
const STREAMS: u64 = 16;
/// The target for a vault holding 1,000,000 fields.
const TARGET_MIB: u64 = 512;

/// The vault process; killed when dropped, so a failed run leaves no server behind.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn start(dir: &Path, cache_bytes: u64) -> (Server, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let data = dir.join("data");
    let config = dir.join("vault.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{addr}\"\ndata_dir = \"{}\"\n\n[storage]\ncache_capacity_bytes = {cache_bytes}\n\n[limits]\nrequests_per_second = 1000000\nrequest_burst = 1000000\n",
            data.display()
        ),
    )
    .expect("write the config");
    let log = std::fs::File::create(dir.join("vault.log")).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_pii-vault"))
        .arg("serve")
        .arg("--dev")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().expect("log file")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start the pii-vault binary (built by `cargo bench` / `cargo test`)");
    (Server { child }, addr)
}

async fn wait_ready(server: &mut Server, addr: &str, certs: &ClientCerts) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.child.try_wait().expect("poll the vault") {
            panic!("the vault exited early with {status}");
        }
        if certs.key.exists() {
            if let Ok(channel) = connect(addr, certs).await {
                return channel;
            }
        }
        assert!(Instant::now() < deadline, "the vault did not start in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn load(channel: &Channel, fields: usize) -> usize {
    pb::tenant_service_client::TenantServiceClient::new(channel.clone())
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: "rss".into(),
        })
        .await
        .expect("create the tenant");
    let subjects = fields.div_ceil(FIELDS_PER_REQUEST) as u64;
    let per_subject = fields.min(FIELDS_PER_REQUEST);
    let tasks: Vec<_> = (0..STREAMS)
        .map(|w| {
            let mut client = pb::record_service_client::RecordServiceClient::new(channel.clone());
            tokio::spawn(async move {
                for s in (w..subjects).step_by(STREAMS as usize) {
                    let fields = (0..per_subject)
                        .map(|f| field_input(&format!("f{f}"), s as usize))
                        .collect();
                    client
                        .put_fields(pb::PutFieldsRequest {
                            tenant_id: "rss".into(),
                            subject_id: format!("s{s}"),
                            fields,
                            idempotency_key: String::new(),
                        })
                        .await
                        .expect("store fields");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("loading stream");
    }
    subjects as usize * per_subject
}

/// Runs the measurement and prints it; false if the vault went over the target.
pub async fn measure(fields: usize, cache_mib: u64) -> bool {
    let dir = TempDir::new().expect("temp dir");
    let (mut server, addr) = start(dir.path(), cache_mib << 20);
    let pid = server.child.id();
    let certs = ClientCerts::dev(&dir.path().join("data"));
    let channel = wait_ready(&mut server, &addr, &certs).await;
    let (idle_rss, _) = memory_kib(pid);
    let t0 = Instant::now();
    let stored = load(&channel, fields).await;
    let took = t0.elapsed().as_secs_f64();
    // Let the background flush and the purger settle before reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, hwm) = memory_kib(pid);
    drop(server);
    println!(
        "rss          {stored} fields of 256 B ({} subjects x {FIELDS_PER_REQUEST}) stored in {took:.1} s ({:.0} fields/s), sled cache {cache_mib} MiB",
        stored / FIELDS_PER_REQUEST.min(fields).max(1),
        stored as f64 / took
    );
    println!(
        "rss          VmRSS {} MiB (idle before loading {} MiB), VmHWM {} MiB; target {TARGET_MIB} MiB",
        rss / 1024,
        idle_rss / 1024,
        hwm / 1024
    );
    hwm / 1024 <= TARGET_MIB
}
