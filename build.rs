//! Compiles every `proto/piivault/v1/*.proto` with the pure-Rust `protox` compiler, so no
//! system `protoc` is needed, and writes the encoded descriptor set that the reflection
//! service serves. The load generator's echo baseline (`benches/load/echo.proto`) is compiled
//! on its own, so it stays out of the vault's descriptor set.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
