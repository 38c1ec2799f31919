//! The protos pass `buf lint` (the repository's `buf.yaml`: STANDARD and COMMENTS) with no
//! finding, the lint exceptions of `buf.yaml` cover exactly the elements it documents, and
//! every `.proto` file sets the code generation options for Go and Java.
//!
//! buf 1.75.0 is installed with `npm ci` from `.ci/buf/package-lock.json` into a directory
//! under the target directory, reused across runs (`BUF=/path/to/buf` uses a buf already
//! installed instead; it must be 1.75.0). Without npm, or without network to install, the
//! buf tests are skipped loudly, unless `CI` is set, where that is a failure.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
/// The buf release the lint results are pinned to (also in `.ci/buf/package.json`).
const BUF_VERSION: &str = "1.75.0";

/// Signs in npm's output that the registry could not be reached at all.
const OFFLINE_SIGNS: [&str; 9] = [
    "ENOTFOUND",
    "EAI_AGAIN",
    "ECONNREFUSED",
    "ECONNRESET",
    "ETIMEDOUT",
    "ENETUNREACH",
    "EHOSTUNREACH",
    "network request to",
    "request to https://registry",
];

/// Ends the test as skipped, or fails it under CI.
fn skip(reason: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "proto lint test cannot run under CI: {reason}"
    );
    // Straight to the process's stderr, past the test harness's output capture, so the
    // skip shows in a plain `cargo test` run.
    let _ = writeln!(
        std::io::stderr(),
        "\n==== SKIPPED: buf lint of proto/: {reason} (with CI set this fails) ====\n"
    );
}

fn show(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` to its end, killing it after `limit`. `Err` when it cannot be started.
fn run(cmd: &mut Command, limit: Duration) -> std::io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Drained on threads so that a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    })
}

/// The buf binary to lint with, or `None` when skipped. Installed once per test binary.
fn buf() -> Option<PathBuf> {
    static BUF: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUF.get_or_init(find_or_install_buf).clone()
}

fn find_or_install_buf() -> Option<PathBuf> {
    if let Some(given) = std::env::var_os("BUF") {
        let buf = PathBuf::from(given);
        check_version(&buf);
        return Some(buf);
    }
    let pins = Path::new(MANIFEST_DIR).join(".ci/buf");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("buf-{BUF_VERSION}"));
    let buf = dir.join("node_modules/.bin/buf");
    let lock = std::fs::read_to_string(pins.join("package-lock.json")).expect("the buf lock");
    let stamp = dir.join("package-lock.installed");
    if buf.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(lock.as_str()) {
        return Some(buf);
    }
    std::fs::create_dir_all(&dir).expect("create the buf directory");
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(pins.join(file), dir.join(file)).expect("copy the buf pins");
    }
    // `npm ci` installs exactly the locked versions (checked against their integrity
    // hashes) and no install scripts: buf's `bin/buf` finds its platform binary without one.
    let installed = run(
        Command::new(std::env::var("NPM").unwrap_or_else(|_| "npm".into()))
            .args([
                "ci",
                "--ignore-scripts",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ])
            .current_dir(&dir),
        Duration::from_secs(600),
    );
    let out = match installed {
        Ok(out) => out,
        Err(e) => {
            skip(&format!("npm is not available ({e})"));
            return None;
        }
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if OFFLINE_SIGNS.iter().any(|s| stderr.contains(s)) {
            skip("npm cannot reach the registry to install .ci/buf/package-lock.json");
            return None;
        }
        panic!("npm ci of .ci/buf failed:\n{}", show(&out));
    }
    check_version(&buf);
    std::fs::write(&stamp, lock).expect("write the buf stamp");
    Some(buf)
}

fn check_version(buf: &Path) {
    let out = run(Command::new(buf).arg("--version"), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", buf.display()));
    assert!(out.status.success(), "buf --version:\n{}", show(&out));
    let version = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        version.trim(),
        BUF_VERSION,
        "{} is not buf {BUF_VERSION}",
        buf.display()
    );
}

/// One lint finding, as `buf lint --error-format json` prints it.
#[derive(Debug)]
struct Finding {
    path: String,
    line: usize,
    rule: String,
    message: String,
}

/// Runs `buf lint` at the repository root (with `buf.yaml`, or with `config` instead) and
/// returns its findings. Exit status 100 means "findings"; anything else but 0 is a failure.
fn lint(buf: &Path, config: Option<&str>) -> Vec<Finding> {
    let mut cmd = Command::new(buf);
    cmd.args(["lint", "--error-format", "json"])
        .current_dir(MANIFEST_DIR);
    if let Some(config) = config {
        cmd.args(["--config", config]);
    }
    let out = run(&mut cmd, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", buf.display()));
    assert!(
        matches!(out.status.code(), Some(0 | 100)),
        "buf lint did not run:\n{}",
        show(&out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("buf printed {l:?}, not a JSON finding: {e}"));
            let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            Finding {
                path: text("path"),
                line: usize::try_from(v["start_line"].as_u64().unwrap_or(0)).unwrap_or(0),
                rule: text("type"),
                message: text("message"),
            }
        })
        .collect()
}

#[test]
fn buf_lint_passes_with_no_findings() {
    let Some(buf) = buf() else {
        return;
    };
    let findings = lint(&buf, None);
    assert!(
        findings.is_empty(),
        "buf lint (buf.yaml) found {} problems:\n{}",
        findings.len(),
        findings
            .iter()
            .map(|f| format!("{}:{}: {} ({})", f.path, f.line, f.message, f.rule))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The exceptions of `buf.yaml` are scoped to files, the narrowest scope it offers. Linted
/// without them, the only findings must be the documented ones: the ErrorReason values,
/// and the published RPCs listed in `buf.yaml`. A new RPC with a non-standard response,
/// or a new unprefixed enum, fails here even in a file that has an exception.
#[test]
fn lint_exceptions_cover_only_the_documented_elements() {
    let Some(buf) = buf() else {
        return;
    };
    let strict =
        r#"{"version":"v2","modules":[{"path":"proto"}],"lint":{"use":["STANDARD","COMMENTS"]}}"#;
    let mut found = BTreeSet::new();
    let mut unexpected = Vec::new();
    for f in lint(&buf, Some(strict)) {
        let file = f.path.rsplit('/').next().unwrap_or_default().to_owned();
        match f.rule.as_str() {
            // Every unprefixed value must belong to ErrorReason, in errors.proto.
            "ENUM_VALUE_PREFIX"
                if file == "errors.proto" && f.message.contains("\"ERROR_REASON_\"") =>
            {
                found.insert("ENUM_VALUE_PREFIX errors.proto ErrorReason".to_owned());
            }
            "RPC_RESPONSE_STANDARD_NAME" | "RPC_REQUEST_RESPONSE_UNIQUE" => {
                let rpc = rpc_at(&f.path, f.line);
                found.insert(format!("{} {file} {rpc}", f.rule));
            }
            _ => unexpected.push(format!("{}:{}: {} ({})", f.path, f.line, f.message, f.rule)),
        }
    }
    assert!(
        unexpected.is_empty(),
        "findings no documented exception covers:\n{}",
        unexpected.join("\n")
    );
    let mut documented = BTreeSet::from(["ENUM_VALUE_PREFIX errors.proto ErrorReason".to_owned()]);
    for (file, rpc, shared) in [
        ("backup.proto", "Backup", false),
        ("keys.proto", "GetKeyStatus", false),
        ("rights.proto", "AccessSubject", false),
        ("rights.proto", "ExportSubject", false),
        ("rights.proto", "EraseSubject", false),
        ("rights.proto", "RestrictSubject", true),
        ("rights.proto", "LiftRestriction", true),
        ("rights.proto", "SetConsent", true),
        ("rights.proto", "ListConsents", true),
        ("tenant.proto", "CreateTenant", true),
        ("tenant.proto", "GetTenant", true),
    ] {
        documented.insert(format!("RPC_RESPONSE_STANDARD_NAME {file} {rpc}"));
        if shared {
            documented.insert(format!("RPC_REQUEST_RESPONSE_UNIQUE {file} {rpc}"));
        }
    }
    assert_eq!(
        found, documented,
        "the elements the buf.yaml exceptions cover changed: update buf.yaml's comments, the \
         README and this list together, or rename the new element"
    );
}

/// The name of the RPC declared on `line` (1-based) of a proto file.
fn rpc_at(path: &str, line: usize) -> String {
    let text = std::fs::read_to_string(Path::new(MANIFEST_DIR).join(path))
        .unwrap_or_else(|e| panic!("read {path}: {e}"));
    let decl = text.lines().nth(line.saturating_sub(1)).unwrap_or_default();
    decl.trim()
        .strip_prefix("rpc ")
        .and_then(|rest| rest.split('(').next())
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|| panic!("{path}:{line} declares no rpc: {decl:?}"))
}

/// Every `.proto` file under `proto/`.
fn proto_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            proto_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
}

/// The value of `option NAME = VALUE;` in a proto file, quotes removed.
fn file_option(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("option ")?.trim_start();
        let rest = rest.strip_prefix(name)?.trim_start().strip_prefix('=')?;
        let value = rest.trim().strip_suffix(';')?.trim();
        Some(value.trim_matches('"').to_owned())
    })
}

/// Needs no buf: every file sets the options generated Go and Java code depend on, with
/// values derived from its proto package, so that a new file cannot forget them.
#[test]
fn every_proto_file_sets_go_and_java_options() {
    let root = Path::new(MANIFEST_DIR).join("proto");
    let mut files = Vec::new();
    proto_files(&root, &mut files);
    files.sort();
    assert!(
        !files.is_empty(),
        "no .proto files under {}",
        root.display()
    );
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a proto file");
        let shown = file.strip_prefix(MANIFEST_DIR).unwrap_or(file).display();
        let package = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("package "))
            .map(|p| p.trim_end_matches(';').trim().to_owned())
            .unwrap_or_default();
        // piivault.v1 -> github.com/example/pii-vault/gen/go/piivault/v1;piivaultv1 and
        // com.example.piivault.v1; the stem `record` -> RecordProto.
        let go = format!(
            "github.com/example/pii-vault/gen/go/{};{}",
            package.replace('.', "/"),
            package.replace('.', "")
        );
        let java = format!("com.example.{package}");
        let stem = file.file_stem().unwrap_or_default().to_string_lossy();
        let outer: String = stem
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|first| first.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .chain(["Proto".to_owned()])
            .collect();
        for (option, want) in [
            ("go_package", go),
            ("java_package", java),
            ("java_multiple_files", "true".to_owned()),
            ("java_outer_classname", outer),
        ] {
            match file_option(&text, option) {
                Some(got) if got == want => {}
                Some(got) => problems.push(format!("{shown}: {option} is {got:?}, not {want:?}")),
                None => problems.push(format!("{shown}: no `option {option} = {want:?};`")),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
