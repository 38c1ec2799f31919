//! The `pii-vault` binary: the command line (`cli`) over the `pii_vault` library. The
//! binary is the only place `anyhow`, `clap` and the allocator live.

mod cli;

/// mimalloc, not the system's malloc: a request's memory is allocated on the async workers
/// and much of it freed on the audit writer's thread, which glibc's per-thread caches serve
/// badly (the profile is in benches/README.md, "What bounds audited reads").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
