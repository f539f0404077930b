//! `keygate`: see `keygate --help`.
#![forbid(unsafe_code)]

/// jemalloc instead of the system allocator: the proxy allocates small, short-lived buffers on
/// every worker thread, where glibc's malloc spent about a sixth of the gateway's CPU under
/// load. Saturated pass-through: 16,000–20,000 req/s with glibc, 30,000–34,000 with jemalloc
/// or mimalloc; resident memory per idle SSE stream: 37.6 KiB glibc, 42.5 jemalloc, 59.2
/// mimalloc (`cargo bench -p keygate-benches --bench proxy -- throughput`, `--bench
/// idle_streams`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    keygate::cli::main()
}
