//! The `pii-vault` binary: see `pii_vault::cli`.

fn main() -> std::process::ExitCode {
    pii_vault::cli::main()
}
