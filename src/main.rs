//! The `pii-vault` binary: the command line (`cli`) over the `pii_vault` library. The
//! binary is the only place `anyhow` and `clap` live.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
