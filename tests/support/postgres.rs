//! A throw-away PostgreSQL server for the tests of the PostgreSQL backend.
//!
//! One server per test process, started on first use: `initdb` into a temporary directory,
//! then `postgres` listening on 127.0.0.1 only, on a free port, run as an unprivileged user
//! when the tests run as root (PostgreSQL refuses root). A watchdog shell stops it when the
//! test process is gone. Each caller gets a fresh database of its own.
//!
//! `PIIVAULT_PG_URL` points the tests at an existing server instead (its user must be able to
//! create databases). Without either, `server()` says why and the caller skips (or fails,
//! with `PIIVAULT_REQUIRE_PG` set).
//!
//! `tls_server()` is a second one, started the same way (never `PIIVAULT_PG_URL`) with
//! `ssl = on`: a test CA and a server certificate for 127.0.0.1 and localhost in its
//! directory, the key 0600 and owned by the server's user, and `pg_hba.conf` admitting TCP
//! sessions only over TLS (`hostssl`), so a session that works there is encrypted. The role
//! `SCRAM_USER` logs in with a password (SCRAM, so channel binding can be checked); every
//! other role is trusted.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The role of the TLS server that logs in with a password, and its password.
pub const SCRAM_USER: &str = "pv_scram";
pub const SCRAM_PASSWORD: &str = "pv-scram-test-password";

pub struct Postgres {
    /// Connection string without a database name.
    base: String,
    /// The CA that signed the server's certificate (the TLS server only).
    ca_file: Option<PathBuf>,
    bin: Option<PathBuf>,
    host_port: (String, u16),
    next_db: AtomicU32,
    /// Keeps the data directory until the process ends.
    _dir: Option<tempfile::TempDir>,
}

impl Postgres {
    /// Creates a new, empty database and returns its connection string.
    pub fn fresh_database(&self) -> String {
        self.fresh_database_owned_by("postgres")
    }

    /// A new, empty database owned by `role` (so `role` may create its tables); its
    /// connection string still names the `postgres` user.
    pub fn fresh_database_owned_by(&self, role: &str) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("pv_test_{}_{n}", std::process::id());
        let admin = format!("{} dbname=postgres", self.base);
        let sql = format!("CREATE DATABASE {name} OWNER {role}");
        let out = Command::new(self.psql())
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-d", &admin, "-c", &sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "create database: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("{} dbname={name}", self.base)
    }

    /// The `psql` to use.
    pub fn psql(&self) -> PathBuf {
        self.bin
            .as_ref()
            .map_or(PathBuf::from("psql"), |b| b.join("psql"))
    }

    pub fn host_port(&self) -> (String, u16) {
        self.host_port.clone()
    }

    /// The PEM CA file the TLS server's certificate chains to.
    pub fn ca_file(&self) -> &Path {
        self.ca_file.as_deref().expect("a TLS server")
    }

    /// Runs one SQL statement through psql on the `postgres` database; its output, unaligned.
    pub fn psql_admin(&self, sql: &str) -> String {
        let admin = format!("{} dbname=postgres", self.base);
        let out = Command::new(self.psql())
            .args([
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-t",
                "-A",
                "-d",
                &admin,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

static SERVER: OnceLock<Result<Postgres, String>> = OnceLock::new();
static TLS_SERVER: OnceLock<Result<Postgres, String>> = OnceLock::new();

/// The shared server, or why there is none.
pub fn server() -> Result<&'static Postgres, String> {
    SERVER
        .get_or_init(|| start(false))
        .as_ref()
        .map_err(|why| why.clone())
}

/// The shared server with TLS on, or why there is none.
pub fn tls_server() -> Result<&'static Postgres, String> {
    TLS_SERVER
        .get_or_init(|| start(true))
        .as_ref()
        .map_err(|why| why.clone())
}

/// `server()`, or a printed reason and `None` (the caller returns: skipped). With
/// `PIIVAULT_REQUIRE_PG` set, a missing server fails the test instead.
pub fn server_or_skip(test: &str) -> Option<&'static Postgres> {
    or_skip(test, server())
}

/// `tls_server()`, or a printed reason and `None`, as `server_or_skip`.
pub fn tls_server_or_skip(test: &str) -> Option<&'static Postgres> {
    or_skip(test, tls_server())
}

fn or_skip(test: &str, server: Result<&'static Postgres, String>) -> Option<&'static Postgres> {
    match server {
        Ok(s) => Some(s),
        Err(why) if std::env::var_os("PIIVAULT_REQUIRE_PG").is_some() => {
            panic!("{test}: no PostgreSQL server ({why}) and PIIVAULT_REQUIRE_PG is set")
        }
        Err(why) => {
            eprintln!("skipped {test}: no PostgreSQL server ({why})");
            None
        }
    }
}

fn start(tls: bool) -> Result<Postgres, String> {
    match std::env::var("PIIVAULT_PG_URL") {
        Ok(url) if !tls => {
            return Ok(Postgres {
                host_port: (String::new(), 0),
                base: url,
                ca_file: None,
                bin: None,
                next_db: AtomicU32::new(0),
                _dir: None,
            });
        }
        _ => {}
    }
    let bin = find_bin_dir().ok_or("no initdb/postgres binaries (set PIIVAULT_PG_BIN)")?;
    let dir = tempfile::Builder::new()
        .prefix("pii-vault-pg")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let data = dir.path().join("data");
    let user = server_user()?;
    std::fs::create_dir(&data).map_err(|e| e.to_string())?;
    if let Some(user) = &user {
        // The unprivileged user must reach and own its directories.
        chmod(dir.path(), 0o755)?;
        run(Command::new("chown").args(["-R", user]).arg(dir.path()))?;
    }
    run(as_user(&user, &bin.join("initdb"))
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "-D",
        ])
        .arg(&data))?;
    let (ssl_args, ca_file) = if tls {
        let (args, ca_file) = server_tls(dir.path(), &data, &user)?;
        (args, Some(ca_file))
    } else {
        (String::new(), None)
    };
    let port = free_port()?;
    // Started by a shell that watches the test process: when it is gone, the shell stops
    // the server (pid from postmaster.pid) and removes the directory.
    let postgres = as_user(&user, &bin.join("postgres"));
    let program = format!("{:?}", postgres.get_program());
    let args: Vec<String> = postgres
        .get_args()
        .map(|a| format!("{:?}", a.to_string_lossy()))
        .collect();
    let script = format!(
        "{program} {args} -D {data:?} -h 127.0.0.1 -p {port} -k {sock:?} \
         -c max_connections=300 -c shared_buffers=64MB {ssl_args} >{log:?} 2>&1 &
         while kill -0 {parent} 2>/dev/null; do sleep 1; done
         pid=\"$(head -n1 {data:?}/postmaster.pid)\"
         kill -INT \"$pid\" 2>/dev/null
         while kill -0 \"$pid\" 2>/dev/null; do sleep 0.2; done
         rm -rf {sock:?}",
        args = args.join(" "),
        data = data,
        sock = dir.path(),
        log = dir.path().join("server.log"),
        parent = std::process::id(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start postgres: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        if ready.success() {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            return Err(format!("postgres did not become ready: {log}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let server = Postgres {
        base: format!("host=127.0.0.1 port={port} user=postgres"),
        ca_file,
        bin: Some(bin),
        host_port: ("127.0.0.1".into(), port),
        next_db: AtomicU32::new(0),
        _dir: Some(dir),
    };
    if tls {
        server.psql_admin(&format!(
            "CREATE ROLE {SCRAM_USER} LOGIN CREATEDB PASSWORD '{SCRAM_PASSWORD}'"
        ));
    }
    Ok(server)
}

/// Prepares `ssl = on` for the server of `data`: a CA and a server certificate for
/// 127.0.0.1 and localhost in `<dir>/tls` (the key 0600, all owned by `user`), and a
/// `pg_hba.conf` that takes TCP sessions over TLS only. Returns the server's `-c` options
/// and the CA file.
fn server_tls(dir: &Path, data: &Path, user: &Option<String>) -> Result<(String, PathBuf), String> {
    use pii_vault::certs::{write_file, Authority, LeafSpec, Usage};
    let day = Duration::from_secs(24 * 3600);
    let ca = Authority::generate("pii-vault test PostgreSQL CA", day).map_err(|e| e.to_string())?;
    let cert = ca
        .issue(&LeafSpec {
            common_name: "localhost".into(),
            names: vec!["localhost".into(), "127.0.0.1".into()],
            uris: vec![],
            usage: Usage::Server,
            lifetime: day,
            not_before_offset_secs: 0,
        })
        .map_err(|e| e.to_string())?;
    let tls = dir.join("tls");
    let (ca_file, cert_file, key_file) = (
        tls.join("ca.pem"),
        tls.join("server.pem"),
        tls.join("server.key"),
    );
    write_file(&ca_file, ca.cert_pem.as_bytes(), false).map_err(|e| e.to_string())?;
    write_file(&cert_file, cert.cert_pem.as_bytes(), false).map_err(|e| e.to_string())?;
    // PostgreSQL refuses a key file that others can read.
    write_file(&key_file, cert.key_pem.as_bytes(), true).map_err(|e| e.to_string())?;
    chmod(&tls, 0o755)?;
    if let Some(user) = user {
        run(Command::new("chown").args(["-R", user]).arg(&tls))?;
    }
    // First match wins: the password role, then everyone else, over TLS only; no `host`
    // line, so a TCP session without TLS is refused.
    let hba = format!(
        "local all all trust\n\
         hostssl all {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n\
         hostssl all all 127.0.0.1/32 trust\n"
    );
    std::fs::write(data.join("pg_hba.conf"), hba).map_err(|e| format!("pg_hba.conf: {e}"))?;
    let args = format!("-c ssl=on -c ssl_cert_file={cert_file:?} -c ssl_key_file={key_file:?}");
    Ok((args, ca_file))
}

fn find_bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("PIIVAULT_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists() && b.join("postgres").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop()
}

/// The user to run the server as: none when not root, else `postgres` (created by the
/// distribution's package) or `piivault-pg`, created here if missing.
fn server_user() -> Result<Option<String>, String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Ok(None);
    }
    for user in ["postgres", "piivault-pg"] {
        if Command::new("id")
            .arg(user)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Ok(Some(user.into()));
        }
    }
    run(Command::new("useradd").args(["--system", "--no-create-home", "piivault-pg"]))?;
    Ok(Some("piivault-pg".into()))
}

fn as_user(user: &Option<String>, program: &Path) -> Command {
    match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn chmod(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}
