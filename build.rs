//! Compiles every `proto/piivault/v1/*.proto` with the pure-Rust `protox` compiler, so no
//! system `protoc` is needed, and writes the encoded descriptor set that the reflection
//! service serves. The load generator's echo baseline (`benches/load/echo.proto`) is compiled
//! on its own, so it stays out of the vault's descriptor set. It also names the commit the
//! binary is built from (`PIIVAULT_GIT_COMMIT`, for `piivault_build_info`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

use prost::Message;

/// Output of `git args` in the package directory, trimmed; `None` without git or a repository.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

/// The commit being built: `PIIVAULT_GIT_COMMIT` if set (an image built without `.git`),
/// else the short hash of `HEAD`, else `unknown`. The build script runs again when `HEAD`
/// moves; only files that exist are watched (a missing one would rerun it every build).
fn git_commit() -> String {
    println!("cargo:rerun-if-env-changed=PIIVAULT_GIT_COMMIT");
    if let Ok(given) = env::var("PIIVAULT_GIT_COMMIT") {
        return given;
    }
    let watched = ["HEAD", "packed-refs"]
        .into_iter()
        .map(str::to_owned)
        .chain(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rustc-env=PIIVAULT_GIT_COMMIT={}", git_commit());
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=benches/load/echo.proto");
    let mut protos: Vec<PathBuf> = fs::read_dir("proto/piivault/v1")?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    protos.retain(|p| p.extension().is_some_and(|ext| ext == "proto"));
    protos.sort();
    let fds = protox::compile(&protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("piivault_descriptor.bin"), fds.encode_to_vec())?;
    // Every vault service decodes with `proto::codec::VaultCodec` (malformed requests answer
    // INVALID_ARGUMENT); the echo baseline keeps tonic's own codec.
    tonic_prost_build::configure()
        .codec_path("crate::proto::codec::VaultCodec")
        .compile_fds(fds)?;
    let echo = protox::compile(["benches/load/echo.proto"], ["benches/load"])?;
    tonic_prost_build::configure().compile_fds(echo)?;
    Ok(())
}
