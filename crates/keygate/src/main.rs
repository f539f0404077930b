//! `keygate`: see `keygate --help`.
#![forbid(unsafe_code)]

/// mimalloc instead of the system allocator: the proxy allocates small, short-lived buffers on
/// every worker thread, where glibc's malloc spent about a sixth of the gateway's CPU under
/// load (`perf` on `cargo bench -p keygate-benches --bench proxy`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keygate::cli::main()
}
